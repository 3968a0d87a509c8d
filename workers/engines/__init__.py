"""Engine plug-ins. Each module exposes `create(options: dict, device: int | None) -> Engine`; modules are imported
lazily so that a host without torch (or without the native runtime) can still run the other engines."""

from __future__ import annotations

import importlib

from .base import Engine, EngineError, EngineLimits, EngineResult, Request, SequenceTooLong

ENGINES = {
    "simulated": "transcribe_batch.workers.engines.simulated",
    "hf": "transcribe_batch.workers.engines.hf",
    "bm1684x": "transcribe_batch.workers.engines.bm1684x",
}


def create_engine(name: str, options: dict, device: int | None = None) -> Engine:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return importlib.import_module(ENGINES[name]).create(options, device)


__all__ = ["ENGINES", "Engine", "EngineError", "EngineLimits", "EngineResult", "Request", "SequenceTooLong", "create_engine"]
