"""Qwen2-Audio -> BM1684X nets, built on tpu-mlir's own LlmConverter (imported only inside the compile venv).

Text nets come from LlmConverter (embedding, embedding_cache, block_i, block_cache_i, lm_head, and with logits
heads a static greedy_head).

Batched decode (`args.batch` = B > 1): tpu-mlir's own batch path builds `block_cache_i` for B rows (states
[B,1,H], position_ids [B,1], mask [B,1,1,SEQ], history K/V [B,SEQ,KV,D]; the attention sees the current token at
history slot SEQ-1). Its InsertOp for that slot does not work on tpu-mlir 1.30.2, so this class replaces it with
Slice + Concat and also returns the new K/V [B,1,KV,D], which the runtime copies to each row's position (see
`install_new_kv_outputs`). It also adds what that path leaves at batch 1: `embedding_cache` [B,1] and `lm_head` [B,H] -> [B,1] (or [B,vocab] +
`greedy_head` [B,vocab] -> [B,1]), so one launch of each net serves the whole batch, and per-row RoPE positions
(LlmConverter types the gathered cos/sin as one row). The prefill (`embedding`, `block_i`) and `audio` stay one
sequence, identical to a B=1 build. This class points LlmConverter at the checkpoint's language-model weights and
adds one `audio` net: Whisper-style encoder (conv1, GELU, conv2 stride 2, GELU, + learned positions, pre-LN layers
with an additive key-padding mask) -> AvgPool1d(2) -> layer_norm -> multi_modal_projector.

The audio net's weights go through MLIRImporter's .npz weight file, not ONNX, so the 32-layer, 1280-wide real
encoder (~1.3 GB in bf16, ~2.5 GB as an fp32 ONNX protobuf) never meets ONNX's 2 GB limit.

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
from mlir.ir import StringAttr
import re
import sys
import threading
import types

from llm.LlmConverter import LlmConverter
from llm.LlmInfo import ActType, LlmList, LlmType, ModelConfig, ModelInfo
from transform.MLIRImporter import MLIRImporter

AUDIO_MASK_VALUE = -10000.0

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


class Qwen2AudioConverter(LlmConverter):

    def __init__(self, args, config, loader=None):
        self.lm_head_kind = "logits" if args.do_sample else "greedy"
        super().__init__(args, config, loader=loader)
        # the prefill stays one sequence with [1, SEQ] positions, as in a batch-1 build (LlmConverter's batch path
        # would make them [1, 1, SEQ])
        self.position_shape = [1, self.max_input_length]
        self.all_gen_mlirs.append(self.gen_audio_mlir)
        if self.batch > 1:
            self.install_new_kv_outputs()
        self.all_compiles.append(self.compile_audio)

    def load_pretrained(self, config):
        super().load_pretrained(config)
        self.layout = detect_layout(self.model.is_exist)
        t = self.layout["text"]
        self.model_info = ModelInfo(
            ModelConfig(),
            weights={
                LlmList.LAYERS: f"{t}.layers",
                LlmList.EMBEDING: f"{t}.embed_tokens",
                LlmList.INPUT_LN: "input_layernorm",
                LlmList.Q_PROJ: "self_attn.q_proj",
                LlmList.Q_NORM: "self_attn.q_norm",
                LlmList.K_PROJ: "self_attn.k_proj",
                LlmList.K_NORM: "self_attn.k_norm",
                LlmList.V_PROJ: "self_attn.v_proj",
                LlmList.O_PROJ: "self_attn.o_proj",
                LlmList.POST_ATTN_LN: "post_attention_layernorm",
                LlmList.MLP_GATE: "mlp.gate_proj",
                LlmList.MLP_UP: "mlp.up_proj",
                LlmList.MLP_DOWN: "mlp.down_proj",
                LlmList.NORM: f"{t}.norm",
                LlmList.LMHEAD: self.layout["lm_head"],
            })
        self.llm_config = config.text_config
        self.llm_type = LlmType.QWEN2
        # The checkpoint is bf16; f16 builds are a deliberate choice, so let the requested mode decide.
        self.llm_config.dtype = "bfloat16" if "bf16" in self.quantize else "float16"
        self.audio_config = config.audio_config

    # ---- batched decode: per-row RoPE, new K/V as outputs, embedding_cache and lm_head for B rows ----
    def install_new_kv_outputs(self):
        """tpu-mlir's batched `block_cache_i` writes the new K/V only through an InsertOp at history slot SEQ-1,
        and that insert does not persist in the history input memory after the launch (probed on the simulator:
        slot SEQ-1 of the io_alone history reads back unchanged, zeros), so the runtime had nothing to move and
        the positions it "moved" held zeros. The batched decode nets here also return the new K/V [B,1,KV,D]
        (after RoPE), which the runtime copies to each row's position; the InsertOp still feeds the attention.
        LlmConverter builds those nets inside a nested function (from a thread pool), so its module's
        MLIRImporter is wrapped for this converter's lifetime: `block_cache_*` modules get the two extra outputs
        and return the K/V that `apply_rotary_pos` recorded for them."""
        module = sys.modules[LlmConverter.__module__]
        base, real_top = module.MLIRImporter, module.top
        batch, kv = self.batch, [self.batch, 1, self.num_key_value_heads, self.head_dim]
        new_kv = self._new_kv = {}
        current = threading.local()  # the block_cache module this thread is building

        def importer(input_shapes, output_shapes, name, *args, **kw):
            cache = batch > 1 and name.startswith("block_cache_")
            m = base(input_shapes, list(output_shapes) + [kv, kv] if cache else output_shapes, name, *args, **kw)
            if cache:
                ret = m.create_return_op
                m.create_return_op = lambda ops: ret(list(ops) + list(new_kv.pop(id(m))))
                current.m = m
            return m

        def insert_op(out_type, lhs, rhs, axis, offset, loc, ip):
            # history[:, :offset] ++ new along `axis`: the same value InsertOp means, built from ops that the
            # backend computes (its InsertOp leaves the attention reading the history's own slot SEQ-1)
            m, shape = current.m, list(out_type.shape)
            if offset != shape[axis] - 1 or list(rhs.type.shape)[axis] != 1:
                raise RuntimeError(f"batched block_cache: unexpected InsertOp offset {offset} for {shape}")
            name = re.search(r'"([^"]+)"', str(loc)).group(1)
            keep = shape[:axis] + [offset] + shape[axis + 1:]
            head = real_top.SliceOp(m.get_tensor_type(keep), lhs, m.none_op, m.none_op, m.none_op,
                                    offset=[0] * len(shape), steps=[1] * len(shape), ends=keep, axes=[],
                                    loc=self.get_loc(name + ".keep", m), ip=ip).output
            return types.SimpleNamespace(output=real_top.ConcatOp(out_type, [head, rhs], axis=axis, loc=loc,
                                                                  ip=ip).output)

        module.MLIRImporter = importer
        module.top = types.SimpleNamespace(**{k: getattr(real_top, k) for k in dir(real_top) if not k.startswith("__")})
        module.top.InsertOp = insert_op

    def apply_rotary_pos(self, mlir_gen, pos_op, q_op, k_op, rotary_cos: str, rotary_sin: str):
        rows, dim = pos_op.type.shape[0], pos_op.type.shape[-1]
        if rows == 1:
            return super().apply_rotary_pos(mlir_gen, pos_op, q_op, k_op, rotary_cos, rotary_sin)
        # the V reshape ("v_cache") is the op LlmConverter emitted just before asking for RoPE
        v_op = list(mlir_gen.insert_point.block.operations)[-1]
        if "v_cache" not in str(v_op.location):
            raise RuntimeError(f"batched block_cache: expected the v_cache reshape before RoPE, found {v_op.location}")
        T = mlir_gen.get_tensor_type
        ip = mlir_gen.insert_point
        pos = top.ReshapeOp(T([rows, dim]), pos_op, loc=self.get_loc("position_ids.rows", mlir_gen), ip=ip).output
        tables = []
        for name in (rotary_cos, rotary_sin):
            w = mlir_gen.create_weight_op(name + ".weight", [self.seq_length, 1, self.head_dim])
            tables.append(top.GatherOp(T([rows, dim, 1, self.head_dim]), w, pos, axis=0,
                                       loc=self.get_loc(name, mlir_gen), ip=ip).output)
        cos_op, sin_op = tables
        out = []
        for op, loc in ((q_op, "q_proj"), (k_op, "k_cache")):
            out.append(top.RopeOp(T(op.type.shape), op, sin_op, cos_op,
                                  rope_mode=StringAttr.get("contiguous_halves"), loc=self.get_loc(loc, mlir_gen),
                                  ip=ip).output)
        self._new_kv[id(mlir_gen)] = (out[1], v_op.result)
        return out[0], out[1]

    def gen_embedding_lmhead_mlir(self):
        super().gen_embedding_lmhead_mlir()
        if self.batch > 1:  # replace the batch-1 decode-side net LlmConverter just wrote
            self.gen_batched_embedding_cache()
        if self.batch > 1 or self.lmhead_with_topk:
            # our lm_head: B rows; a greedy head also returns the chosen token's log-probability
            self.gen_lm_head()

    def gen_batched_embedding_cache(self):
        name, b = "embedding_cache", self.batch
        embedding = self.model_info.weights[LlmList.EMBEDING]
        mlir = MLIRImporter([[b, 1]], [[b, 1, self.hidden_size]], name, self.platform, input_types=["INT32"],
                            weight_file="../embedding_top_weights.npz")
        ids = mlir.create_input_op(self.get_loc("input_ids", mlir), 0)
        w = mlir.create_weight_op(embedding + ".weight", [self.vocab_size, self.hidden_size])
        out = top.GatherOp(mlir.get_tensor_type([b, 1, self.hidden_size]), w, ids, axis=0,
                           loc=self.get_loc(name, mlir), ip=mlir.insert_point).output
        mlir.create_return_op([out])
        self.save_mlir_module(mlir, name)

    def greedy_with_logprob(self, mlir, logits, b: int):
        """TopK(1) over logits [b, vocab] -> (token id [b, 1] int32, its log-softmax [b, 1] f32).

        log p(argmax) = max - logsumexp(logits) = -log(sum(exp(logits - max))): every exp is <= 1 and the sum is
        in [1, vocab], so nothing overflows; the net's second output is F32 (4 bytes per row), never the logits."""
        T = mlir.get_tensor_type
        ip = mlir.insert_point
        L = lambda s: self.get_loc(s, mlir)  # noqa: E731
        v = self.vocab_size
        topk = top.TopKOp(*T([[b, 1], [b, 1]]), logits, axis=1, K=1, loc=L(["token_value", "token_id"]), ip=ip)
        x = top.SubOp(T([b, v]), [logits, topk.values], loc=L("logprob.sub_max"), ip=ip).output
        x = top.ExpOp(T([b, v]), x, loc=L("logprob.exp"), ip=ip).output
        x = top.ReduceOp(T([b, 1]), x, axes=[1], keepdims=True, mode=StringAttr.get("ReduceSum"),
                         loc=L("logprob.sum"), ip=ip).output
        x = top.LogOp(T([b, 1]), x, loc=L("logprob.log"), ip=ip).output
        x = top.MulConstOp(T([b, 1]), x, const_val=-1.0, loc=L("token_logprob"), ip=ip).output
        return topk.indices, x

    def gen_lm_head(self):
        name, b = "lm_head", self.batch
        lmhead = self.model_info.weights[LlmList.LMHEAD]
        greedy = self.lmhead_with_topk
        mlir = MLIRImporter([[b, self.hidden_size]], [[b, 1], [b, 1]] if greedy else [[b, self.vocab_size]], name,
                            self.platform, weight_file="../lm_head_top_weights.npz")
        T = mlir.get_tensor_type
        ip = mlir.insert_point
        x = mlir.create_input_op(self.get_loc("hidden_states", mlir), 0)
        w = mlir.create_weight_op(lmhead + ".weight", [self.vocab_size, self.hidden_size])
        logits = top.MatMulOp(T([b, self.vocab_size]), x, w, mlir.none_op, do_relu=False, right_transpose=True,
                              loc=self.get_loc(lmhead, mlir), ip=ip).output
        if greedy:
            mlir.create_return_op(list(self.greedy_with_logprob(mlir, logits, b)))
        else:
            mlir.create_return_op([logits])
        self.save_mlir_module(mlir, name)

    # ---- logits head: keep a static greedy_head (id + log-probability), drop tpu-mlir's dynamic sample_head ----
    def gen_sample_head_mlir(self, max_top_k=50, min_tokens_to_keep=5):
        name, b = "greedy_head", self.batch
        mlir = MLIRImporter([[b, self.vocab_size]], [[b, 1], [b, 1]], name, self.platform, weight_file=None)
        in_op = mlir.create_input_op(self.get_loc("m_logits", mlir), 0)
        mlir.create_return_op(list(self.greedy_with_logprob(mlir, in_op, b)))
        self.save_mlir_module(mlir, name)

    def compile_sample_head(self):
        return

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
        head_dim = dm // heads
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
        for i in range(d["layers"]):
            p = f"{ap}.layers.{i}"
            for lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1",
                        "fc2"):
                self.set_linear_weight(f"{p}.{lin}", weights)
            self.set_common_weight(f"{p}.self_attn_layer_norm", weights)
            self.set_common_weight(f"{p}.final_layer_norm", weights)
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

        for i in range(d["layers"]):
            p = f"{ap}.layers.{i}"
            h = self.layer_norm(mlir, x, f"{p}.self_attn_layer_norm", eps=1e-5)
            qkv_shape = [1, n, heads, head_dim]
            q, k, v = (top.ReshapeOp(T(qkv_shape), self.linear(mlir, f"{p}.self_attn.{w}", h, [dm, dm], [1, n, dm]),
                                     loc=L(f"{p}.self_attn.{w}.reshape"), ip=ip).output
                       for w in ("q_proj", "k_proj", "v_proj"))
            h = top.FAttentionOp(T([1, n, dm]), q, k, v, mask, mlir.none_op, scale=head_dim**-0.5, batch=1,
                                 q_head=heads, kv_head=heads, dim=head_dim, mq=n, mk=n, keep_dims=False,
                                 loc=L(f"{p}.fattention"), ip=ip).output
            h = self.linear(mlir, f"{p}.self_attn.out_proj", h, [dm, dm], [1, n, dm])
            x = top.AddOp(T([1, n, dm]), [x, h], loc=L(f"{p}.attn.add"), ip=ip).output
            h = self.layer_norm(mlir, x, f"{p}.final_layer_norm", eps=1e-5)
            h = self.linear(mlir, f"{p}.fc1", h, [dm, ffn], [1, n, ffn])
            h = self.activate(mlir, h, d["act"], f"{p}.fc1")
            h = self.linear(mlir, f"{p}.fc2", h, [ffn, dm], [1, n, dm])
            x = top.AddOp(T([1, n, dm]), [x, h], loc=L(f"{p}.mlp.add"), ip=ip).output

        x = top.PermuteOp(T([1, dm, n]), x, order=[0, 2, 1], loc=L(f"{ap}.pool.permute1"), ip=ip).output
        x = top.AvgPoolOp(T([1, dm, rows]), x, kernel_shape=[2], strides=[2], pads=[0, 0], loc=L(f"{ap}.avg_pooler"),
                          ip=ip).output
        x = top.PermuteOp(T([1, rows, dm]), x, order=[0, 2, 1], loc=L(f"{ap}.pool.permute2"), ip=ip).output
        x = self.layer_norm(mlir, x, ln_post, eps=1e-5)
        x = self.linear(mlir, proj, x, [dm, self.hidden_size], [1, rows, self.hidden_size])
        mlir.create_return_op([x])
        self.save_mlir_module(mlir, name)

    def compile_audio(self):
        name = "audio"
        if self.register_bmodel(name):
            return
        # Inputs stay F32 (the host hands over log-mel and the mask as computed); the output is quantized so the
        # runtime can copy rows straight into the half-precision prompt embeddings.
        self.submit_deploy_task(name, [f"--quantize {self.half_precision_quantize}", "--quant_output"])
