"""A run's configuration: config/defaults.toml, then a --config TOML file, then CLI flags (highest priority)."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transcribe_batch.config.settings import default, defaults
from transcribe_batch.workers.contracts import EngineOptions, SegmentSettings, SimulatedOptions, WorkerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# "" means None for these
_OPTIONAL = {"model_dir", "bmodel", "address", "progress_log", "sim_faults", "sim_text", "sim_card_model",
             "device_kind"}
_PATHS = {"model_dir", "bmodel", "progress_log"}


MIN_RANGE_S = 30.0  # a range must be longer than the cut window around its boundaries (workers/ranges.py: 20 s)


class ConfigError(ValueError):
    pass


def _d(name: str):
    """A RunConfig field's default: defaults.toml's value ("" for an optional setting means None)."""
    value = default(name)
    return None if name in _OPTIONAL and value == "" else value


@dataclass
class RunConfig:
    """One run's settings. Every default is config/defaults.toml's (config/settings.py; "" there means None)."""

    manifest: Path
    output: Path
    engine: str = _d("engine")
    model_dir: Path | None = _d("model_dir")
    bmodel: Path | None = _d("bmodel")
    dtype: str = _d("dtype")
    template: str = _d("template")
    max_new_tokens: int = _d("max_new_tokens")
    batch_size: int = _d("batch_size")
    devices: str = _d("devices")
    device_kind: str | None = _d("device_kind")
    address: str | None = _d("address")
    ray_num_cpus: int = _d("ray_num_cpus")
    max_attempts: int = _d("max_attempts")
    device_max_failures: int = _d("device_max_failures")
    shard_size: int = _d("shard_size")
    shard_max_audio_s: float = _d("shard_max_audio_s")
    inflight_per_device: int = _d("inflight_per_device")
    escalate_min_s: float = _d("escalate_min_s")
    splitter: str = _d("splitter")
    segment_min_s: float = _d("segment_min_s")
    segment_max_s: float = _d("segment_max_s")
    range_s: float = _d("range_s")
    skip_bad_lines: bool = _d("skip_bad_lines")
    overwrite: bool = _d("overwrite")
    retry_failed: bool = _d("retry_failed")
    quiet: bool = _d("quiet")
    save_every_s: float = _d("save_every_s")
    progress_log: Path | None = _d("progress_log")
    sim_speedup: float = _d("sim_speedup")
    sim_faults: str | None = _d("sim_faults")
    sim_text: str | None = _d("sim_text")
    sim_ttft_s: float = _d("sim_ttft_s")
    sim_s_per_token: float = _d("sim_s_per_token")
    sim_cost_model: str = _d("sim_cost_model")
    sim_card_model: str | None = _d("sim_card_model")
    sim_card_quant: str = _d("sim_card_quant")
    sim_card_seqlen: int = _d("sim_card_seqlen")
    sim_batch: int = _d("sim_batch")
    engine_options: dict = field(default_factory=dict)
    config_file: Path | None = None

    def worker_config(self, *, log_dir: str | os.PathLike | None = None) -> WorkerConfig:
        """What every device actor, its front end and its engine are configured with (workers/contracts.py);
        `log_dir`: where native libraries' console output goes (the run folder's logs/)."""
        return WorkerConfig(
            engine=self.engine, model_dir=str(self.model_dir) if self.model_dir else None,
            bmodel=str(self.bmodel) if self.bmodel else None, dtype=self.dtype, template=self.template,
            max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, escalate_min_s=self.escalate_min_s,
            segments=SegmentSettings(self.resolved_splitter(), self.segment_min_s, self.segment_max_s),
            sim=SimulatedOptions(speedup=self.sim_speedup, faults=self.sim_faults, text=self.sim_text,
                                 ttft_s=self.sim_ttft_s, s_per_token=self.sim_s_per_token,
                                 cost_model=self.sim_cost_model, card_model=self.sim_card_model,
                                 card_quant=self.sim_card_quant, card_seqlen=self.sim_card_seqlen,
                                 batch=self.sim_batch),
            extras=EngineOptions(self.engine_options), log_dir=str(log_dir) if log_dir is not None else None)

    def resolved_splitter(self) -> str:
        """The splitter this run uses: `splitter`, with auto resolved to vad where the Silero VAD can run here,
        else energy (workers/vad.py; VadUnavailable for vad where it cannot)."""
        from transcribe_batch.workers.vad import resolve_splitter

        return resolve_splitter(self.splitter)

    def identity(self) -> dict:
        """What must not change between a run and its resume (else --overwrite): the segmentation included, so
        that a row's pieces (and a long row's ranges) are all cut alike."""
        return {
            "engine": self.engine,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "bmodel": str(self.bmodel) if self.bmodel else None,
            "template": self.template,
            "prompt": _template_text(self.template),
            "max_new_tokens": self.max_new_tokens,
            "sim_text": self.sim_text if self.engine == "simulated" else None,
            "splitter": self.resolved_splitter(),
            "segment_min_s": self.segment_min_s,
            "segment_max_s": self.segment_max_s,
            "range_s": self.range_s,
        }

    def to_json(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def _template_text(name: str) -> str | None:
    from transcribe_batch.workers.prompts import load_templates

    return load_templates().templates.get(name)


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_SETTABLE = set(_FIELDS) - {"manifest", "output", "config_file"}


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    if isinstance(data.get("run"), dict):  # keys may sit under [run] or at the top level
        data = {**{k: v for k, v in data.items() if k != "run"}, **data["run"]}
    return data


def load_defaults() -> dict:
    return dict(defaults())


def _coerce(name: str, value: Any, source: str) -> Any:
    if name in _OPTIONAL and value in ("", None):
        return None
    if name in _PATHS:
        return Path(os.path.expanduser(str(value))).resolve()
    if name == "engine_options":
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: engine_options must be a table")
        return dict(value)
    default = _FIELDS[name].default
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} = {value!r} has the wrong type (expected {type(default).__name__})") from None


def build_config(manifest: str | os.PathLike, output: str | os.PathLike, *, config_file: str | os.PathLike | None = None,
                 **overrides: Any) -> RunConfig:
    """defaults.toml < config_file < overrides (None values in overrides mean "not given")."""
    cfg = _layered(manifest, output, config_file, overrides)
    validate(cfg)
    return cfg


def _layered(manifest, output, config_file, overrides: dict) -> RunConfig:
    values: dict[str, Any] = {}
    layers = [("config/defaults.toml", load_defaults())]
    if config_file:
        layers.append((str(config_file), _read_toml(Path(config_file))))
    layers.append(("command line", {k: v for k, v in overrides.items() if v is not None}))
    for source, layer in layers:
        for name, value in layer.items():
            if name not in _SETTABLE:
                raise ConfigError(f"{source}: unknown setting {name!r}")
            if name == "engine_options":
                values.setdefault("engine_options", {}).update(_coerce(name, value, source))
            else:
                values[name] = _coerce(name, value, source)
    return RunConfig(manifest=Path(manifest).resolve(), output=Path(output).resolve(),
                     config_file=Path(config_file).resolve() if config_file else None, **values)


def worker_config(*, config_file: str | os.PathLike | None = None, log_dir: str | os.PathLike | None = None,
                  **settings: Any) -> WorkerConfig:
    """A WorkerConfig from defaults.toml < config_file < settings, for tools and tests that run a worker, front end
    or engine without a run (same names and checks as build_config, less the run's own: an engine's missing model
    folder or bmodel is then the engine's error)."""
    cfg = _layered(os.devnull, os.devnull, config_file, settings)
    validate(cfg, run=False)
    return cfg.worker_config(log_dir=log_dir)


def validate(cfg: RunConfig, *, run: bool = True) -> None:
    from transcribe_batch.workers.engines import ENGINES, UnknownEngine, device_kind

    if cfg.engine not in ENGINES:
        raise ConfigError(f"engine: unknown engine {cfg.engine!r}; choose one of {', '.join(ENGINES)}")
    if "device_kind" in cfg.engine_options:
        raise ConfigError("engine_options: device_kind is a setting of its own now: write device_kind = "
                          f"{cfg.engine_options['device_kind']!r} at the top level (or under [run])")
    if cfg.device_kind:
        try:
            device_kind(cfg.engine, cfg.device_kind)
        except (UnknownEngine, ValueError) as e:
            raise ConfigError(f"device_kind: {e}") from None
    for name in ("max_attempts", "shard_size", "inflight_per_device", "batch_size", "max_new_tokens",
                 "device_max_failures"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not (math.isfinite(cfg.save_every_s) and cfg.save_every_s > 0):
        raise ConfigError(f"save_every_s must be a positive number of seconds, got {cfg.save_every_s}")
    if not (math.isfinite(cfg.segment_max_s) and cfg.segment_max_s > 0):
        raise ConfigError(f"segment_max_s must be a positive number of seconds, got {cfg.segment_max_s}")
    if not 0 <= cfg.segment_min_s <= cfg.segment_max_s:
        raise ConfigError(f"segment_min_s must lie in [0, segment_max_s = {cfg.segment_max_s}], got "
                          f"{cfg.segment_min_s}")
    if not (math.isfinite(cfg.range_s) and cfg.range_s >= MIN_RANGE_S):
        raise ConfigError(f"range_s must be at least {MIN_RANGE_S:g} seconds (longer than the window a range's "
                          f"cut is chosen from), got {cfg.range_s}")
    try:
        cfg.resolved_splitter()
    except (ValueError, RuntimeError) as e:  # an unknown name, or vad where the Silero VAD cannot run
        raise ConfigError(f"splitter: {e}") from None
    if cfg.sim_speedup <= 0:
        raise ConfigError(f"sim_speedup must be > 0, got {cfg.sim_speedup}")
    if run and cfg.engine == "bm1684x" and not cfg.bmodel:
        raise ConfigError("engine bm1684x needs --bmodel (the compiled .bmodel) and --model-dir (tokenizer/configs)")
    if _template_text(cfg.template) is None:
        from transcribe_batch.workers.prompts import load_templates

        known = ", ".join(sorted(load_templates().templates))
        raise ConfigError(f"template: unknown template {cfg.template!r}; known (config/prompts.toml): {known}")
    if cfg.engine == "simulated":
        from transcribe_batch.workers.engines.simulated import check_options

        try:
            check_options(cfg.worker_config())
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif cfg.sim_faults:
        from transcribe_batch.workers.engines.simulated import FaultSpec

        try:
            FaultSpec.parse(cfg.sim_faults)
        except ValueError as e:
            raise ConfigError(str(e)) from None
