"""Write run folders the way contract 5 lays them out (results.parquet + run.json), for the evaluation tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from transcribe_batch.workers.record import PART_SCHEMA

T0 = 1_790_000_000.0  # an arbitrary epoch second


def result_row(row_id: str, text: str | None, pred: str | None, *, status: str = "ok", duration: float = 2.0,
               device: int = 0, node: str = "node-a", start: float = 0.0, total: float = 0.5, ttft: float = 0.1,
               n_new: int = 8, attempts: int = 1, error_class: str | None = None, finish: str | None = "eos") -> dict:
    ok = status == "ok"
    decode = total - ttft
    return {
        "id": row_id,
        "audio_filepath": f"/data/{row_id}.wav",
        "offset": 0.0,
        "duration_s": duration,
        "text": text,
        "pred_text": pred if ok else None,
        "raw_text": pred,
        "status": status,
        "error_class": None if ok else (error_class or "EngineError"),
        "error_message": None if ok else f"{error_class or 'EngineError'}: injected failure on {row_id}",
        "attempts": attempts,
        "engine": "simulated",
        "model_id": "Qwen2-Audio-7B-Instruct",
        "device": device,
        "node": node,
        "prompt": "Transcribe.",
        "n_prompt_tokens": 40,
        "n_audio_tokens": int(duration * 25),
        "n_new_tokens": n_new if ok else 0,
        "finish_reason": finish if ok else "error",
        "ttft_s": ttft if ok else None,
        "decode_s": decode if ok else None,
        "tokens_per_s": (n_new - 1) / decode if ok and decode > 0 else None,
        "total_s": total,
        "rtf": total / duration,
        "queued_at": T0,
        "started_at": T0 + start,
        "finished_at": T0 + start + total,
        "n_chunks": 1,
    }


def segment(start: float, end: float, text: str | None, *, confidence: float | None = 0.9,
            language: str | None = None, status: str = "ok", finish: str = "eos", n_tokens: int = 8) -> dict:
    """One element of a result row's `segments` (workers/record.py SEGMENT_FIELDS)."""
    ok = status == "ok"
    logprob = None if confidence is None else math.log(confidence)
    return {"start_s": start, "end_s": end, "text": text if ok else None, "raw_text": text, "confidence": confidence,
            "mean_logprob": logprob, "min_logprob": None if logprob is None else 2 * logprob,
            "n_tokens": n_tokens if ok else 0, "language": language, "finish_reason": finish if ok else "error",
            "status": status}


def write_run(folder: Path, rows: list[dict], meta: dict | None = None) -> Path:
    """rows: result rows (dicts); `segments` / `skipped`, where given, are typed as the record types them."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    for name in ("segments", "skipped"):
        if name in table.column_names:
            typed = pa.array([r.get(name) for r in rows], PART_SCHEMA.field(name).type)
            table = table.set_column(table.column_names.index(name), name, typed)
    for name in ("queued_at", "started_at", "finished_at"):  # the runner stores timestamps as Arrow timestamps
        i = table.column_names.index(name)
        micros = pa.array([None if r[name] is None else round(r[name] * 1e6) for r in rows], pa.int64())
        table = table.set_column(i, name, micros.cast(pa.timestamp("us", tz="UTC")))
    pq.write_table(table, folder / "results.parquet")
    (folder / "run.json").write_text(json.dumps(meta or {"engine": "simulated", "model_id": "Qwen2-Audio-7B-Instruct"}))
    return folder
