"""The text side every audio LLM here shares, built on tpu-mlir's own LlmConverter (imported only inside the compile
venv); one subclass per model family (qwen2_audio_converter.py, qwen3_asr_converter.py) adds its weight layout and
its `audio` net.

Text nets come from LlmConverter (embedding, embedding_cache, block_i, block_cache_i, lm_head, and with logits
heads a static greedy_head). The lm_head (or greedy_head) returns the chosen token's id and its log-probability.

Batched decode (`args.batch` = B > 1): tpu-mlir's own batch path builds `block_cache_i` for B rows (states
[B,1,H], position_ids [B,1], mask [B,1,1,SEQ], history K/V [B,SEQ,KV,D]; the attention sees the current token at
history slot SEQ-1). Its InsertOp for that slot does not work on tpu-mlir 1.30.2, so this class replaces it with
Slice + Concat and also returns the new K/V [B,1,KV,D], which the runtime copies to each row's position (see
`install_new_kv_outputs`). It also adds what that path leaves at batch 1: `embedding_cache` [B,1] and `lm_head`
[B,H] -> [B,1] (or [B,vocab] + `greedy_head` [B,vocab] -> [B,1]), so one launch of each net serves the whole batch,
and per-row RoPE positions (LlmConverter types the gathered cos/sin as one row). The prefill (`embedding`, `block_i`)
and `audio` stay one sequence, identical to a B=1 build.

Audio nets' weights go through MLIRImporter's .npz weight file, not ONNX, so a real-size encoder never meets ONNX's
2 GB limit.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import types

import mlir.dialects.top as top  # noqa: E402  (tpu-mlir's python path is set up by `import tpu_mlir`)
from mlir.ir import StringAttr

from llm.LlmConverter import LlmConverter
from llm.LlmInfo import LlmList, ModelConfig, ModelInfo
from transform.MLIRImporter import MLIRImporter

AUDIO_MASK_VALUE = -10000.0  # additive key mask of the audio nets' padded positions
LOGPROB_OPS = ("logprob.sub_max", "logprob.exp", "logprob.sum", "logprob.log", "token_logprob")
QTABLE = "logprob_f32.qtable"  # mixed-precision table of the greedy lm_head (next to its .mlir)


def text_model_info(text: str, lm_head: str) -> ModelInfo:
    """LlmConverter's weight names for a Qwen2/Qwen3-style text model under `text` (q/k norms used by Qwen3 only)."""
    return ModelInfo(
        ModelConfig(),
        weights={
            LlmList.LAYERS: f"{text}.layers",
            LlmList.EMBEDING: f"{text}.embed_tokens",
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
            LlmList.NORM: f"{text}.norm",
            LlmList.LMHEAD: lm_head,
        })


class AudioLlmConverter(LlmConverter):
    """LlmConverter + an `audio` net (`gen_audio_mlir`, the subclass's) + the batched decode and log-probability
    heads above. Subclasses' load_pretrained set model_info, llm_config, llm_type and their audio config."""

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

    def gen_audio_mlir(self):
        raise NotImplementedError

    # ---- the Whisper-style encoder layers both families' audio nets use (pre-LN, additive key mask) ----
    def set_encoder_layer_weights(self, prefix: str, layers: int, weights: dict) -> None:
        for i in range(layers):
            p = f"{prefix}.layers.{i}"
            for lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1",
                        "fc2"):
                self.set_linear_weight(f"{p}.{lin}", weights)
            self.set_common_weight(f"{p}.self_attn_layer_norm", weights)
            self.set_common_weight(f"{p}.final_layer_norm", weights)

    def encoder_layers(self, mlir, x, prefix: str, *, layers: int, rows: int, d_model: int, heads: int, ffn: int,
                       act: str, mask):
        """x [1, rows, d_model] through `layers` encoder layers; mask [1, 1, rows, rows] additive (keys)."""
        T = mlir.get_tensor_type
        ip = mlir.insert_point
        L = lambda s: self.get_loc(s, mlir)  # noqa: E731
        n, dm, head_dim = rows, d_model, d_model // heads
        for i in range(layers):
            p = f"{prefix}.layers.{i}"
            h = self.layer_norm(mlir, x, f"{p}.self_attn_layer_norm", eps=1e-5)
            q, k, v = (top.ReshapeOp(T([1, n, heads, head_dim]),
                                     self.linear(mlir, f"{p}.self_attn.{w}_proj", h, [dm, dm], [1, n, dm]),
                                     loc=L(f"{p}.self_attn.{w}_proj.reshape"), ip=ip).output for w in "qkv")
            h = top.FAttentionOp(T([1, n, dm]), q, k, v, mask, mlir.none_op, scale=head_dim**-0.5, batch=1,
                                 q_head=heads, kv_head=heads, dim=head_dim, mq=n, mk=n, keep_dims=False,
                                 loc=L(f"{p}.fattention"), ip=ip).output
            h = self.linear(mlir, f"{p}.self_attn.out_proj", h, [dm, dm], [1, n, dm])
            x = top.AddOp(T([1, n, dm]), [x, h], loc=L(f"{p}.attn.add"), ip=ip).output
            h = self.layer_norm(mlir, x, f"{p}.final_layer_norm", eps=1e-5)
            h = self.linear(mlir, f"{p}.fc1", h, [dm, ffn], [1, n, ffn])
            h = self.activate(mlir, h, act, f"{p}.fc1")
            h = self.linear(mlir, f"{p}.fc2", h, [ffn, dm], [1, n, dm])
            x = top.AddOp(T([1, n, dm]), [x, h], loc=L(f"{p}.mlp.add"), ip=ip).output
        return x

    def set_text_dtype(self):
        # Checkpoints are bf16; f16 builds are a deliberate choice, so let the requested mode decide.
        self.llm_config.dtype = "bfloat16" if "bf16" in self.quantize else "float16"

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
        # the V reshape ("v_cache"): the op LlmConverter emitted last before asking for RoPE, or before the q/k
        # RMSNorms of a Qwen3 layer
        v_op = next((op for op in reversed(list(mlir_gen.insert_point.block.operations))
                     if "v_cache" in str(op.location)), None)
        if v_op is None:
            raise RuntimeError("batched block_cache: found no v_cache reshape before RoPE")
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
        """ArgMax over logits [b, vocab] -> (token id [b, 1] int32, its log-softmax [b, 1] f32).

        log p(argmax) = max - logsumexp(logits) = -log(sum(exp(logits - max))): every exp is <= 1 and the sum is
        in [1, vocab], so nothing overflows; the net's second output is F32 (4 bytes per row), never the logits.
        ArgMax, not TopK(1) as tpu-mlir's heads use: TopK compiles to a dynamic net (it needs the kernel module)
        and took 188 s per launch on the cmodel simulator over a 151680-row vocabulary; ArgMax is static and takes
        about 2 s there. Ties go to the first index, as torch.argmax."""
        T = mlir.get_tensor_type
        ip = mlir.insert_point
        L = lambda s: self.get_loc(s, mlir)  # noqa: E731
        v = self.vocab_size
        arg = top.ArgOp(*T([[b, 1], [b, 1]]), logits, axis=1, keepdims=True, mode=StringAttr.get("ArgMax"),
                        select_last_index=False, loc=L(["token_id", "token_value"]), ip=ip)
        x = top.SubOp(T([b, v]), [logits, arg.values], loc=L("logprob.sub_max"), ip=ip).output
        x = top.ExpOp(T([b, v]), x, loc=L("logprob.exp"), ip=ip).output
        x = top.ReduceOp(T([b, 1]), x, axes=[1], keepdims=True, mode=StringAttr.get("ReduceSum"),
                         loc=L("logprob.sum"), ip=ip).output
        x = top.LogOp(T([b, 1]), x, loc=L("logprob.log"), ip=ip).output
        x = top.MulConstOp(T([b, 1]), x, const_val=-1.0, loc=L("token_logprob"), ip=ip).output
        return arg.indices, x

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
        if greedy:
            with open(os.path.join(name, QTABLE), "w") as f:
                f.write("".join(f"{op} F32\n" for op in LOGPROB_OPS))

    def compile_lm_head(self):
        """tpu-mlir's deploy of lm_head, plus (greedy head) the log-probability chain in F32: summed in f16 over a
        151936-row vocabulary, exp(logit - max) loses the small terms and the log-probability comes out too high by
        up to ~0.1 (measured on the tiny Qwen3-ASR against HF fp32)."""
        name = "lm_head"
        if self.register_bmodel(name, with_size=not self.tie_word_embeddings):
            return
        extra = [f"--quantize {self.half_precision_quantize}", "--quant_input"]
        if self.lmhead_with_topk:  # our greedy head (gen_lm_head) wrote the table
            extra.append(f"--quantize_table {QTABLE}")
        self.submit_deploy_task(name, extra)

    # ---- logits head: keep a static greedy_head (id + log-probability), drop tpu-mlir's dynamic sample_head ----
    def gen_sample_head_mlir(self, max_top_k=50, min_tokens_to_keep=5):
        name, b = "greedy_head", self.batch
        mlir = MLIRImporter([[b, self.vocab_size]], [[b, 1], [b, 1]], name, self.platform, weight_file=None)
        in_op = mlir.create_input_op(self.get_loc("m_logits", mlir), 0)
        mlir.create_return_op(list(self.greedy_with_logprob(mlir, in_op, b)))
        self.save_mlir_module(mlir, name)

    def compile_sample_head(self):
        return


    def compile_audio(self):
        name = "audio"
        if self.register_bmodel(name):
            return
        # Inputs stay F32 (the host hands over log-mel and the mask as computed); the output is quantized so the
        # runtime can copy rows straight into the half-precision prompt embeddings.
        self.submit_deploy_task(name, [f"--quantize {self.half_precision_quantize}", "--quant_output"])
