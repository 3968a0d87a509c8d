"""Shared test fixtures: the project's shared data (real recordings, the real model's tokenizer/configs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSCRIBE_BATCH_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED} (set TRANSCRIBE_BATCH_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def audio_dir(shared_dir: Path) -> Path:
    return shared_dir / "audio"


@pytest.fixture(scope="session")
def audio_manifest(audio_dir: Path) -> Path:
    return audio_dir / "manifest.jsonl"


@pytest.fixture(scope="session")
def audio_rows(audio_manifest: Path) -> list[dict]:
    return [json.loads(line) for line in audio_manifest.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def model_dir(shared_dir: Path) -> Path:
    """The real Qwen2-Audio-7B-Instruct tokenizer and configs (no weights)."""
    return shared_dir / "qwen2-audio-7b-instruct"


_RAY: dict = {"address": None}  # the in-process test cluster while it is up


@pytest.fixture(scope="module")
def ray_cluster():
    """A small in-process Ray cluster of the test's own (never one that happens to run on this host) for the tests
    of one module; yields its GCS address (for tests that start the CLI as a separate process).

    Starting one costs 5-10 s, so consecutive modules that use it share one (pytest_collection_modifyitems runs
    them one after another); pytest_runtest_teardown shuts it down before any test of a module that does not use it,
    so every other test still sees no Ray in the pytest process, as when each module had its own."""
    import ray

    if _RAY["address"] is None or not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        _RAY["address"] = ray.get_runtime_context().gcs_address
    yield _RAY["address"]


def _shutdown_ray() -> None:
    if _RAY["address"] is not None:
        import ray

        ray.shutdown()
        _RAY["address"] = None


def _uses_ray_cluster(item) -> bool:
    """Whether item's module has a test that uses the ray_cluster fixture (then the cluster stays up for all its
    tests, as a module-scoped fixture did)."""
    return bool(getattr(getattr(item, "module", None), "_uses_ray_cluster", False))


def pytest_runtest_teardown(item, nextitem):
    if not _uses_ray_cluster(nextitem):  # also after the last test (nextitem None)
        _shutdown_ray()


def pytest_sessionfinish(session):
    _shutdown_ray()


def pytest_collection_modifyitems(config, items):
    """Once the BM1684X cmodel simulator is loaded into a process, its polling threads keep about two cores busy until
    the process exits (they outlive the device handle). Tests that load it into the pytest process therefore run
    last, so they slow down only each other, not the Ray and front-end tests. The modules that use the shared
    in-process Ray cluster (ray_cluster) run first, one after another, so they start it once."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.module._uses_ray_cluster = True
    items.sort(key=lambda item: (item.get_closest_marker("simulator") is not None, not _uses_ray_cluster(item)))
