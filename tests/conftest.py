"""Shared test fixtures: the data the repository carries (tests/data: real recordings, the released Qwen2-Audio
tokenizer and configs), the released models' files outside the repository for the checks that compare against them,
and the in-process Ray cluster."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from transcribe_batch.workers.simulator_threads import simulator_loaded, yield_idle_engine_threads

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # the same layout as the project's shared folder: audio/, qwen2-audio-7b-instruct/
RELEASED_ENV = "TRANSCRIBE_BATCH_SHARED"  # a folder holding the released models' own files (CI: ../shared)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data: the recordings (audio/, with manifest.jsonl) and the released Qwen2-Audio-7B-Instruct tokenizer and
    configs (qwen2-audio-7b-instruct/), copied with their provenance (tests/data/README.md)."""
    return DATA


@pytest.fixture(scope="session")
def shared_dir(data_dir: Path) -> Path:
    """The old name of data_dir (the data used to be read from ../shared; tests/data has the same layout)."""
    return data_dir


@pytest.fixture(scope="session")
def audio_dir(data_dir: Path) -> Path:
    return data_dir / "audio"


@pytest.fixture(scope="session")
def audio_manifest(audio_dir: Path) -> Path:
    return audio_dir / "manifest.jsonl"


@pytest.fixture(scope="session")
def audio_rows(audio_manifest: Path) -> list[dict]:
    return [json.loads(line) for line in audio_manifest.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def model_dir(data_dir: Path) -> Path:
    """The real Qwen2-Audio-7B-Instruct tokenizer and configs (no weights), as released."""
    return data_dir / "qwen2-audio-7b-instruct"


def released_folder(name: str, *needed: str) -> Path:
    """The released model's own folder `name` (e.g. qwen3-asr-0.6b) under $TRANSCRIBE_BATCH_SHARED, for the checks
    that compare against the released files; skips, naming what it needs, where it is absent (fails in CI, which sets
    the variable only where the folder exists). The only tests that may read outside the repository."""
    root = os.environ.get(RELEASED_ENV)
    what = f"the released {name} tokenizer and configs"
    if not root:
        pytest.skip(f"needs {what}: set {RELEASED_ENV} to a folder holding {name}/ (CI uses ../shared)")
    folder = Path(root).expanduser().resolve() / name
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        reason = f"needs {what}: {', '.join(missing)} not in {folder} ({RELEASED_ENV}={root})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)  # CI set the variable because the folder is there: a missing file is an error
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="session")
def released_qwen3_asr() -> Path:
    """The released Qwen3-ASR-0.6B config, chat template and tokenizer (no weights)."""
    return released_folder("qwen3-asr-0.6b", "config.json", "preprocessor_config.json", "tokenizer_config.json",
                           "chat_template.json", "vocab.json", "merges.txt")


@pytest.fixture(scope="session")
def released_qwen2_audio() -> Path:
    """The released Qwen2-Audio-7B-Instruct tokenizer and configs (no weights)."""
    return released_folder("qwen2-audio-7b-instruct", "config.json", "preprocessor_config.json",
                           "tokenizer_config.json", "vocab.json", "merges.txt")


class RuntimeCache:
    """Stands in for transcribe_batch_native.Runtime during the tests: one runtime per bmodel (its bytes, device and
    options) for the whole session, whether a test builds it or an engine does. Loading one on the cmodel simulator
    takes about a second, and the tests load the same few bmodels dozens of times. A cached runtime is handed out
    with every decode slot free, as a fresh one would be; a path that is not a file goes to the real constructor,
    so its error is the runtime's own."""

    def __init__(self, runtime_class):
        self.runtime_class = runtime_class
        self.runtimes: dict = {}
        self.requests = 0  # runtimes asked for
        self.loads = 0  # bmodels loaded

    def __getattr__(self, name):  # the class's own attributes (methods, docs): `hasattr(tbn.Runtime, "start")`
        if name == "runtime_class":
            raise AttributeError(name)
        return getattr(self.runtime_class, name)

    def __call__(self, bmodel, device=0, *args, **kwargs):
        self.requests += 1
        path = Path(bmodel)
        if not path.is_file():
            return self.runtime_class(bmodel, device, *args, **kwargs)
        # by content: a copy in tmp_path is the same bmodel, a file changed in place a new one (fixtures are ~1-3 MB)
        key = (hashlib.sha256(path.read_bytes()).hexdigest(), device, args, tuple(sorted(kwargs.items())))
        rt = self.runtimes.get(key)
        if rt is None:
            rt = self.runtimes[key] = self.runtime_class(bmodel, device, *args, **kwargs)
            self.loads += 1
            yield_idle_engine_threads()
        for slot in range(rt.batch):
            if rt.state(slot) != "free":  # left busy by a test that failed half-way
                rt.cancel(slot)
        return rt


_RUNTIMES: list[RuntimeCache] = []


@pytest.fixture(autouse=True)
def simulator_marker_is_honest(request):
    """A test that loads the cmodel simulator into the pytest process must be marked `simulator`: from then on the
    simulator's threads spin on the CPU (see pytest_collection_modifyitems), and Ray's workers, which run niced, get
    little of it — an unmarked test in the middle of the suite once made every later Ray test several times slower."""
    before = simulator_loaded()
    yield
    if not before and request.node.get_closest_marker("simulator") is None and simulator_loaded():
        pytest.fail(f"{request.node.nodeid} loaded the BM1684X cmodel simulator into the pytest process but is not "
                    "marked @pytest.mark.simulator (tests/conftest.py: such tests run last)", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def one_runtime_per_bmodel():
    """Installs RuntimeCache as transcribe_batch_native.Runtime for the session (where the extension is built)."""
    try:
        import transcribe_batch_native as tbn
    except ImportError:
        yield None
        return
    cache = RuntimeCache(tbn.Runtime)
    tbn.Runtime = cache
    _RUNTIMES.append(cache)
    try:
        yield cache
    finally:
        tbn.Runtime = cache.runtime_class
        cache.runtimes.clear()


def pytest_terminal_summary(terminalreporter):
    for cache in _RUNTIMES:
        if cache.requests:
            terminalreporter.write_line(f"native runtimes: {cache.loads} bmodels loaded for "
                                        f"{cache.requests} runtimes asked for (tests/conftest.py RuntimeCache)")


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
    # Modules that set SIMULATOR_LAST load bmodels after which the simulator's later loads in the same process go
    # wrong (tests/test_prebuilt_layout.py: Sophgo's prebuilt layout): they come after every other simulator test.
    items.sort(key=lambda item: (item.get_closest_marker("simulator") is not None, not _uses_ray_cluster(item),
                                 getattr(item.module, "SIMULATOR_LAST", False)))
