"""`transcribe-batch eval`: terminal/markdown/json output, and the HTML report rendered in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from eval_helpers import result_row, write_run
from transcribe_batch.pipeline.cli import app

REFS = [
    "the birch canoe slid on the smooth planks",
    "glue the sheet to the dark blue background",
    "it's easy to tell the depth of a well",
    "these days a chicken leg is a rare dish",
    "rice is often served in round bowls",
    "the juice of lemons makes fine punch",
]


def _runs(tmp_path: Path) -> tuple[Path, Path]:
    gpu, tpu = [], []
    for i, ref in enumerate(REFS * 3):
        uid = f"utt-{i:03d}"
        duration = 2.0 + 3.5 * i
        gpu.append(result_row(uid, ref, ref.upper() + ".", duration=duration, device=0, start=0.7 * i,
                              total=0.6 + 0.05 * i))
        words = ref.split()
        wrong = " ".join(words[: len(words) - i % 3]) if i % 4 else ref  # drop 0-2 trailing words
        status = "failed" if i == 7 else "ok"
        tpu.append(result_row(uid, ref, wrong, status=status, duration=duration, device=i % 3, start=0.5 * (i // 3),
                              total=1.0 + 0.1 * (i % 5), attempts=3 if status == "failed" else 1))
    return write_run(tmp_path / "gpu-fp16", gpu), write_run(tmp_path / "bm1684x-w4", tpu)


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_markdown_and_json_outputs(tmp_path):
    gpu, tpu = _runs(tmp_path)
    md = invoke("eval", str(gpu), str(tpu), "--format", "markdown").output
    for needle in ("### Accuracy", "| n samples | 18 | 18 |", "| n successful | 18 | 17 |", "WER % (all rows",
                   "exact-match %", "complete-error %", "### Where the runs disagree most", "### Per device — bm1684x-w4"):
        assert needle in md, needle
    out = tmp_path / "m.json"
    invoke("eval", str(gpu), str(tpu), "--format", "json", "-o", str(out))
    data = json.loads(out.read_text())
    gpu_acc, tpu_acc = (r["accuracy"] for r in data["runs"])
    assert gpu_acc["wer"] == 0.0 and gpu_acc["exact_match"] == 1.0  # upper case + period normalized away
    assert tpu_acc["n_failed"] == 1 and tpu_acc["wer"] > tpu_acc["wer_successful"] > 0
    assert len(data["runs"][1]["speed"]["per_device"]) == 3
    assert data["disagreements"] and data["disagreements"][0]["spread"] > 0


def test_terminal_table_and_bad_run_folder(tmp_path):
    gpu, _ = _runs(tmp_path)
    text = invoke("eval", str(gpu)).output
    assert "Accuracy" in text and "RTFx" in text
    bad = CliRunner().invoke(app, ["eval", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "nope" in bad.output


class _Dom(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables: dict[str, int] = {}  # table id -> rows
        self.figures: dict[str, int] = {}  # figure id -> svg elements inside
        self._table = self._figure = None
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = 0
        elif tag == "tr" and self._table:
            self.tables[self._table] += 1
        elif tag == "figure":
            self._figure = a.get("id")
            self.figures[self._figure] = 0
        elif tag == "svg" and self._figure:
            self.figures[self._figure] += 1
        for key in ("src", "href", "xlink:href"):
            if (a.get(key) or "").startswith(("http:", "https:", "//")):
                self.external.append(a[key])
        if tag == "script":
            self.external.append("script")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "figure":
            self._figure = None


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium not found: `make test` installs the Debian package `chromium`")
    return path


def _chromium_run(html: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", *extra, html.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_html_report_renders_in_headless_chromium(tmp_path):
    gpu, tpu = _runs(tmp_path)
    html = tmp_path / "report" / "report.html"
    invoke("eval", str(gpu), str(tpu), "--html", str(html))
    source = html.read_text()

    dom = _chromium_run(html, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-2000:]
    parsed = _Dom()
    parsed.feed(dom.stdout)
    for table in ("table-runs", "table-accuracy", "table-speed", "table-disagreements", "table-devices-bm1684x-w4",
                  "table-failures-bm1684x-w4"):
        assert parsed.tables.get(table, 0) >= 2, (table, parsed.tables)  # header + at least one row
    assert parsed.tables["table-accuracy"] == 15
    for figure in ("fig-wer-by-duration", "fig-latency-histogram", "fig-timeline-0", "fig-timeline-1"):
        assert parsed.figures.get(figure, 0) >= 1, (figure, parsed.figures)
    assert parsed.external == [] and "<link" not in source  # self-contained: works offline
    assert "WER by duration" in dom.stdout and "Latency histogram" in dom.stdout

    shot = tmp_path / "shot.png"
    res = _chromium_run(html, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1200,3000")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    colored = np.abs(pixels - pixels.mean(axis=2, keepdims=True)).sum(axis=2) > 0.1  # bars are blue/orange
    assert colored.mean() > 0.005, "the figures did not paint"


def test_html_report_without_references_or_timings_states_it(tmp_path):
    rows = [result_row(f"u{i}", None, "hello") for i in range(3)]
    for r in rows:
        r["started_at"] = r["finished_at"] = None
        r["total_s"] = None
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "labels"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "results.parquet")
    html = tmp_path / "r.html"
    invoke("eval", str(folder), "--html", str(html))
    text = html.read_text()
    assert "no scored rows" in text and "no start/finish times" in text and "no reference text" in text


@pytest.mark.slow
def test_eval_of_a_run_folder_written_by_the_runner(tmp_path, audio_dir, ray_cluster):
    """The real flow: `transcribe-batch run` (simulated engine, 2 devices, injected failures, no retries) → eval.
    The run joins the tests' shared Ray cluster (--address: no cluster start-up of its own, which
    test_hf_engine, test_crash_charging and test_bm1684x_pipeline cover); eval runs in this process."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from transcribe_batch.pipeline.evaluate.normalize import get_normalizer

    manifest = tmp_path / "m.jsonl"
    lines = []
    for line in (audio_dir / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        row["audio_filepath"] = str(audio_dir / row["audio_filepath"])
        lines.append(json.dumps(row))
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    cli = [sys.executable, "-c", "from transcribe_batch.pipeline.cli import main; main()"]
    run = subprocess.run(
        [*cli, "run", str(manifest), "-o", str(out), "--engine", "simulated", "--devices", "2", "--sim-speedup", "200",
         "--sim-faults", "error=0.3,seed=5", "--max-attempts", "1", "-q", "--address", ray_cluster],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = pq.read_table(out / "results.parquet").to_pylist()
    failed = [r for r in results if r["status"] != "ok"]
    assert 0 < len(failed) < len(results)

    html = tmp_path / "report.html"
    ev = CliRunner().invoke(app, ["eval", str(out), "--format", "json", "--html", str(html)])
    assert ev.exit_code == 0, ev.output[-3000:] + repr(ev.exception)
    data = json.loads(ev.stdout)
    acc, speed = data["runs"][0]["accuracy"], data["runs"][0]["speed"]
    norm = get_normalizer("whisper")
    scored = [r for r in results if r["text"] is not None and norm(r["text"])]
    lost_words = sum(len(norm(r["text"]).split()) for r in scored if r["status"] != "ok")
    ref_words = sum(len(norm(r["text"]).split()) for r in scored)
    assert (acc["n_samples"], acc["n_successful"]) == (len(results), len(results) - len(failed))
    # The simulated engine answers with the reference: successful rows are exact, failed ones are all deletions.
    assert acc["wer_successful"] == 0.0 and acc["exact_match"] == 1.0
    assert acc["deletions"] == lost_words and acc["wer"] == pytest.approx(lost_words / ref_words)
    assert {d["device"] for d in speed["per_device"]} == {"0", "1"}
    assert speed["failures"]["by_class"][0]["count"] == len(failed)
    assert speed["overall"]["rtfx_device"] > 0 and speed["job_wall_s"] > 0
    text = html.read_text()
    assert 'id="fig-timeline-0"' in text and "<svg" in text and 'id="table-devices-run"' in text


def test_timeline_of_a_big_run_shows_busy_share(tmp_path):
    from transcribe_batch.pipeline.evaluate import plots
    from transcribe_batch.pipeline.evaluate.report import evaluate_paths

    rows = [result_row(f"u{i}", "a b", "a b", device=i % 4, start=0.25 * (i // 4), total=0.2) for i in range(4400)]
    report = evaluate_paths([write_run(tmp_path / "big", rows)])
    svg = plots.device_timeline(report.runs[0])
    assert svg.startswith("<svg") and "busy share" in svg and "device 3" in svg
    assert len(svg) < 400_000  # an image per time bin, not 4400 bars
