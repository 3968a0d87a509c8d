"""One source of settings (issue 9): config/defaults.toml gives RunConfig's defaults, the CLI's options and help, and
the workers' and engines' fallbacks."""

import dataclasses

import typer.main

from transcribe_batch.config.settings import default, defaults, helps
from transcribe_batch.pipeline.cli import app
from transcribe_batch.pipeline.cli.run import run as run_command
from transcribe_batch.pipeline.config import RunConfig, build_config
from transcribe_batch.workers.engines import create_engine
from transcribe_batch.workers.frontend import FrontEnd
from transcribe_batch.workers.prompts import answer_budget


def test_defaults_toml_and_run_config_have_the_same_settings():
    settable = {f.name for f in dataclasses.fields(RunConfig)} - {"manifest", "output", "config_file"}
    assert set(defaults()) == settable
    assert set(helps()) == settable - {"engine_options"}
    cfg = RunConfig(manifest="m", output="o")
    for name in settable - {"engine_options"}:
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
    assert build_config("m.jsonl", "out", engine="simulated").max_new_tokens == default("max_new_tokens")
    assert run_command.__name__ == "run"


def test_workers_fall_back_to_the_same_defaults():
    cap = default("max_new_tokens")
    assert FrontEnd(None).max_new_tokens_cap == cap
    assert answer_budget(10_000.0) == cap
    eng = create_engine("simulated", {}, 0)
    assert (eng.ttft_s, eng.s_per_token, eng.speedup) == (default("sim_ttft_s"), default("sim_s_per_token"),
                                                           default("sim_speedup"))
