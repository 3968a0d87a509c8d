"""One source of settings (issues 9, 17): config/defaults.toml gives RunConfig's defaults and the CLI's help; a run's
settings reach the workers, front end and engines through one WorkerConfig, and nothing below re-defaults them."""

import dataclasses

import pytest
import typer.main
from typer.testing import CliRunner

from transcribe_batch.config.settings import default, defaults, helps
from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.pipeline import runner
from transcribe_batch.pipeline.cli import app
from transcribe_batch.pipeline.config import ConfigError, RunConfig, build_config, worker_config
from transcribe_batch.workers.actor import TranscriptionWorker

SETTABLE = {f.name for f in dataclasses.fields(RunConfig)} - {"manifest", "output", "config_file"}


def test_defaults_toml_and_run_config_have_the_same_settings():
    assert set(defaults()) == SETTABLE
    assert set(helps()) == SETTABLE - {"engine_options"}
    cfg = RunConfig(manifest="m", output="o")
    for name in SETTABLE - {"engine_options"}:
        want = None if default(name) == "" else default(name)
        assert getattr(cfg, name) == want, name
        assert isinstance(default(name), type(dataclasses.asdict(cfg)[name] if want is not None else "")), name


def test_every_cli_option_of_a_setting_shows_its_help_and_default():
    command = typer.main.get_command(app).commands["run"]
    options = {p.name: p for p in command.params}
    for name in helps():
        if name in options:
            assert options[name].help.startswith(helps()[name]), name
            if default(name) not in ("", False):
                assert f"[default: {default(name)}]" in options[name].help, name


@pytest.fixture
def cli_config(monkeypatch, tmp_path):
    """`transcribe-batch run ARGS` → the RunConfig the CLI hands the runner (the runner is not started)."""
    seen = []

    def fake_run_job(cfg):
        seen.append(cfg)
        return runner.RunSummary(output=cfg.output, status="complete")

    monkeypatch.setattr(runner, "run_job", fake_run_job)
    (tmp_path / "m.jsonl").write_text("")

    def run(*args):
        done = CliRunner().invoke(app, ["run", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "out"), *args])
        assert done.exit_code == 0, done.output
        return seen.pop()

    return run


def test_the_cli_without_flags_runs_with_defaults_toml(cli_config):
    cfg = cli_config("--engine", "simulated")  # (the default engine, bm1684x, needs a --bmodel)
    for name in SETTABLE - {"engine_options", "engine"}:
        assert getattr(cfg, name) == (None if default(name) == "" else default(name)), name


def test_flags_override_the_config_file_which_overrides_the_defaults(cli_config, tmp_path):
    (tmp_path / "c.toml").write_text('max_new_tokens = 9\ntemplate = "ultraeval"\n[run]\nsim_speedup = 4.0\n')
    cfg = cli_config("--config", str(tmp_path / "c.toml"), "--max-new-tokens", "7", "--engine", "simulated")
    assert (cfg.max_new_tokens, cfg.template, cfg.sim_speedup) == (7, "ultraeval", 4.0)
    assert cfg.batch_size == default("batch_size")


def test_a_runs_settings_reach_the_actor_front_end_and_engine_unchanged(audio_dir):
    """What the run says (not a default of a layer below) is what the worker uses."""
    cfg = build_config("m.jsonl", "out", engine="simulated", max_new_tokens=7, template="ultraeval", sim_speedup=3.0,
                       sim_ttft_s=1.5, sim_s_per_token=0.25, batch_size=2, escalate_min_s=20.0,
                       engine_options={"sim_max_audio_s": 12.0})
    worker = TranscriptionWorker(cfg.worker_config(), 0)
    try:
        engine, fe = worker.engine, worker.frontend
        assert (engine.speedup, engine.ttft_s, engine.s_per_token) == (3.0, 1.5, 0.25)
        assert engine.limits.max_audio_s == 12.0 and worker.batch_size == 2
        assert (fe.template, fe.max_new_tokens_cap) == ("ultraeval", 7)
        requests = fe.prepare(ManifestRow(id="x", audio_filepath=str(audio_dir / "beckett.wav")))
        assert {r.max_new_tokens for r in requests} == {7} and requests[0].prompt.startswith("listen the audio")
        assert worker._chunk_s(_item(duration=30.0, attempt=2)) is not None  # ≥ escalate_min_s 20: split
        assert worker._chunk_s(_item(duration=15.0, attempt=2)) is None
    finally:
        worker.close()
    defaults_worker = worker_config(engine="simulated")
    assert (defaults_worker.max_new_tokens, defaults_worker.template, defaults_worker.sim.speedup,
            defaults_worker.escalate_min_s) == (default("max_new_tokens"), default("template"),
                                                default("sim_speedup"), default("escalate_min_s"))


def _item(duration, attempt):
    from transcribe_batch.workers.work import WorkItem

    return WorkItem(0, 1, attempt=attempt, duration=duration)


def test_the_worker_config_is_read_only():
    config = worker_config(engine="simulated", engine_options={"sim_broken_devices": [1, 2]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_new_tokens = 1
    assert config.extras["sim_broken_devices"] == (1, 2)
    with pytest.raises(TypeError):
        config.extras["sim_broken_devices"] = ()


def test_device_kind_is_a_setting_not_an_engine_option():
    assert build_config("m.jsonl", "out", engine="simulated", device_kind="bm1684x").device_kind == "bm1684x"
    with pytest.raises(ConfigError, match="device_kind is a setting of its own"):
        build_config("m.jsonl", "out", engine="simulated", engine_options={"device_kind": "bm1684x"})
    with pytest.raises(ConfigError, match="does not run on device kind 'gpu'"):
        build_config("m.jsonl", "out", engine="bm1684x", bmodel="x.bmodel", device_kind="gpu")


def test_export_sanity_filters_default_to_the_export_table():
    """export's sanity filters: defaults.toml [export] gives Filters' defaults and the export options' help."""
    from pathlib import Path

    from transcribe_batch.config.settings import section, section_helps
    from transcribe_batch.pipeline.export.filters import Filters

    command = typer.main.get_command(app).commands["export"]
    options = {p.name: p for p in command.params}
    table, filters = section("export"), Filters()
    assert set(table) == set(section_helps("export")) == {"min_chars_per_s", "max_chars_per_s", "hallucinations",
                                                          "repetition"}
    for name, value in table.items():
        assert options[name].help.startswith(section_helps("export")[name]), name
        if name == "hallucinations":
            assert Path(filters.hallucinations).name == value and Path(filters.hallucinations).is_file()
        else:
            assert getattr(filters, name) == value == options[name].default, name
    assert "export" not in defaults() and "min_chars_per_s" not in helps()  # not run settings
