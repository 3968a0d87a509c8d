"""Qwen2-Audio -> BM1684X nets: the text side of audio_llm_converter.AudioLlmConverter (tpu-mlir's LlmConverter,
batched decode, log-probability heads) pointed at the checkpoint's language-model weights, plus one `audio` net:
Whisper-style encoder (conv1, GELU, conv2 stride 2, GELU, + learned positions, pre-LN layers with an additive
key-padding mask) -> AvgPool1d(2) -> layer_norm -> multi_modal_projector.

Audio net I/O (address by index; names change with the quantization mode):
  in 0  mel         F32  [1, n_mels, 2 * max_source_positions]   log-mel, WhisperFeatureExtractor(padding="max_length")
  in 1  audio_mask  F32  [1, max_source_positions]               additive key mask per post-conv frame:
                                                                 0 for j < (L - 1) // 2 + 1 (L = valid mel frames),
                                                                 AUDIO_MASK_VALUE after
  out 0 audio_embeds BF16/F16 [1, max_source_positions // 2, hidden]  rows 0..n-1 (n = ((L-1)//2+1 - 2)//2 + 1)
                                                                 replace the n <|AUDIO|> token embeddings in order
"""

from __future__ import annotations

import numpy as np

import mlir.dialects.top as top  # noqa: E402  (tpu-mlir's python path is set up by `import tpu_mlir`)

from audio_llm_converter import AUDIO_MASK_VALUE, AudioLlmConverter, text_model_info  # noqa: F401
from llm.LlmInfo import ActType, LlmType
from transform.MLIRImporter import MLIRImporter

# Checkpoint key layouts: the released checkpoint (and transformers < 5.20 save_pretrained) use the first,
# newer transformers save the second.
_LAYOUTS = [
    {"text": "language_model.model", "lm_head": "language_model.lm_head", "audio": "audio_tower",
     "projector": "multi_modal_projector.linear"},
    {"text": "model.language_model", "lm_head": "lm_head", "audio": "model.audio_tower",
     "projector": "model.multi_modal_projector.linear"},
]


def detect_layout(is_exist) -> dict:
    for layout in _LAYOUTS:
        if is_exist(f"{layout['text']}.embed_tokens.weight") and is_exist(f"{layout['audio']}.conv1.weight"):
            return layout
    raise RuntimeError("checkpoint is not a Qwen2-Audio checkpoint: found neither "
                       + " nor ".join(f"{l['text']}.embed_tokens.weight + {l['audio']}.conv1.weight" for l in _LAYOUTS))


class Qwen2AudioConverter(AudioLlmConverter):

    def load_pretrained(self, config):
        super().load_pretrained(config)
        self.layout = detect_layout(self.model.is_exist)
        self.model_info = text_model_info(self.layout["text"], self.layout["lm_head"])
        self.llm_config = config.text_config
        self.llm_type = LlmType.QWEN2
        self.set_text_dtype()
        self.audio_config = config.audio_config

    # ---- audio encoder + pool + norm + projector ----
    def audio_dims(self):
        a = self.audio_config
        n_pos = a.max_source_positions
        return {
            "n_mels": a.num_mel_bins, "frames": 2 * n_pos, "positions": n_pos, "rows": n_pos // 2,
            "d_model": a.d_model, "heads": a.encoder_attention_heads, "ffn": a.encoder_ffn_dim,
            "layers": a.encoder_layers, "act": a.activation_function,
        }

    def gen_audio_mlir(self):
        d = self.audio_dims()
        n_mels, frames, n, rows = d["n_mels"], d["frames"], d["positions"], d["rows"]
        dm, heads, ffn = d["d_model"], d["heads"], d["ffn"]
        ap = self.layout["audio"]
        proj = self.layout["projector"]
        conv1, conv2 = f"{ap}.conv1", f"{ap}.conv2"
        pos = f"{ap}.embed_positions"
        ln_post = f"{ap}.layer_norm"
        npz = "audio_top_weights.npz"
        name = "audio"

        weights = {}
        self.set_common_weight(conv1, weights)
        self.set_common_weight(conv2, weights)
        weights[pos + ".weight"] = self.model.read(pos + ".weight").reshape(1, n, dm)
        self.set_common_weight(ln_post, weights)
        self.set_linear_weight(proj, weights)
        self.set_encoder_layer_weights(ap, d["layers"], weights)
        np.savez(npz, **weights)
        del weights

        mlir = MLIRImporter([[1, n_mels, frames], [1, n]], [[1, rows, self.hidden_size]], name, self.platform,
                            ["F32", "F32"], weight_file=f"../{npz}")
        ip = mlir.insert_point
        T = mlir.get_tensor_type
        L = lambda s: self.get_loc(s, mlir)  # noqa: E731

        mel = mlir.create_input_op(L("mel"), 0)
        key_mask = mlir.create_input_op(L("audio_mask"), 1)
        mask = top.ReshapeOp(T([1, 1, 1, n]), key_mask, loc=L("audio_mask.reshape"), ip=ip).output
        mask = top.TileOp(T([1, 1, n, n]), mask, tile=[1, 1, n, 1], loc=L("audio_mask.tile"), ip=ip).output

        x = top.ConvOp(T([1, dm, frames]), mel, mlir.create_weight_op(conv1 + ".weight", [dm, n_mels, 3]),
                       mlir.create_weight_op(conv1 + ".bias", [dm]), kernel_shape=[3, 1], strides=[1, 1],
                       dilations=[1, 1], pads=[1, 0, 1, 0], loc=L(conv1), ip=ip).output
        x = self.activate(mlir, x, ActType.GELU, conv1)
        x = top.ConvOp(T([1, dm, n]), x, mlir.create_weight_op(conv2 + ".weight", [dm, dm, 3]),
                       mlir.create_weight_op(conv2 + ".bias", [dm]), kernel_shape=[3, 1], strides=[2, 1],
                       dilations=[1, 1], pads=[1, 0, 1, 0], loc=L(conv2), ip=ip).output
        x = self.activate(mlir, x, ActType.GELU, conv2)
        x = top.PermuteOp(T([1, n, dm]), x, order=[0, 2, 1], loc=L(conv2 + ".permute"), ip=ip).output
        x = top.AddOp(T([1, n, dm]), [x, mlir.create_weight_op(pos + ".weight", [1, n, dm])], loc=L(pos),
                      ip=ip).output

        x = self.encoder_layers(mlir, x, ap, layers=d["layers"], rows=n, d_model=dm, heads=heads, ffn=ffn,
                                act=d["act"], mask=mask)

        x = top.PermuteOp(T([1, dm, n]), x, order=[0, 2, 1], loc=L(f"{ap}.pool.permute1"), ip=ip).output
        x = top.AvgPoolOp(T([1, dm, rows]), x, kernel_shape=[2], strides=[2], pads=[0, 0], loc=L(f"{ap}.avg_pooler"),
                          ip=ip).output
        x = top.PermuteOp(T([1, rows, dm]), x, order=[0, 2, 1], loc=L(f"{ap}.pool.permute2"), ip=ip).output
        x = self.layer_norm(mlir, x, ln_post, eps=1e-5)
        x = self.linear(mlir, proj, x, [dm, self.hidden_size], [1, rows, self.hidden_size])
        mlir.create_return_op([x])
        self.save_mlir_module(mlir, name)

