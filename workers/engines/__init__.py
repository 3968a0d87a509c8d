"""Engine plug-ins. Each module exposes `create(options: dict, device: int | None) -> Engine`; modules are imported
lazily so that a host without torch (or without the native runtime) can still run the other engines. Each engine
declares the device kinds (workers/platforms.py) it runs on, preferred first: a new engine is one module and one
line here."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

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
    """The device kind a run of `engine` uses: `requested` (engine option `device_kind`) if the engine runs on it,
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


def create_engine(name: str, options: dict, device: int | None = None) -> Engine:
    return importlib.import_module(engine_spec(name).module).create(options, device)


__all__ = ["ENGINES", "Engine", "EngineError", "EngineLimits", "EngineResult", "EngineSpec", "Request",
           "SequenceTooLong", "UnknownEngine", "create_engine", "device_kind", "engine_spec"]
