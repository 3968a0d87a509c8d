#include "text_nets.h"

#include "dtype.h"

namespace tbn {
namespace {

// The nets by name: embedding, embedding_cache, lm_head and block_i / block_cache_i pairs, all static.
void find_text_nets(const NetSet &nets, TextNets &t) {
  t.embed = nets.require("embedding", "token embeddings for the prompt");
  t.embed_cache = nets.require("embedding_cache", "token embedding for one decoded token");
  t.lm = nets.require("lm_head", "final norm + head");
  for (int i = 0;; ++i) {
    const std::string b = "block_" + std::to_string(i), c = "block_cache_" + std::to_string(i);
    auto *block = nets.find({b});
    auto *cache = nets.find({c});
    if (!block && !cache) break;
    if (!block) nets.fail("net " + c + " has no matching " + b);
    if (!cache) nets.fail("net " + b + " has no matching " + c);
    t.blocks.push_back(block);
    t.caches.push_back(cache);
  }
  if (t.blocks.empty()) nets.fail("no decoder layers (nets block_0 / block_cache_0 are missing)");
  for (auto *n : {t.embed, t.embed_cache, t.lm}) nets.expect_static(n);
  for (size_t i = 0; i < t.blocks.size(); ++i) {
    nets.expect_static(t.blocks[i]);
    nets.expect_static(t.caches[i]);
  }
}

// embedding [1,M] int32 -> [1,M,hidden] float: the prefill width M, hidden size and the states' dtype.
void read_embedding(const NetSet &nets, TextNets &t) {
  nets.expect_io(t.embed, 1, 1, "token ids -> embeddings");
  if (t.embed->input_dtypes[0] != BM_INT32) nets.fail("embedding nets must take INT32 token ids");
  const auto &is = in_shape(t.embed, 0), &eo = out_shape(t.embed, 0);
  t.prefill_len = is.dims[is.num_dims - 1];
  t.hidden = eo.dims[eo.num_dims - 1];
  t.states_dt = t.embed->output_dtypes[0];
  if (!is_float(t.states_dt)) nets.fail("embedding output dtype " + dtype_name(t.states_dt) + " is not a float type");
  t.row_bytes = static_cast<size_t>(t.hidden) * dtype_size(t.states_dt);
  if (elements(eo) != static_cast<uint64_t>(t.prefill_len) * t.hidden)
    nets.fail("embedding output " + shape_str(eo) + " is not [1," + std::to_string(t.prefill_len) + ",hidden]");
}

// Decode rows from block_cache_0's states [B,1,H]; the decode-net style and SEQLEN from its mask width: "insert"
// nets (convert.py --batch, prefill width = SEQLEN) have SEQLEN mask slots, "concat" nets SEQLEN+1 - also where the
// prefill is narrower than the history (tpu-mlir's --max_input_length). Plain
// llm_convert -b B nets (states only, relying on an in-place insert into the history input that does not persist
// on tpu-mlir 1.30.2: slot SEQLEN-1 reads back unchanged after the launch) are refused in check_layer.
void read_decode_rows(const NetSet &nets, TextNets &t) {
  const auto *c = t.caches[0];
  if (c->input_num != 5)
    nets.fail("net " + std::string(c->name) + " has " + std::to_string(c->input_num) +
              " inputs; expected 5 (decode layer: states, position_ids, mask, k history, v history)");
  const uint64_t ce = elements(in_shape(c, 0));
  if (ce == 0 || ce % static_cast<uint64_t>(t.hidden))
    nets.fail(std::string(c->name) + " states input " + shape_str(in_shape(c, 0)) + " is not [B,1,hidden]");
  t.batch = static_cast<int>(ce / static_cast<uint64_t>(t.hidden));
  const auto &ms = in_shape(c, 2);
  const int m = ms.num_dims > 0 ? ms.dims[ms.num_dims - 1] : 0;
  t.insert = m == t.prefill_len;
  t.seqlen = t.insert ? m : m - 1;
  if (t.seqlen < t.prefill_len)
    nets.fail(std::string(c->name) + " mask " + shape_str(ms) + " has fewer slots than the prefill's " +
              std::to_string(t.prefill_len) + " positions (embedding width)");
  t.mlen = m;
  t.kv_cap = t.insert ? t.seqlen - 1 : t.seqlen;
  if (c->addr_mode != 0 && c->addr_mode != 1)
    nets.fail("decode nets use addr_mode " + std::to_string(c->addr_mode) + "; supported: 0 (basic) and 1 (io_alone)");
}

int seq_dim(const bm_shape_t &s, int seqlen) {
  for (int d = 1; d < s.num_dims; ++d)
    if (s.dims[d] == seqlen) return d;
  return -1;
}

KvLayout kv_layout(const bm_shape_t &s, int sd, bm_data_type_t dt) {
  KvLayout k;
  for (int d = 0; d < sd; ++d) k.outer *= static_cast<size_t>(s.dims[d]);
  k.seq = s.dims[sd];
  k.inner_bytes = dtype_size(dt);
  for (int d = sd + 1; d < s.num_dims; ++d) k.inner_bytes *= static_cast<size_t>(s.dims[d]);
  return k;
}

// K (k = 1) or V (k = 2) of layer i: the prefill output, the decode history input and the decode net's new K/V must
// share a sequence dim (prefill width, SEQLEN, 1), heads and row size - and equal layer 0's.
void read_kv(const NetSet &nets, TextNets &t, size_t i, int k) {
  const auto *b = t.blocks[i], *c = t.caches[i];
  const auto &ks = out_shape(b, k), &hs = in_shape(c, 2 + k), &ns = out_shape(c, k);
  const std::string where = std::string(b->name) + " KV output " + shape_str(ks) + " / " + c->name + " history " +
                            shape_str(hs) + " / new " + shape_str(ns);
  const int sd = seq_dim(hs, t.seqlen);
  if (sd < 0 || sd >= ks.num_dims || ks.dims[sd] != t.prefill_len)
    nets.fail(where + ": no sequence dim of size SEQLEN (" + std::to_string(t.seqlen) + ") in the history where the "
              "prefill output has its " + std::to_string(t.prefill_len) + " positions");
  if (sd >= ns.num_dims || ns.dims[sd] != 1)
    nets.fail(where + ": the new K/V has no sequence dim of size 1 where the history has SEQLEN");
  const size_t B = static_cast<size_t>(t.batch);
  KvLayout pk = kv_layout(ks, sd, b->output_dtypes[k]), hk = kv_layout(hs, sd, c->input_dtypes[2 + k]),
           nk = kv_layout(ns, sd, c->output_dtypes[k]);
  const bool rows_ok = hk.outer % B == 0 && nk.outer % B == 0;
  const bool dtypes_ok = b->output_dtypes[k] == c->input_dtypes[2 + k] && c->output_dtypes[k] == c->input_dtypes[2 + k];
  hk.outer /= B;  // per row
  nk.outer /= B;
  if (!rows_ok || !dtypes_ok || pk.outer != hk.outer || pk.outer != nk.outer || pk.inner_bytes != hk.inner_bytes ||
      pk.inner_bytes != nk.inner_bytes)
    nets.fail(where + ": prefill, history and new K/V disagree in rows, heads, row size or dtype");
  if (i == 0) {
    t.kv_prefill[k - 1] = pk;
    t.kv_hist[k - 1] = hk;
    t.kv_new[k - 1] = nk;
  } else if (pk.outer != t.kv_prefill[k - 1].outer || pk.inner_bytes != t.kv_prefill[k - 1].inner_bytes ||
             pk.seq != t.kv_prefill[k - 1].seq || hk.seq != t.kv_hist[k - 1].seq) {
    nets.fail(where + ": differs from layer 0");
  }
}

// Layer i: block_i (states, positions, mask [M,M]) -> states, K, V; block_cache_i (states, positions, mask,
// K/V history) -> states, new K, new V, with B rows.
void check_layer(const NetSet &nets, TextNets &t, size_t i) {
  const auto *b = t.blocks[i], *c = t.caches[i];
  const std::string bn = b->name, cn = c->name;
  const std::string rows = t.batch == 1 ? "" : std::to_string(t.batch) + " x ";
  nets.expect_io(b, 3, 3, "prefill layer: states, position_ids, mask -> states, k, v");
  if (t.insert && c->output_num == 1)
    nets.fail("net " + cn + " returns only the states and leaves the new K/V to an in-place insert into history "
              "slot SEQLEN-1, which does not persist after the launch (tpu-mlir 1.30.2): recompile with "
              "native/compile/convert.py --batch B, whose decode nets also return the new K/V");
  nets.expect_io(c, 5, 3, t.insert ? "batched decode layer: states, position_ids, mask, k history, v history -> "
                                     "states, new k, new v"
                                   : "decode layer: states, position_id, mask, k history, v history -> states, k, v");
  if (b->input_dtypes[1] != BM_INT32 || c->input_dtypes[1] != BM_INT32)
    nets.fail(bn + "/" + cn + ": position ids must be INT32");
  if (elements(in_shape(b, 0)) != static_cast<uint64_t>(t.prefill_len) * t.hidden || b->input_dtypes[0] != t.states_dt)
    nets.fail(bn + " states input " + shape_str(in_shape(b, 0)) + " " + dtype_name(b->input_dtypes[0]) +
              " does not match the embedding output");
  if (elements(in_shape(c, 0)) != static_cast<uint64_t>(t.batch) * t.hidden || c->input_dtypes[0] != t.states_dt)
    nets.fail(cn + " states input " + shape_str(in_shape(c, 0)) + " " + dtype_name(c->input_dtypes[0]) +
              " differs from block_cache_0's");
  if (i == 0) {
    const uint64_t pe = elements(in_shape(b, 1));
    t.pos_rows = pe == 3 * static_cast<uint64_t>(t.prefill_len) ? 3 : 1;
  }
  if (elements(in_shape(c, 1)) != static_cast<uint64_t>(t.batch) * t.pos_rows)
    nets.fail(cn + " position ids " + shape_str(in_shape(c, 1)) + " are not " +
              (t.pos_rows == 3 ? "3 rows of " : "") + "one per row (" + std::to_string(t.batch) + ")");
  if (elements(in_shape(b, 1)) != static_cast<uint64_t>(t.prefill_len) * t.pos_rows)
    nets.fail(bn + " position ids " + shape_str(in_shape(b, 1)) + " are not one (or three equal rows) per prefill "
              "position (" + std::to_string(t.prefill_len) + ")");
  if (elements(in_shape(b, 2)) != static_cast<uint64_t>(t.prefill_len) * t.prefill_len)
    nets.fail(bn + " mask " + shape_str(in_shape(b, 2)) + " is not M x M (M = the embedding width " +
              std::to_string(t.prefill_len) + ")");
  if (elements(in_shape(c, 2)) != static_cast<uint64_t>(t.batch) * t.mlen)
    nets.fail(cn + " mask " + shape_str(in_shape(c, 2)) + " is not " + rows + (t.insert ? "SEQLEN (" : "SEQLEN+1 (") +
              std::to_string(t.mlen) + ") slots");
  if (!is_float(b->input_dtypes[2]) || !is_float(c->input_dtypes[2]))
    nets.fail(bn + "/" + cn + ": masks must be float (additive)");
  if (i == 0) {
    t.mask_dt = b->input_dtypes[2];
    t.dmask_dt = c->input_dtypes[2];
  }
  if (b->input_dtypes[2] != t.mask_dt || c->input_dtypes[2] != t.dmask_dt)
    nets.fail(bn + "/" + cn + ": mask dtypes differ from layer 0's");
  if (c->addr_mode != t.caches[0]->addr_mode) nets.fail("decode layers use different addr_modes");
  read_kv(nets, t, i, 1);
  read_kv(nets, t, i, 2);
  t.kv_row_bytes = t.kv_hist[0].outer * t.kv_hist[0].inner_bytes;
}

// embedding_cache [B,1] -> [B,1,hidden]: one id per decode row.
void check_embedding_cache(const NetSet &nets, const TextNets &t) {
  const auto *e = t.embed_cache;
  nets.expect_io(e, 1, 1, "one token id per decode row -> its embedding");
  if (e->input_dtypes[0] != BM_INT32) nets.fail("embedding nets must take INT32 token ids");
  if (elements(in_shape(e, 0)) != static_cast<uint64_t>(t.batch) ||
      elements(out_shape(e, 0)) != static_cast<uint64_t>(t.batch) * t.hidden || e->output_dtypes[0] != t.states_dt)
    nets.fail("embedding_cache " + shape_str(in_shape(e, 0)) + " -> " + shape_str(out_shape(e, 0)) +
              " does not serve the decode nets' " + std::to_string(t.batch) + " row(s) of " + dtype_name(t.states_dt) +
              " (a batched bmodel needs embedding_cache [B,1] and lm_head [B,hidden]: compile with "
              "native/compile/convert.py --batch B)");
}

// A head net that also returns the chosen token's log-probability: a second output, F32, one value per row.
bool has_logprob_output(const bm_net_info_t *net, int batch) {
  return net && net->output_num >= 2 && net->output_dtypes[1] == BM_FLOAT32 &&
         elements(out_shape(net, 1)) == static_cast<uint64_t>(batch);
}

// lm_head [B,hidden] -> token ids [B,1] (greedy; + log-probabilities), or logits [B,vocab] with an optional
// greedy_head (argmax on the device; without a usable one the host takes the argmax).
void read_head(const NetSet &nets, TextNets &t) {
  const auto *lm = t.lm;
  const uint64_t B = static_cast<uint64_t>(t.batch);
  const std::string rows = t.batch == 1 ? "" : std::to_string(t.batch) + " x ";
  if (lm->input_num != 1 || lm->output_num < 1) nets.fail("lm_head must have one input and at least one output");
  if (elements(in_shape(lm, 0)) != B * t.hidden || lm->input_dtypes[0] != t.states_dt)
    nets.fail("lm_head input " + shape_str(in_shape(lm, 0)) + " " + dtype_name(lm->input_dtypes[0]) + " is not " +
              rows + "one hidden row of " + dtype_name(t.states_dt) +
              (t.batch > 1 ? " (a batched bmodel needs lm_head [B,hidden]: compile with convert.py --batch B)" : ""));
  t.lm_out_dt = lm->output_dtypes[0];
  const uint64_t lm_elems = elements(out_shape(lm, 0));
  t.greedy = lm_elems == B;
  if (t.greedy) {
    if (t.lm_out_dt != BM_INT32 && t.lm_out_dt != BM_FLOAT32)
      nets.fail("greedy lm_head output dtype " + dtype_name(t.lm_out_dt) + " (expected INT32)");
    return;
  }
  if (!is_float(t.lm_out_dt)) nets.fail("lm_head logits dtype " + dtype_name(t.lm_out_dt) + " is not float");
  if (lm_elems % B) nets.fail("lm_head logits " + shape_str(out_shape(lm, 0)) + " are not " + rows + "one row of scores");
  t.vocab = static_cast<int>(lm_elems / B);
  const auto *g = nets.find({"greedy_head", "greed"});
  // Only a head that also returns the log-probability (convert.py's, static) beats the host argmax, which computes
  // the exact log-softmax from the scores it reads: an ids-only head (tpu-mlir's dynamic TopK greedy_head, which
  // also cannot launch once `model_tool --kernel_remove` stripped the kernel module; the public port's `greed`,
  // declared 115630 wide) would only lose the confidence.
  const bool usable = g && g->input_num == 1 && g->output_num >= 1 && elements(in_shape(g, 0)) == lm_elems &&
                      g->input_dtypes[0] == t.lm_out_dt && elements(out_shape(g, 0)) == B &&
                      g->output_dtypes[0] == BM_INT32 && has_logprob_output(g, t.batch);
  t.greedy_head = usable ? g : nullptr;
}

}  // namespace

const bm_device_mem_t *TextNets::token_mem() const {
  if (greedy) return lm_out_dt == BM_INT32 ? &lm->stages[0].output_mems[0] : nullptr;
  return greedy_head ? &greedy_head->stages[0].output_mems[0] : nullptr;
}

const bm_device_mem_t *TextNets::logprob_mem() const {
  const bm_net_info_t *head = greedy ? lm : greedy_head;
  return has_logprob_output(head, batch) ? &head->stages[0].output_mems[1] : nullptr;
}

std::string TextNets::logprob_source() const {
  if (logprob_mem()) return "head";
  return !greedy && !greedy_head ? "host" : "none";
}

std::string TextNets::head_kind() const {
  return greedy ? "greedy" : (greedy_head ? "logits+greedy_head" : "logits+host_argmax");
}

TextNets recognise_text_nets(const NetSet &nets) {
  TextNets t;
  find_text_nets(nets, t);
  read_embedding(nets, t);
  read_decode_rows(nets, t);
  for (size_t i = 0; i < t.blocks.size(); ++i) check_layer(nets, t, i);
  check_embedding_cache(nets, t);
  read_head(nets, t);
  return t;
}

}  // namespace tbn
