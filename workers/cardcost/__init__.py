"""A BM1684X card cost model fitted to Sophgo's published figures (issue 19): architectures (arch.py), the published
points (published.py), the fit (fit.py), per-request and per-step times (model.py) and B decode slots (slots.py).
The simulated engine's `card` cost model and benchmarks/pipeline.py's projection use it."""

from .arch import Architecture, ArchitectureError, Decoder, Encoder, from_config, from_model_dir, preset, PRESETS
from .fit import Calibration, CalibrationRow, CardConstants, calibration, fit
from .model import QUANT_BITS, USABLE_DEVICE_BYTES, CardModel
from .slots import SlotJob, Slots, SlotSchedule, SlotTiming, run_slots

__all__ = ["Architecture", "ArchitectureError", "Calibration", "CalibrationRow", "CardConstants", "CardModel",
           "Decoder", "Encoder", "PRESETS", "QUANT_BITS", "SlotJob", "Slots", "SlotSchedule", "SlotTiming",
           "USABLE_DEVICE_BYTES", "calibration", "fit", "from_config", "from_model_dir", "preset", "run_slots"]
