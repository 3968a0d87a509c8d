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
    "head_dim": ((int,), "text_config.head_dim (Qwen2-Audio: hidden_size / num_attention_heads)"),
    "audio_token_index": ((int,), "id of the audio placeholder token (Qwen2-Audio: config.audio_token_index "
                                  "<|AUDIO|>; Qwen3-ASR: thinker_config.audio_token_id <|audio_pad|>)"),
    "n_mels": ((int,), "audio_config.num_mel_bins = the audio net's mel bins"),
    "mel_frames": ((int,), "mel frames one audio-net launch takes (Qwen2-Audio: the window, 2 * max_source_positions; "
                           "Qwen3-ASR: n_window_infer = audio_chunks_per_window * audio_chunk_frames)"),
    "audio_positions": ((int,), "audio_mask width (Qwen2-Audio: max_source_positions, post-conv frames; Qwen3-ASR: "
                                "the window's rows)"),
    "max_audio_tokens": ((int,), "audio net output rows = max audio tokens per launch"),
    "audio_mask_value": ((float, int), "additive value of a hidden mask position (0 = visible): the runtime fills the "
                                       "audio net's key mask and the text nets' prefill/decode masks with it, stored "
                                       "in each mask's dtype (-10000, tpu-mlir's convention; bf16 -9984)"),
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
    # absent in sidecars written before qwen3_asr support, all by the Qwen2-Audio converter (the format's checks
    # below assume that); the bm1684x engine does not: it judges such a bmodel by its audio net's geometry
    "model_type": ((str,), "config.json model_type of the checkpoint: qwen2_audio or qwen3_asr", "qwen2_audio"),
    "audio_chunk_frames": ((int,), "Qwen3-ASR: mel frames per encoder chunk (2 * audio_config.n_window)", None),
    "audio_chunks_per_window": ((int,), "Qwen3-ASR: chunks per attention window (n_window_infer / chunk frames) = "
                                        "chunks per audio-net launch", None),
    "audio_rows_per_chunk": ((int,), "Qwen3-ASR: audio tokens of a full chunk (three stride-2 convolutions)", None),
}
MODEL_TYPES = ("qwen2_audio", "qwen3_asr")


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
    """Sidecar for `bmodel` compiled from `config` (config.json as a dict: Qwen2-Audio with defaults filled, or
    Qwen3-ASR's thinker_config layout)."""
    model_type = config.get("model_type", "qwen2_audio")
    if model_type == "qwen3_asr":
        thinker = config["thinker_config"]
        text, audio = thinker["text_config"], thinker["audio_config"]
        audio_token = thinker["audio_token_id"]
        chunk = 2 * int(audio["n_window"])
        chunks = int(audio["n_window_infer"]) // chunk
        rows = conv_out_len(conv_out_len(conv_out_len(chunk)))
        frames, positions, tokens = chunks * chunk, chunks * rows, chunks * rows
        per_family = {"audio_chunk_frames": chunk, "audio_chunks_per_window": chunks, "audio_rows_per_chunk": rows}
    else:
        text, audio = config["text_config"], config["audio_config"]
        audio_token = _get(config, "audio_token_index", "audio_token_id")
        positions = int(audio["max_source_positions"])
        frames, tokens = 2 * positions, positions // 2
        per_family = {}
    hidden = int(text["hidden_size"])
    heads = int(text["num_attention_heads"])
    bmodel = Path(bmodel)
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bmodel": bmodel.name,
        "bmodel_bytes": bmodel.stat().st_size,
        "bmodel_sha256": sha256_file(bmodel),
        "model_id": model_id,
        "architecture": (config.get("architectures") or ["Qwen2AudioForConditionalGeneration"])[0],
        "model_type": model_type,
        "seqlen": int(seqlen),
        "max_input_length": int(max_input_length),
        "hidden_size": hidden,
        "vocab_size": int(text["vocab_size"]),
        "num_layers": int(text["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_get(text, "num_key_value_heads", default=heads)),
        "head_dim": int(_get(text, "head_dim", default=hidden // heads)),
        "audio_token_index": int(audio_token),
        "n_mels": int(audio["num_mel_bins"]),
        "mel_frames": frames,
        "audio_positions": positions,
        "max_audio_tokens": tokens,
        **per_family,
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
    model_type = data.get("model_type", OPTIONAL["model_type"][2])
    checks = [
        ("quantization", data["quantization"] in QUANTIZATIONS, f"one of {', '.join(QUANTIZATIONS)}"),
        ("lm_head", data["lm_head"] in LM_HEADS, f"one of {', '.join(LM_HEADS)}"),
        ("chip", data["chip"] in CHIPS, f"one of {', '.join(CHIPS)}"),
        ("half_precision", data["half_precision"] == ("bf16" if "bf16" in data["quantization"] else "f16"),
         "matching the quantization"),
        ("q_group_size", (data["q_group_size"] is None) == (not data["quantization"].startswith("w")),
         "set exactly for w4/w8 modes"),
        ("model_type", model_type in MODEL_TYPES, "one of " + ", ".join(MODEL_TYPES)),
        ("max_input_length", 0 < data["max_input_length"] <= data["seqlen"], "between 1 and seqlen"),
        ("seqlen", data["seqlen"] >= 16, "at least 16"),
    ]
    if model_type == "qwen3_asr":
        missing = [k for k in ("audio_chunk_frames", "audio_chunks_per_window", "audio_rows_per_chunk")
                   if not isinstance(data.get(k), int)]
        if missing:
            raise SidecarError(f"{where}: a qwen3_asr sidecar needs field(s) {', '.join(missing)}")
        chunk, chunks, rows = (data[k] for k in ("audio_chunk_frames", "audio_chunks_per_window",
                                                 "audio_rows_per_chunk"))
        checks += [
            ("audio_rows_per_chunk", rows == conv_out_len(conv_out_len(conv_out_len(chunk))),
             "three stride-2 convolutions of audio_chunk_frames"),
            ("mel_frames", data["mel_frames"] == chunk * chunks, "audio_chunk_frames * audio_chunks_per_window"),
            ("max_audio_tokens", data["max_audio_tokens"] == rows * chunks,
             "audio_rows_per_chunk * audio_chunks_per_window"),
            ("audio_positions", data["audio_positions"] == rows * chunks, "the window's rows"),
        ]
    else:
        checks += [
            ("mel_frames", data["mel_frames"] == 2 * data["audio_positions"], "2 * audio_positions"),
            ("max_audio_tokens", data["max_audio_tokens"] == data["audio_positions"] // 2, "audio_positions // 2"),
            ("head_dim", data["head_dim"] * data["num_attention_heads"] == data["hidden_size"],
             "hidden_size / num_attention_heads"),
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


def conv_out_len(n: int) -> int:
    """Frames after one 3x3 stride-2 padding-1 convolution (Qwen3-ASR's audio front end)."""
    return (n - 1) // 2 + 1


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
