"""Qwen3-ASR (0.6B / 1.7B, qwen-asr's checkpoint layout) -> BM1684X nets.

Text side: audio_llm_converter.AudioLlmConverter (tpu-mlir's LlmConverter with the Qwen3 layer: q/k RMSNorm) over
`thinker.model.*`, the lm_head tied to the embedding unless the checkpoint has `thinker.lm_head`. Positions are plain
0..L-1: Qwen3-ASR's three MRoPE rows are equal for audio + text input, which makes its interleaved MRoPE plain RoPE.

Audio side: our own `audio` net, one launch per attention WINDOW of the reference encoder (qwen-asr
`Qwen3ASRAudioEncoder`): the features are cut into chunks of C = 2 * n_window frames, each chunk goes through three
3x3 stride-2 Conv2d + GELU, `conv_out` and sinusoidal positions 0..R-1 (R = rows of a full chunk = 13 for C = 100);
the chunks' valid rows are concatenated and attend within windows of K = n_window_infer // C chunks; then ln_post,
proj1, GELU, proj2. tpu-mlir's own Qwen3AsrConverter runs one chunk per launch with no mask, so its rows see one
chunk and the padding (README §7); here one launch is one window with a key-padding mask, token-exact with the
reference.

Audio net I/O (address by index; names change with the quantization mode):
  in 0  mel        F32 [K, 1, n_mels, C]  the window's chunks, zero-padded (a window may hold fewer than K chunks)
  in 1  conv1_keep F32 [K, 1, 1, C1]      1/0 per conv1 output frame (C1 = (C-1)//2+1); in 2 likewise after conv2
  in 2  conv2_keep F32 [K, 1, 1, C2]      (C2 = (C1-1)//2+1). All ones, except for a clip of ONE partial chunk of w
                                          frames: 1 below (w-1)//2+1 (resp. its conv), 0 after. The reference pads a
                                          clip's chunks to the longest one, so only such a clip's convolutions see
                                          the end of the sequence instead of zero-padded frames
  in 3  audio_mask F32 [1, K * R]         additive key mask per row: 0 for the window's valid rows (a prefix:
                                          only the clip's last chunk is partial), AUDIO_MASK_VALUE after
  out 0 audio_embeds F16/BF16 [1, K * R, hidden]  the valid prefix replaces the window's audio pad tokens in order
"""

from __future__ import annotations

import numpy as np
import torch

import mlir.dialects.top as top  # noqa: E402  (tpu-mlir's python path is set up by `import tpu_mlir`)

from audio_llm_converter import AUDIO_MASK_VALUE, AudioLlmConverter, text_model_info  # noqa: F401
from llm.LlmInfo import ActType, LlmType
from sidecar import conv_out_len
from transform.MLIRImporter import MLIRImporter

TEXT, LM_HEAD, AUDIO = "thinker.model", "thinker.lm_head", "thinker.audio_tower"


def sinusoid_positions(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """qwen-asr's SinusoidsPositionEmbedding table [length, channels] (computed the same way, in torch float32)."""
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2).float())
    scaled = torch.arange(length)[:, np.newaxis] * inv[np.newaxis, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1).numpy()


def audio_geometry(audio_config) -> dict:
    """Chunk, window and row counts of the audio net for a Qwen3-ASR audio_config."""
    a = audio_config
    chunk = 2 * int(a.n_window)
    if int(a.n_window_infer) % chunk:
        raise ValueError(f"audio_config.n_window_infer {a.n_window_infer} is not a multiple of 2 * n_window {chunk}")
    c1 = conv_out_len(chunk)
    c2 = conv_out_len(c1)
    rows = conv_out_len(c2)
    return {"chunk": chunk, "chunks": int(a.n_window_infer) // chunk, "c1": c1, "c2": c2, "rows": rows,
            "n_mels": int(a.num_mel_bins)}


class Qwen3AsrConverter(AudioLlmConverter):

    def load_pretrained(self, config):
        super().load_pretrained(config)
        thinker = config.thinker_config
        if not self.model.is_exist(f"{TEXT}.embed_tokens.weight") or not self.model.is_exist(
                f"{AUDIO}.conv2d1.weight"):
            raise RuntimeError(f"checkpoint is not a Qwen3-ASR checkpoint in qwen-asr's layout: expected "
                               f"{TEXT}.embed_tokens.weight and {AUDIO}.conv2d1.weight")
        self.model_info = text_model_info(TEXT, LM_HEAD)
        self.llm_config = thinker.text_config
        self.llm_type = LlmType.QWEN3
        if not self.llm_config.get("tie_word_embeddings") and not self.model.is_exist(f"{LM_HEAD}.weight"):
            self.llm_config.tie_word_embeddings = True  # no separate head in the checkpoint: it is the embedding
        self.set_text_dtype()
        self.audio_config = thinker.audio_config

    def gen_audio_mlir(self):
        a = self.audio_config
        g = audio_geometry(a)
        K, C, R, M = g["chunks"], g["chunk"], g["rows"], g["n_mels"]
        ds, dm, heads, ffn = a.downsample_hidden_size, a.d_model, a.encoder_attention_heads, a.encoder_ffn_dim
        n = K * R
        npz, name = "audio_top_weights.npz", "audio"
        convs = [f"{AUDIO}.conv2d{i}" for i in (1, 2, 3)]
        pos = f"{AUDIO}.positional_embedding"

        weights = {}
        for c in convs:
            self.set_common_weight(c, weights)
        self.set_linear_weight(f"{AUDIO}.conv_out", weights)
        weights[pos + ".weight"] = sinusoid_positions(R, dm).reshape(1, 1, R, dm)
        for lin in ("proj1", "proj2"):
            self.set_linear_weight(f"{AUDIO}.{lin}", weights)
        self.set_common_weight(f"{AUDIO}.ln_post", weights)
        self.set_encoder_layer_weights(AUDIO, a.encoder_layers, weights)
        np.savez(npz, **weights)
        del weights

        mlir = MLIRImporter([[K, 1, M, C], [K, 1, 1, g["c1"]], [K, 1, 1, g["c2"]], [1, n]],
                            [[1, n, self.hidden_size]], name, self.platform, ["F32"] * 4, weight_file=f"../{npz}")
        ip = mlir.insert_point
        T = mlir.get_tensor_type
        L = lambda s: self.get_loc(s, mlir)  # noqa: E731

        x = mlir.create_input_op(L("mel"), 0)
        keeps = [mlir.create_input_op(L("conv1_keep"), 1), mlir.create_input_op(L("conv2_keep"), 2)]
        key_mask = mlir.create_input_op(L("audio_mask"), 3)
        mask = top.ReshapeOp(T([1, 1, 1, n]), key_mask, loc=L("audio_mask.reshape"), ip=ip).output
        mask = top.TileOp(T([1, 1, n, n]), mask, tile=[1, 1, n, 1], loc=L("audio_mask.tile"), ip=ip).output

        cin, f, t = 1, M, C
        for i, conv in enumerate(convs):
            f, t = conv_out_len(f), conv_out_len(t)
            x = top.ConvOp(T([K, ds, f, t]), x, mlir.create_weight_op(conv + ".weight", [ds, cin, 3, 3]),
                           mlir.create_weight_op(conv + ".bias", [ds]), kernel_shape=[3, 3], strides=[2, 2],
                           dilations=[1, 1], pads=[1, 1, 1, 1], loc=L(conv), ip=ip).output
            x = self.activate(mlir, x, ActType.GELU, conv)
            if i < 2:  # the reference's end of sequence for a one-chunk clip (see the module docstring)
                x = top.MulOp(T([K, ds, f, t]), [x, keeps[i]], loc=L(conv + ".keep"), ip=ip).output
            cin = ds
        x = top.PermuteOp(T([K, R, ds, f]), x, order=[0, 3, 1, 2], loc=L(f"{AUDIO}.conv_out.permute"), ip=ip).output
        x = top.ReshapeOp(T([K, R, ds * f]), x, loc=L(f"{AUDIO}.conv_out.reshape"), ip=ip).output
        x = self.linear(mlir, f"{AUDIO}.conv_out", x, [ds * f, dm], [K, R, dm])
        x = top.ReshapeOp(T([1, K, R, dm]), x, loc=L(f"{AUDIO}.chunks"), ip=ip).output
        x = top.AddOp(T([1, K, R, dm]), [x, mlir.create_weight_op(pos + ".weight", [1, 1, R, dm])], loc=L(pos),
                      ip=ip).output
        x = top.ReshapeOp(T([1, n, dm]), x, loc=L(f"{AUDIO}.window"), ip=ip).output

        x = self.encoder_layers(mlir, x, AUDIO, layers=a.encoder_layers, rows=n, d_model=dm, heads=heads, ffn=ffn,
                                act=a.activation_function, mask=mask)

        x = self.layer_norm(mlir, x, f"{AUDIO}.ln_post", eps=1e-5)
        x = self.linear(mlir, f"{AUDIO}.proj1", x, [dm, dm], [1, n, dm])
        x = self.activate(mlir, x, a.activation_function, f"{AUDIO}.proj1")
        x = self.linear(mlir, f"{AUDIO}.proj2", x, [dm, self.hidden_size], [1, n, self.hidden_size])
        mlir.create_return_op([x])
        self.save_mlir_module(mlir, name)
