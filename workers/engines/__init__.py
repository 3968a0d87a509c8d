"""Engine plug-ins. Each module exposes `create(config: WorkerConfig, device: int | None) -> Engine` (config:
workers/contracts.py, built once per run by pipeline/config.py); modules are imported
lazily so that a host without torch (or without the native runtime) can still run the other engines. Each engine
declares the device kinds (workers/platforms.py) it runs on, preferred first: a new engine is one module and one
line here."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..contracts import WorkerConfig
from .base import Engine, EngineError, EngineLimits, EngineResult, Request, SequenceTooLong


@dataclass(frozen=True)
class EngineSpec:
    module: str
    device_kinds: tuple[str, ...]  # kinds it runs on, preferred first (workers/platforms.py)


ENGINES = {
    "simulated": EngineSpec("transcribe_batch.workers.engines.simulated", ("sim", "bm1684x", "gpu", "cpu")),
    "hf": EngineSpec("transcribe_batch.workers.engines.hf", ("gpu", "cpu")),
    "bm1684x": EngineSpec("transcribe_batch.workers.engines.bm1684x", ("bm1684x",)),
}


class UnknownEngine(ValueError):
    pass


def engine_spec(name: str) -> EngineSpec:
    if name not in ENGINES:
        raise UnknownEngine(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[name]


def device_kind(engine: str, requested: str | None = None, *, gpus_available: bool = False) -> str:
    """The device kind a run of `engine` uses: `requested` (the `device_kind` setting) if the engine runs on it,
    else the engine's first kind, except that an engine that prefers GPUs falls back to its next kind without one."""
    kinds = engine_spec(engine).device_kinds
    if requested:
        if requested not in kinds:
            raise UnknownEngine(f"engine {engine!r} does not run on device kind {requested!r} "
                                f"(it runs on: {', '.join(kinds)})")
        return requested
    if kinds[0] == "gpu" and not gpus_available and len(kinds) > 1:
        return kinds[1]
    return kinds[0]


def create_engine(config: WorkerConfig, device: int | None = None) -> Engine:
    """The engine `config.engine` names, on `device`."""
    return importlib.import_module(engine_spec(config.engine).module).create(config, device)


__all__ = ["ENGINES", "Engine", "EngineError", "EngineLimits", "EngineResult", "EngineSpec", "Request",
           "SequenceTooLong", "UnknownEngine", "WorkerConfig", "create_engine", "device_kind", "engine_spec"]
