"""Which Ray cluster a run joins: never one that merely happens to run on this host."""

import ray

from transcribe_batch.pipeline.config import build_config
from transcribe_batch.pipeline.runner import connect_ray


def _init_kwargs(monkeypatch, tmp_path, **settings):
    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    (tmp_path / "m.jsonl").write_text("")
    assert connect_ray(build_config(tmp_path / "m.jsonl", tmp_path / "out", **settings)) is True
    return seen


def test_without_address_a_new_local_cluster_is_started(monkeypatch, tmp_path):
    """Bug: ray.init() without an address joined whatever cluster RAY_ADDRESS or `ray start` had left on the host
    (another job's: its workers imported another checkout's code)."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    kw = _init_kwargs(monkeypatch, tmp_path, engine="simulated", devices="2")
    assert kw["address"] == "local"


def test_an_explicit_address_is_joined(monkeypatch, tmp_path):
    kw = _init_kwargs(monkeypatch, tmp_path, engine="simulated", devices="2", address="auto")
    assert kw["address"] == "auto"
