"""The hf engine as the tests load it: fp32, from a local folder, with the Hugging Face hub switched off."""

from __future__ import annotations

import os
from pathlib import Path

from transcribe_batch.pipeline.config import worker_config
from transcribe_batch.workers.engines import create_engine


def offline_hf_engine(model_dir: Path, batch_size: int):
    """create_engine("hf", …) with HF_HUB_OFFLINE=1 while it loads (restored afterwards)."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return create_engine(worker_config(engine="hf", model_dir=str(model_dir), dtype="fp32", batch_size=batch_size),
                             None)
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE")
        else:
            os.environ["HF_HUB_OFFLINE"] = old
