"""`transcribe-batch run` and `transcribe-batch devices` through the real typer app."""

import json

import pyarrow.parquet as pq
import pytest
import ray
from typer.testing import CliRunner

from manifest_helpers import write_manifest
from transcribe_batch.pipeline.cli import app
from transcribe_batch.pipeline.config import ConfigError, build_config

runner = CliRunner()


def test_run_help_documents_every_knob():
    result = runner.invoke(app, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--output", "--config", "--engine", "--model-dir", "--bmodel", "--devices", "--address",
                   "--max-attempts", "--skip-bad-lines", "--overwrite", "--retry-failed", "--quiet",
                   "--progress-log", "--sim-speedup", "--sim-faults", "--batch-size", "[default: 3]"):
        assert option in result.output, option
    assert "resumes" in result.output


def test_bad_manifest_line_is_a_clear_error(tmp_path, audio_dir):
    m = tmp_path / "m.jsonl"
    write_manifest(m, audio_dir, limit=2)
    m.write_text(m.read_text() + json.dumps({"audio_filepath": "x.wav", "duration": "ten"}) + "\n")
    result = runner.invoke(app, ["run", str(m), "-o", str(tmp_path / "out"), "--engine", "simulated", "-q"])
    assert result.exit_code == 2
    assert f"error: {m}:3: field 'duration': must be a number of seconds" in result.output


@pytest.mark.parametrize("args, words", [
    (["--engine", "nope"], "unknown engine 'nope'"),
    (["--engine", "bm1684x"], "needs --bmodel"),
    (["--engine", "simulated", "--sim-faults", "boom=1"], "unknown fault 'boom'"),
    (["--engine", "simulated", "--template", "poetry"], "unknown template 'poetry'"),
    (["--engine", "simulated", "--max-attempts", "0"], "max_attempts must be >= 1"),
    (["--engine", "simulated", "--save-every-s", "0"], "save_every_s must be a positive number of seconds"),
    (["--engine", "simulated", "--save-every-s", "nan"], "save_every_s must be a positive number of seconds"),
])
def test_bad_settings_are_refused(tmp_path, args, words):
    m = tmp_path / "m.jsonl"
    m.write_text("")
    result = runner.invoke(app, ["run", str(m), "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and words in result.output


def test_config_file_layers(tmp_path):
    cfg_file = tmp_path / "job.toml"
    cfg_file.write_text('[run]\nengine = "simulated"\nmax_attempts = 5\nsim_speedup = 10.0\n'
                        '[engine_options]\nsim_broken_devices = [1]\n')
    cfg = build_config("m.jsonl", "out", config_file=cfg_file, sim_speedup=99.0)
    assert (cfg.engine, cfg.max_attempts, cfg.sim_speedup) == ("simulated", 5, 99.0)  # flags beat the file
    assert cfg.shard_size == 4  # defaults.toml
    assert cfg.worker_config().extras["sim_broken_devices"] == (1,)
    cfg_file.write_text('engine = "simulated"\nmax_atempts = 5\n')
    with pytest.raises(ConfigError, match="unknown setting 'max_atempts'"):
        build_config("m.jsonl", "out", config_file=cfg_file)
    cfg_file.write_text('engine = "simulated"\nquiet = "yes"\n')
    with pytest.raises(ConfigError, match="quiet = 'yes' has the wrong type"):
        build_config("m.jsonl", "out", config_file=cfg_file)


def test_devices_json():
    result = runner.invoke(app, ["devices", "--json"])
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert set(info["local"]) == {"bm1684x", "bm1684x_driver", "gpus", "cpus"}
    assert info["device_kinds"]["bm1684x"] == {"description": "Sophgo BM1684X card (/dev/bm-sophon<N>)",
                                               "ray_resource": "bm1684x", "engines": ["simulated", "bm1684x"]}


@pytest.mark.slow
def test_run_end_to_end_and_resume(tmp_path, audio_dir, ray_cluster):
    """The CLI in this process joins the Ray it finds initialised (the shared test cluster, conftest.py)."""
    assert ray.is_initialized()
    m = tmp_path / "m.jsonl"
    rows = write_manifest(m, audio_dir, repeat=2)
    cfg = tmp_path / "job.toml"
    cfg.write_text('engine = "simulated"\nsim_speedup = 2000.0\nshard_size = 3\n')
    args = ["run", str(m), "-o", str(tmp_path / "out"), "--config", str(cfg), "--devices", "3", "--quiet"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["status"] == "complete" and summary["n_ok"] == len(rows) and len(summary["devices"]) == 3
    table = pq.read_table(tmp_path / "out" / "results.parquet")
    assert table["id"].to_pylist() == [r["id"] for r in rows]
    second = runner.invoke(app, args)
    assert second.exit_code == 0
    assert json.loads(second.stdout.strip().splitlines()[-1])["n_resumed"] == len(rows)
    refused = runner.invoke(app, [*args, "--sim-text", "x"])
    assert refused.exit_code == 2 and "--overwrite" in refused.output


def test_device_selection():
    from transcribe_batch.pipeline.devices import DeviceError, parse_devices

    assert parse_devices("all", [0, 2, 3]) == [0, 2, 3]
    assert parse_devices("0,3", [0, 2, 3]) == [0, 3]
    assert parse_devices("2,", [0, 2, 3]) == [2]
    assert parse_devices("2", [0, 2, 3]) == [0, 2]  # a count: the first N
    assert parse_devices("4", []) == [0, 1, 2, 3]  # simulated devices
    for spec, words in [("1,5", "no devices 1, 5"), ("4", "only 3"), ("0", "at least one"), ("x", "expected all")]:
        with pytest.raises(DeviceError, match=words):
            parse_devices(spec, [0, 2, 3])


def test_card_actors_request_the_custom_resource_and_pin_to_their_node():
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from transcribe_batch.pipeline.devices import DeviceSlot
    from transcribe_batch.pipeline.scheduler import actor_options

    opts = actor_options(DeviceSlot("bm1684x", 2, node_id="ab" * 28, node_ip="10.0.0.2"), inflight_per_device=2)
    assert opts["resources"] == {"bm1684x": 1} and opts["num_cpus"] == 0 and opts["max_restarts"] == -1
    assert isinstance(opts["scheduling_strategy"], NodeAffinitySchedulingStrategy)
    assert opts["scheduling_strategy"].soft is False
    assert actor_options(DeviceSlot("gpu", 0), 2)["num_gpus"] == 1
    assert "resources" not in actor_options(DeviceSlot("sim", 0), 2)


def test_a_manifest_as_first_argument_means_run(tmp_path, monkeypatch):
    """Bug: `transcribe-batch m.jsonl -o out` (the form the README promised) said "No such command"."""
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"audio_filepath": "x.wav", "duration": "ten"}) + "\n")
    result = runner.invoke(app, [str(m), "-o", str(tmp_path / "out"), "--engine", "simulated"])
    assert result.exit_code == 2 and f"error: {m}:1: field 'duration'" in result.output, result.output
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval").write_text("")  # a file named like a command: the command wins
    result = runner.invoke(app, ["eval", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "nope" in result.output and "field" not in result.output
    result = runner.invoke(app, ["m.jsonl", "-o", "out", "--engine", "simulated"])  # relative, in the cwd
    assert result.exit_code == 2 and "field 'duration'" in result.output
    result = runner.invoke(app, ["evl"])
    assert result.exit_code == 2 and "No such command 'evl'" in result.output
    result = runner.invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for command in ("run", "eval", "export", "manifest", "devices"):
        assert f" {command} " in result.output
    assert "transcribe-batch m.jsonl -o runs/x" in result.output


@pytest.mark.parametrize("args, config_text, words", [
    (["--batch-size", "0", "--quiet"], None, "batch_size must be >= 1"),
    (["--batch-size", "0"], "quiet = true\n", "batch_size must be >= 1"),
    (["--quiet", "--config", "{tmp}"], None, "is a folder; give a TOML file"),
])
def test_quiet_prints_json_when_settings_are_refused(tmp_path, args, config_text, words):
    """Bug: --quiet printed no JSON on a config error (--batch-size 0); `--config <a folder>` was a traceback."""
    m = tmp_path / "m.jsonl"
    m.write_text("")
    if config_text is not None:
        (tmp_path / "job.toml").write_text(config_text)
        args = [*args, "--config", str(tmp_path / "job.toml")]
    args = [a.format(tmp=tmp_path) for a in args]
    result = runner.invoke(app, ["run", str(m), "-o", str(tmp_path / "out"), "--engine", "simulated", *args])
    assert result.exit_code == 2 and words in result.stderr, result.output
    assert "Traceback" not in result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "refused" and words in summary["error"]
    assert summary["output"] == str(tmp_path / "out") and not (tmp_path / "out").exists()


def test_progress_log_never_appends_to_an_input(tmp_path, audio_dir):
    """Bug: --progress-log appended to any file: the manifest (corrupted), a wav (changed)."""
    m = tmp_path / "m.jsonl"
    write_manifest(m, audio_dir, limit=1)
    wav = tmp_path / "a.wav"
    wav.write_bytes((audio_dir / "001.wav").read_bytes())
    (tmp_path / "job.toml").write_text('engine = "simulated"\n')
    run_dir = tmp_path / "out"
    run_dir.mkdir()
    (tmp_path / "notes.txt").write_text("my notes\n")
    for target, words in [(m, "is the manifest"), (wav, "is not a progress log"),
                          (tmp_path / "notes.txt", "is not a progress log"),
                          (tmp_path / "job.toml", "is the --config file"), (tmp_path, "is a folder"),
                          (run_dir / "other.log", "inside the run folder"),
                          (tmp_path / "no" / "such" / "p.jsonl", "does not exist")]:
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        result = runner.invoke(app, ["run", str(m), "-o", str(run_dir), "--engine", "simulated", "--config",
                                     str(tmp_path / "job.toml"), "--progress-log", str(target)])
        assert result.exit_code == 2 and words in result.output, (target, result.output)
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    from transcribe_batch.pipeline.cli.run import check_progress_log

    earlier = tmp_path / "progress.jsonl"
    earlier.write_text(json.dumps({"time": "2026-01-01T00:00:00+00:00", "event": "start", "done": 0}) + "\n")
    for fine in (earlier, tmp_path / "new.jsonl", run_dir / "progress.jsonl"):
        check_progress_log(build_config(m, run_dir, engine="simulated", progress_log=fine))


def _dead_address() -> str:
    import socket

    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.mark.timeout(60)  # ray.init retried a dead address for ~10 minutes
def test_a_dead_cluster_address_is_a_message(tmp_path):
    address = _dead_address()
    for args in (["devices", "--address", address], ["devices", "--address", f"ray://{address}"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "no Ray cluster answers there (Connection refused)" in result.output, \
            result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    m = tmp_path / "m.jsonl"
    m.write_text("")
    result = runner.invoke(app, ["run", str(m), "-o", str(tmp_path / "out"), "--engine", "simulated", "--address",
                                 address, "-q"])
    assert result.exit_code == 2 and "no Ray cluster answers there" in result.stderr, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "refused"
    assert not (tmp_path / "out").exists()
