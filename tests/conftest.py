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


@pytest.fixture(scope="module")
def ray_cluster():
    """A small in-process Ray cluster of the test's own (never one that happens to run on this host) for the tests
    of one module; yields its GCS address (for tests that start the CLI as a separate process)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """Once the BM1684X cmodel simulator is loaded into a process, its polling threads keep about two cores busy until
    the process exits (they outlive the device handle). Tests that load it into the pytest process therefore run
    last, so they slow down only each other, not the Ray and front-end tests."""
    items.sort(key=lambda item: item.get_closest_marker("simulator") is not None)
