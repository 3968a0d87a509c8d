"""The JSON sidecar written next to every bmodel we compile (`<name>.bmodel.json`).

Pure standard library: the converter (Python 3.10 compile venv) writes it, tests (project venv) read it. The
runtime's own check against a model folder lives in the bm1684x engine; this module defines the format
(SCHEMA), builds a sidecar from a model config, and validates the structure.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

FORMAT = "transcribe-batch/bmodel-sidecar"
FORMAT_VERSION = 1
QUANTIZATIONS = ("bf16", "f16", "w8bf16", "w8f16", "w4bf16", "w4f16")
LM_HEADS = ("greedy", "logits")
CHIPS = ("bm1684x", "bm1688")

# field -> (type(s), meaning). Every field is required; null is allowed only where the type says so.
SCHEMA: dict[str, tuple[tuple[type, ...], str]] = {
    "format": ((str,), f'always "{FORMAT}"'),
    "format_version": ((int,), f"{FORMAT_VERSION}; bumped on incompatible changes"),
    "bmodel": ((str,), "file name of the bmodel this sidecar describes (same folder)"),
    "bmodel_bytes": ((int,), "size of that file; a mismatch means the pair was split up"),
    "bmodel_sha256": ((str,), "sha256 of that file"),
    "model_id": ((str,), "checkpoint folder name, e.g. Qwen2-Audio-7B-Instruct"),
    "architecture": ((str,), "config.json architectures[0]"),
    "seqlen": ((int,), "SEQLEN: KV-cache slots = longest prompt + answer"),
    "max_input_length": ((int,), "prefill width (== seqlen unless compiled otherwise)"),
    "hidden_size": ((int,), "text_config.hidden_size"),
    "vocab_size": ((int,), "text_config.vocab_size (lm_head rows; may exceed the tokenizer)"),
    "num_layers": ((int,), "text_config.num_hidden_layers = number of block_i / block_cache_i nets"),
    "num_attention_heads": ((int,), "text_config.num_attention_heads"),
    "num_key_value_heads": ((int,), "text_config.num_key_value_heads"),
    "head_dim": ((int,), "hidden_size / num_attention_heads"),
    "audio_token_index": ((int,), "config.audio_token_index (id of <|AUDIO|>)"),
    "n_mels": ((int,), "audio_config.num_mel_bins = audio net input dim 1"),
    "mel_frames": ((int,), "mel window frames = 2 * max_source_positions = audio net input dim 2"),
    "audio_positions": ((int,), "max_source_positions = audio_mask width (post-conv frames)"),
    "max_audio_tokens": ((int,), "audio net output rows = max <|AUDIO|> tokens per window"),
    "audio_mask_value": ((float, int), "additive mask value for padded post-conv frames (0 = valid)"),
    "quantization": ((str,), "one of " + ", ".join(QUANTIZATIONS)),
    "q_group_size": ((int, type(None)), "weight group size for w4/w8 modes, null for float modes"),
    "half_precision": ((str,), "bf16 or f16: dtype of embeddings, hidden states, KV cache, audio output"),
    "lm_head": ((str,), "greedy: lm_head returns the argmax token id [1,1] int32; "
                        "logits: lm_head returns scores [1,vocab] and a static greedy_head net does the argmax"),
    "chip": ((str,), "one of " + ", ".join(CHIPS)),
    "nets": ((list,), "net names in the bmodel"),
    "tools": ((dict,), "versions: tpu_mlir, transformers, torch, converter"),
    "created": ((str,), "UTC ISO-8601 time of the build"),
}

# field -> (type(s), meaning, value assumed when absent): fields added after version 1 was first written.
OPTIONAL: dict[str, tuple[tuple[type, ...], str, object]] = {
    "batch": ((int,), "decode rows B: embedding_cache, block_cache_i and lm_head take B sequences at once "
                      "(prefill and audio stay one sequence); 1 = unbatched", 1),
    "token_logprob": ((str,), "head: the net that picks the token (greedy lm_head, or greedy_head) also returns the "
                              "chosen token's log-softmax as f32 [B,1] (second output); none: ids only (older builds)",
                      "none"),
}


class SidecarError(ValueError):
    pass


def sidecar_path(bmodel: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(bmodel)}.json")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _get(cfg: dict, *keys, default=None):
    for k in keys:
        if isinstance(cfg, dict) and k in cfg and cfg[k] is not None:
            return cfg[k]
    return default


def build_sidecar(bmodel: str | os.PathLike, config: dict, *, model_id: str, seqlen: int, max_input_length: int,
                  quantization: str, q_group_size: int | None, lm_head: str, chip: str, nets: list[str],
                  tools: dict, audio_mask_value: float, batch: int = 1, token_logprob: str = "none",
                  created: str | None = None) -> dict:
    """Sidecar for `bmodel` compiled from a Qwen2-Audio `config` (config.json as a dict, defaults filled)."""
    text = config["text_config"]
    audio = config["audio_config"]
    hidden = int(text["hidden_size"])
    heads = int(text["num_attention_heads"])
    positions = int(audio["max_source_positions"])
    bmodel = Path(bmodel)
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bmodel": bmodel.name,
        "bmodel_bytes": bmodel.stat().st_size,
        "bmodel_sha256": sha256_file(bmodel),
        "model_id": model_id,
        "architecture": (config.get("architectures") or ["Qwen2AudioForConditionalGeneration"])[0],
        "seqlen": int(seqlen),
        "max_input_length": int(max_input_length),
        "hidden_size": hidden,
        "vocab_size": int(text["vocab_size"]),
        "num_layers": int(text["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_get(text, "num_key_value_heads", default=heads)),
        "head_dim": int(_get(text, "head_dim", default=hidden // heads)),
        "audio_token_index": int(_get(config, "audio_token_index", "audio_token_id")),
        "n_mels": int(audio["num_mel_bins"]),
        "mel_frames": 2 * positions,
        "audio_positions": positions,
        "max_audio_tokens": positions // 2,
        "audio_mask_value": float(audio_mask_value),
        "quantization": quantization,
        "q_group_size": int(q_group_size) if quantization.startswith("w") else None,
        "half_precision": "bf16" if "bf16" in quantization else "f16",
        "lm_head": lm_head,
        "batch": int(batch),
        "token_logprob": token_logprob,
        "chip": chip,
        "nets": list(nets),
        "tools": dict(tools),
        "created": created or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    validate_sidecar(data)
    return data


def validate_sidecar(data: dict, *, where: str = "sidecar") -> dict:
    """Check structure and internal consistency; raises SidecarError naming the field."""
    if not isinstance(data, dict):
        raise SidecarError(f"{where}: expected a JSON object")
    missing = [k for k in SCHEMA if k not in data]
    if missing:
        raise SidecarError(f"{where}: missing field(s) {', '.join(missing)}")
    for key, (types, meaning) in SCHEMA.items():
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise SidecarError(f"{where}: field {key!r} = {value!r} has the wrong type ({meaning})")
    for key, (types, meaning, _) in OPTIONAL.items():
        value = data.get(key)
        if key in data and (isinstance(value, bool) or not isinstance(value, types)):
            raise SidecarError(f"{where}: field {key!r} = {value!r} has the wrong type ({meaning})")
    if data["format"] != FORMAT:
        raise SidecarError(f"{where}: field 'format' is {data['format']!r}, expected {FORMAT!r}")
    if data["format_version"] != FORMAT_VERSION:
        raise SidecarError(f"{where}: format_version {data['format_version']} is not supported "
                           f"(this reader knows {FORMAT_VERSION})")
    checks = [
        ("quantization", data["quantization"] in QUANTIZATIONS, f"one of {', '.join(QUANTIZATIONS)}"),
        ("lm_head", data["lm_head"] in LM_HEADS, f"one of {', '.join(LM_HEADS)}"),
        ("chip", data["chip"] in CHIPS, f"one of {', '.join(CHIPS)}"),
        ("half_precision", data["half_precision"] == ("bf16" if "bf16" in data["quantization"] else "f16"),
         "matching the quantization"),
        ("q_group_size", (data["q_group_size"] is None) == (not data["quantization"].startswith("w")),
         "set exactly for w4/w8 modes"),
        ("mel_frames", data["mel_frames"] == 2 * data["audio_positions"], "2 * audio_positions"),
        ("max_audio_tokens", data["max_audio_tokens"] == data["audio_positions"] // 2, "audio_positions // 2"),
        ("head_dim", data["head_dim"] * data["num_attention_heads"] == data["hidden_size"],
         "hidden_size / num_attention_heads"),
        ("max_input_length", 0 < data["max_input_length"] <= data["seqlen"], "between 1 and seqlen"),
        ("seqlen", data["seqlen"] >= 16, "at least 16"),
    ]
    if "batch" in data:
        checks.append(("batch", data["batch"] >= 1, "at least 1"))
    if "token_logprob" in data:
        checks.append(("token_logprob", data["token_logprob"] in ("head", "none"), "head or none"))
    for field, ok, expect in checks:
        if not ok:
            raise SidecarError(f"{where}: field {field!r} = {data[field]!r} is invalid (expected {expect})")
    want = {"embedding", "embedding_cache", "lm_head", "audio"}
    want |= {f"block_{i}" for i in range(data["num_layers"])} | {f"block_cache_{i}" for i in range(data["num_layers"])}
    if data["lm_head"] == "logits":
        want.add("greedy_head")
    absent = sorted(want - set(data["nets"]))
    if absent:
        raise SidecarError(f"{where}: field 'nets' lacks {', '.join(absent)}")
    return data


def batch_of(data: dict) -> int:
    """Decode rows the sidecar's bmodel was compiled for (1 for sidecars written before the field existed)."""
    return int(data.get("batch", OPTIONAL["batch"][2]))


def write_sidecar(bmodel: str | os.PathLike, data: dict) -> Path:
    validate_sidecar(data)
    path = sidecar_path(bmodel)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def read_sidecar(bmodel: str | os.PathLike, *, check_file: bool = True) -> dict:
    """Read and validate `<bmodel>.json`; with check_file, also that it still describes the bmodel's bytes."""
    path = sidecar_path(bmodel)
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SidecarError(f"{path}: no sidecar next to {bmodel}") from None
    except json.JSONDecodeError as e:
        raise SidecarError(f"{path}: not valid JSON ({e})") from None
    validate_sidecar(data, where=str(path))
    if check_file:
        size = Path(bmodel).stat().st_size
        if size != data["bmodel_bytes"]:
            raise SidecarError(f"{path}: describes a {data['bmodel_bytes']}-byte bmodel, {bmodel} has {size} bytes")
    return data
