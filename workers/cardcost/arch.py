"""Model architectures as a card cost model needs them: the weights a decode step reads, the FLOPs of a prefill and of
an audio encoder. Read from a model folder's config.json (Hugging Face's keys), or from a named preset that holds the
same keys (the published configs, cited in benchmarks/README.md)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

# transformers' Qwen2Config defaults: Qwen2-Audio's text_config leaves these out of its config.json
QWEN2_DEFAULTS = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "intermediate_size": 22016}
MEL_FRAMES_PER_S = 100  # log-mel frames per second (10 ms hop) for both encoders
AUT_ROWS_PER_S = 13  # Qwen3-ASR's AuT encoder: 13 rows a second (conv ×8 per 100-frame chunk: 100 → 50 → 25 → 13)
PROMPT_TEXT_TOKENS = 30  # chat template and instruction around the audio rows, where no tokenizer counted them


class ArchitectureError(ValueError):
    """A config.json (or preset name) the card cost model cannot read; the message names the file and the field."""


@dataclass(frozen=True)
class Decoder:
    """A decoder-only transformer's shapes (config.json `text_config`)."""

    layers: int  # num_hidden_layers
    hidden: int  # hidden_size
    heads: int  # num_attention_heads
    kv_heads: int  # num_key_value_heads (= heads without grouped-query attention)
    head_dim: int  # hidden / heads unless the config says otherwise (Qwen3: 128 at every size)
    intermediate: int  # the MLP's inner width (SwiGLU: gate and up are both this wide)
    vocab: int  # rows of the embedding and the lm_head
    mlp_matrices: int = 3  # SwiGLU gate, up, down

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """Matmul weights of one layer: q and o (hidden × heads·head_dim), k and v (hidden × kv_dim), the MLP."""
        attention = 2 * self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim
        return attention + self.mlp_matrices * self.hidden * self.intermediate

    @property
    def params(self) -> int:
        """Every layer's matmul weights: what a decode step reads besides the lm_head (norms and biases are < 0.1%)."""
        return self.layers * self.layer_params

    @property
    def head_params(self) -> int:
        return self.vocab * self.hidden

    def kv_bytes(self, positions: int, dtype_bytes: int = 2) -> int:
        """K and V of every layer for `positions` history slots (bf16)."""
        return 2 * self.layers * positions * self.kv_dim * dtype_bytes

    def prefill_flops(self, tokens: int) -> tuple[float, float]:
        """(matmul FLOPs, attention FLOPs) of a prefill over `tokens` positions and the lm_head for the last one.
        Attention counts QKᵀ and PV over every position pair (a static net masks, it does not skip)."""
        return (2.0 * tokens * self.params + 2.0 * self.head_params,
                4.0 * self.layers * tokens * tokens * self.q_dim)

    def step_flops(self, kv_len: int) -> tuple[float, float]:
        """(matmul FLOPs, attention FLOPs) of one row's decode step attending over `kv_len` slots."""
        return 2.0 * (self.params + self.head_params), 4.0 * self.layers * kv_len * self.q_dim


@dataclass(frozen=True)
class Encoder:
    """A transformer audio encoder run as a static net, one launch per window of `window_s` seconds (the last one
    padded): Qwen2-Audio/Whisper one 30 s window of 1500 positions, Qwen3-ASR one n_window_infer window of 13 rows per
    second."""

    layers: int  # encoder_layers
    d_model: int
    ffn: int  # encoder_ffn_dim
    window_s: float  # audio seconds per launch
    rows: int  # positions the layers run over per launch
    attention_rows: int  # positions each row attends to (the whole window, or an attention window inside it)
    stem_flops: float  # per launch: conv front end and the projections around the layers
    stem_params: int  # their weights

    @property
    def params(self) -> int:
        return self.layers * (4 * self.d_model ** 2 + 2 * self.d_model * self.ffn) + self.stem_params

    def windows(self, audio_s: float) -> int:
        return max(1, math.ceil(audio_s / self.window_s - 1e-9))

    def flops(self, audio_s: float) -> tuple[float, float]:
        """(matmul FLOPs, attention FLOPs) of encoding `audio_s` seconds (whole windows: the padding is computed)."""
        n = self.windows(audio_s)
        linear = 2.0 * self.rows * self.layers * (4 * self.d_model ** 2 + 2 * self.d_model * self.ffn) + self.stem_flops
        attention = 4.0 * self.layers * self.rows * self.attention_rows * self.d_model
        return n * linear, n * attention


@dataclass(frozen=True)
class Architecture:
    """What the card runs for one model: its decoder and (for audio LLMs) its audio encoder."""

    name: str
    decoder: Decoder
    encoder: Encoder | None = None
    tied: bool = False  # embedding = lm_head (one copy in device memory)
    audio_tokens_per_s: float = 25.0  # prompt rows per second of audio (Qwen2-Audio 25, at most 750; Qwen3-ASR 13)
    max_audio_tokens: int | None = 750  # Qwen2-Audio: one 30 s window per request

    def prompt_len(self, audio_s: float, text_tokens: int | None = None) -> int:
        """Prompt positions of a request: its audio rows and the text around them (an estimate where no tokenizer
        counted them)."""
        rows = int(math.ceil(max(0.0, audio_s) * self.audio_tokens_per_s - 1e-9))
        if self.max_audio_tokens:
            rows = min(rows, self.max_audio_tokens)
        return rows + (PROMPT_TEXT_TOKENS if text_tokens is None else text_tokens)


def whisper_encoder(d_model: int, layers: int, ffn: int, mel_bins: int, positions: int = 1500,
                    out_dim: int | None = None) -> Encoder:
    """Whisper's encoder (also Qwen2-Audio's): conv1 (mel → d, k3) over 2·positions frames (100 per second: 1500
    positions = a 30 s window), conv2 (d → d, k3, stride 2), `layers` over `positions`, then for Qwen2-Audio avg-pool
    ×2 and a d → out_dim projector."""
    stem = 2.0 * mel_bins * d_model * 3 * 2 * positions + 2.0 * d_model * d_model * 3 * positions
    params = mel_bins * d_model * 3 + d_model * d_model * 3
    if out_dim:
        stem += 2.0 * d_model * out_dim * positions // 2
        params += d_model * out_dim
    return Encoder(layers, d_model, ffn, 2 * positions / MEL_FRAMES_PER_S, positions, positions, stem, params)


def aut_encoder(d_model: int, layers: int, ffn: int, mel_bins: int, downsample: int, out_dim: int,
                window_frames: int) -> Encoder:
    """Qwen3-ASR's AuT encoder (qwen-asr modeling_qwen3_asr.Qwen3ASRAudioEncoder): per 100-frame chunk three 3×3
    stride-2 conv2d (1 → c → c → c channels, c = downsample_hidden_size), a linear c·mel/8 → d, `layers` over 13 rows
    per second attending within one window of `window_frames` (n_window_infer) frames, then d → d and d → out_dim."""
    window_s = window_frames / MEL_FRAMES_PER_S
    rows = int(round(AUT_ROWS_PER_S * window_s))
    chunks = window_s  # one 100-frame chunk per second
    c = downsample
    conv = (2.0 * 9 * c * (mel_bins // 2) * 50 + 2.0 * 9 * c * c * (mel_bins // 4) * 25
            + 2.0 * 9 * c * c * (mel_bins // 8) * 13)
    stem = chunks * conv + 2.0 * rows * (c * (mel_bins // 8) * d_model + d_model * d_model + d_model * out_dim)
    params = 9 * c + 2 * 9 * c * c + c * (mel_bins // 8) * d_model + d_model * d_model + d_model * out_dim
    return Encoder(layers, d_model, ffn, window_s, rows, rows, stem, params)


def _int(cfg: dict, key: str, where: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ArchitectureError(f"{where}: field `{key}` is {value!r}, expected a positive integer")
    return value


def from_config(config: dict, name: str, where: str = "config.json") -> Architecture:
    """The architecture a config.json describes (model_type qwen2_audio or qwen3_asr)."""
    if not isinstance(config, dict):
        raise ArchitectureError(f"{where}: not a JSON object")
    model_type = config.get("model_type")
    if model_type == "qwen2_audio":
        text = {**QWEN2_DEFAULTS, **(config.get("text_config") or {})}
        audio = config.get("audio_config") or {}
        heads = _int(text, "num_attention_heads", f"{where} text_config")
        hidden = _int(text, "hidden_size", f"{where} text_config")
        dec = Decoder(_int(text, "num_hidden_layers", f"{where} text_config"), hidden, heads,
                      _int(text, "num_key_value_heads", f"{where} text_config", heads), hidden // heads,
                      _int(text, "intermediate_size", f"{where} text_config"),
                      _int(text, "vocab_size", f"{where} text_config", config.get("vocab_size")))
        a = f"{where} audio_config"
        enc = whisper_encoder(_int(audio, "d_model", a), _int(audio, "encoder_layers", a),
                              _int(audio, "encoder_ffn_dim", a), _int(audio, "num_mel_bins", a, 128),
                              _int(audio, "max_source_positions", a, 1500), out_dim=hidden)
        return Architecture(name, dec, enc, tied=bool(text.get("tie_word_embeddings", False)),
                            audio_tokens_per_s=enc.rows / 2 / enc.window_s, max_audio_tokens=enc.rows // 2)
    if model_type == "qwen3_asr":
        thinker = config.get("thinker_config") or {}
        text = thinker.get("text_config") or {}
        audio = thinker.get("audio_config") or {}
        t = f"{where} thinker_config.text_config"
        heads = _int(text, "num_attention_heads", t)
        hidden = _int(text, "hidden_size", t)
        dec = Decoder(_int(text, "num_hidden_layers", t), hidden, heads, _int(text, "num_key_value_heads", t, heads),
                      _int(text, "head_dim", t, hidden // heads), _int(text, "intermediate_size", t),
                      _int(text, "vocab_size", t))
        a = f"{where} thinker_config.audio_config"
        window = _int(audio, "n_window_infer", a, 2 * _int(audio, "n_window", a, 50))
        enc = aut_encoder(_int(audio, "d_model", a), _int(audio, "encoder_layers", a),
                          _int(audio, "encoder_ffn_dim", a), _int(audio, "num_mel_bins", a, 128), _int(audio, "downsample_hidden_size", a, 480),
                          _int(audio, "output_dim", a, hidden), window)
        return Architecture(name, dec, enc, tied=bool(text.get("tie_word_embeddings", True)),
                            audio_tokens_per_s=AUT_ROWS_PER_S, max_audio_tokens=None)
    raise ArchitectureError(f"{where}: field `model_type` is {model_type!r}; the card cost model knows qwen2_audio and "
                            "qwen3_asr")


def from_model_dir(model_dir: str | os.PathLike) -> Architecture:
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchitectureError(f"{path}: not found (the card cost model reads the model's shapes from it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArchitectureError(f"{path}: cannot be read as JSON ({e})") from None
    return from_config(config, Path(model_dir).name, str(path))


# The released configs' shape fields (Hugging Face Qwen/Qwen2-Audio-7B-Instruct, Qwen/Qwen3-ASR-1.7B,
# Qwen/Qwen3-ASR-0.6B config.json; benchmarks/README.md cites them): the same keys, read by the same code.
PRESETS: dict[str, dict] = {
    "qwen2-audio-7b": {
        "model_type": "qwen2_audio",
        "audio_config": {"d_model": 1280, "encoder_layers": 32, "encoder_ffn_dim": 5120, "num_mel_bins": 128,
                         "max_source_positions": 1500},
        "text_config": {"intermediate_size": 11008, "vocab_size": 156032},
    },
    "qwen3-asr-1.7b": {
        "model_type": "qwen3_asr",
        "thinker_config": {
            "audio_config": {"d_model": 1024, "encoder_layers": 24, "encoder_ffn_dim": 4096, "num_mel_bins": 128,
                             "downsample_hidden_size": 480, "output_dim": 2048, "n_window": 50, "n_window_infer": 800},
            "text_config": {"hidden_size": 2048, "num_hidden_layers": 28, "num_attention_heads": 16,
                            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 6144, "vocab_size": 151936,
                            "tie_word_embeddings": True},
        },
    },
    "qwen3-asr-0.6b": {
        "model_type": "qwen3_asr",
        "thinker_config": {
            "audio_config": {"d_model": 896, "encoder_layers": 18, "encoder_ffn_dim": 3584, "num_mel_bins": 128,
                             "downsample_hidden_size": 480, "output_dim": 1024, "n_window": 50, "n_window_infer": 800},
            "text_config": {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
                            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072, "vocab_size": 151936,
                            "tie_word_embeddings": True},
        },
    },
}


def preset(name: str) -> Architecture:
    key = name.strip().lower()
    if key not in PRESETS:
        raise ArchitectureError(f"unknown card model {name!r}; known: {', '.join(PRESETS)} (or give --model-dir)")
    return from_config(PRESETS[key], key, f"preset {key}")
