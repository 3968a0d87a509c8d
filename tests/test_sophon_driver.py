"""BM1684X cards as the host's driver shows them (workers/sophon_driver.py), on trees recorded in the driver's format
(tests/data/bmsophon/README.md says where the format comes from): the readers, `transcribe-batch devices`, the
actor's device info that run.json carries, and the progress log's NPU use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from transcribe_batch.pipeline.cli import app
from transcribe_batch.pipeline.progress import ProgressTracker
from transcribe_batch.workers.platforms import PLATFORMS
from transcribe_batch.workers.record import Record
from transcribe_batch.workers.sophon_driver import (DRIVER_ROOT_ENV, NpuUsage, device_summary, parse_npu_usage,
                                                    read_driver_view, read_npu_usage)

DATA = Path(__file__).parent / "data" / "bmsophon"
CARDS = DATA / "sc7plus-x2"
BROKEN = DATA / "malformed"


def test_two_sc7plus_cards():
    view = read_driver_view(CARDS)
    assert view.present and view.problems == ()
    assert (view.card_num, view.chip_num) == (2, 6) and view.driver_version.startswith("release version:0.5.1")
    assert [(c.card, c.board_type, c.chip_id, c.chips_on_card, c.tpu_max_mhz) for c in view.cards] == \
        [(0, "SC7+", "0x1684x", 3, 1000), (1, "SC7+", "0x1684x", 3, 1000)]
    assert [[chip.device for chip in c.chips] for c in view.cards] == [[0, 1, 2], [3, 4, 5]]
    chip = view.cards[1].chips[1]
    assert (chip.device, chip.card, chip.status, chip.tpu_freq_mhz, chip.memory_gib, chip.heap_mib,
            chip.chip_temp_c) == (4, 1, "Active", 750, 16, 14678.0, 53)
    assert chip.npu_usage == NpuUsage(enabled=False)
    assert view.cards[0].chips[2].npu_usage == NpuUsage(True, 100, 64)
    assert json.loads(json.dumps(view.to_json()))["cards"][0]["chips"][0]["npu_usage"] == \
        {"enabled": True, "usage": 37, "avusage": 12}


def test_damaged_files_are_unknown_and_named_never_a_crash():
    view = read_driver_view(BROKEN)
    assert view.present and (view.card_num, view.chip_num, view.driver_version) == (None, None, None)
    card0, card1 = view.cards  # cardX is not a card folder
    assert (card0.board_type, card0.chip_id, card0.chips_on_card, card0.tpu_max_mhz) == (None, "0x1684x", 3, None)
    c0, c1 = card0.chips
    assert (c0.status, c0.tpu_freq_mhz, c0.memory_gib, c0.heap_mib, c0.chip_temp_c) == ("Fault", None, None, None, None)
    assert c0.npu_usage == NpuUsage(True, 5, 3)  # the user guide's '"usage": 5, "avusage": 3'
    assert (c1.status, c1.tpu_freq_mhz, c1.memory_gib, c1.heap_mib, c1.npu_usage) == (None, None, 16, None, None)
    assert card1.chips == () and card1.chips_on_card is None
    problems = "\n".join(view.problems)
    for expected in ["proc/bmsophon/card_num: unexpected content 'two'",
                     "proc/bmsophon/chip_num: missing",
                     "card0/board_type: missing",
                     "card0/tpu_maxclk: unexpected content 'fast'",
                     "card0: chip_num_on_card says 3, 2 chip folder(s) found",
                     "card0/bmsophon0/ddr_capacity: unexpected content 'lots of memory'",
                     "card0/bmsophon0/heap: unexpected content 'heap1 broken line'",
                     "card0/bmsophon1/tpuid: says 7, the folder's name says 1",
                     "card0/bmsophon1/status: not text",
                     "card0/bmsophon1/tpu_freq: is a folder, expected a file",
                     "bm-sophon1/device/npu_usage: unexpected content 'usage:high'"]:
        assert expected in problems
    assert all(p.startswith(str(BROKEN)) for p in view.problems)  # each names the file as found
    # "N/A" is the driver's own "cannot tell" (bmsophon0's tpu_freq and chip_temp): unknown, but not a problem
    assert "bmsophon0/tpu_freq" not in problems and "chip_temp" not in problems


def test_no_driver_and_odd_roots(tmp_path):
    assert not read_driver_view(tmp_path).present and read_npu_usage(tmp_path) == {}
    assert device_summary(0, read_driver_view(tmp_path)) is None
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "bmsophon").write_text("a file where the folder belongs")
    assert not read_driver_view(tmp_path).present
    assert read_npu_usage(BROKEN) == {0: NpuUsage(True, 5, 3)}  # odd and non-device entries left out


@pytest.mark.parametrize("text, expected", [
    ("usage:37 avusage:12\n", NpuUsage(True, 37, 12)),
    ('"usage": 0, "avusage": 0', NpuUsage(True, 0, 0)),
    ("Please, set [Usage enable] to 1\n", NpuUsage(False)),
    ("usage:high", None), ("", None), ("usage:5", None),
])
def test_npu_usage_formats(text, expected):
    assert parse_npu_usage(text) == expected


def test_device_summary_carries_the_chips_card_and_its_own_problems():
    summary = device_summary(4, read_driver_view(CARDS))
    assert summary == {"card": 1, "board_type": "SC7+", "chip_id": "0x1684x", "chips_on_card": 3, "status": "Active",
                       "tpu_freq_mhz": 750, "memory_gib": 16, "heap_mib": 14678.0, "chip_temp_c": 53,
                       "npu_usage": {"enabled": False, "usage": None, "avusage": None}}
    assert device_summary(9, read_driver_view(CARDS)) is None
    broken = read_driver_view(BROKEN)
    mine = device_summary(0, broken)["problems"]
    assert any("bmsophon0/ddr_capacity" in p for p in mine) and any("card0/board_type" in p for p in mine)
    assert not any("bmsophon1/" in p or "bm-sophon1/" in p or "card_num" in p for p in mine)


def test_platform_and_actor_report_the_driver_view(monkeypatch):
    from transcribe_batch.pipeline.config import worker_config
    from transcribe_batch.workers.actor import TranscriptionWorker

    monkeypatch.setenv(DRIVER_ROOT_ENV, str(CARDS))
    plat = PLATFORMS["bm1684x"]
    assert plat.device_info(2)["board_type"] == "SC7+" and PLATFORMS["sim"].device_info(2) is None
    assert plat.usage() == {0: 37, 1: 0, 2: 100, 3: 52, 4: None, 5: 3}
    worker = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=1000), device=3, device_kind="bm1684x")
    sim = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=1000), device=3)
    try:
        info, sim_info = worker.info(), sim.info()
    finally:
        worker.close()
        sim.close()
    assert info.driver["card"] == 1 and info.driver["npu_usage"]["usage"] == 52  # run.json's devices carry it
    assert sim_info.driver is None


def test_devices_command_shows_the_cards(monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv(DRIVER_ROOT_ENV, str(CARDS))
    monkeypatch.setenv("COLUMNS", "200")
    info = json.loads(runner.invoke(app, ["devices", "--json"]).output)
    assert info["local"]["bm1684x_driver"]["card_num"] == 2
    text = runner.invoke(app, ["devices"]).output
    assert "2 card(s), 6 chip(s)" in text and "bm-sophon4" in text and "750 / 1000" in text and "off" in text
    monkeypatch.setenv(DRIVER_ROOT_ENV, str(BROKEN))
    result = runner.invoke(app, ["devices"])
    assert result.exit_code == 0 and "? card(s)" in result.output
    assert "card_num: unexpected content 'two'" in result.output.replace("\n", "")


def test_progress_log_records_npu_use_where_the_driver_reports_it(tmp_path, monkeypatch):
    def events(root: Path) -> list[dict]:
        monkeypatch.setenv(DRIVER_ROOT_ENV, str(root))
        log = tmp_path / f"{root.name}.jsonl"
        with ProgressTracker(total=2, audio_s_total=4.0, log_path=log, quiet=True, min_log_interval_s=0) as t:
            t.update([Record(status="ok", duration_s=2.0)])
            t.log("a note")
        return [json.loads(line) for line in log.read_text().splitlines()]

    logged = events(CARDS)
    assert [e["event"] for e in logged] == ["start", "progress", "log", "end"]
    assert logged[1]["npu_usage"] == {"0": 37, "1": 0, "2": 100, "3": 52, "4": None, "5": 3}
    assert "npu_usage" not in logged[2]  # events are not NPU samples
    assert all("npu_usage" not in e for e in events(tmp_path / "no-driver"))  # no driver: nothing added
