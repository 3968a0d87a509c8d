#include "runtime.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <utility>

#include "dtype.h"

namespace tbn {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string shape_str(const bm_shape_t &s) {
  std::ostringstream o;
  o << "[";
  for (int i = 0; i < s.num_dims; ++i) o << (i ? "," : "") << s.dims[i];
  o << "]";
  return o.str();
}

uint64_t elements(const bm_shape_t &s) {
  uint64_t n = 1;
  for (int i = 0; i < s.num_dims; ++i) n *= static_cast<uint64_t>(s.dims[i]);
  return n;
}

Counters plus(const Counters &a, const Counters &b) {
  Counters d;
  d.h2d_bytes = a.h2d_bytes + b.h2d_bytes;
  d.d2h_bytes = a.d2h_bytes + b.d2h_bytes;
  d.d2d_bytes = a.d2d_bytes + b.d2d_bytes;
  d.h2d_calls = a.h2d_calls + b.h2d_calls;
  d.d2h_calls = a.d2h_calls + b.d2h_calls;
  d.d2d_calls = a.d2d_calls + b.d2d_calls;
  d.launches = a.launches + b.launches;
  return d;
}

Counters minus(const Counters &a, const Counters &b) {
  Counters d;
  d.h2d_bytes = a.h2d_bytes - b.h2d_bytes;
  d.d2h_bytes = a.d2h_bytes - b.d2h_bytes;
  d.d2d_bytes = a.d2d_bytes - b.d2d_bytes;
  d.h2d_calls = a.h2d_calls - b.h2d_calls;
  d.d2h_calls = a.d2h_calls - b.d2h_calls;
  d.d2d_calls = a.d2d_calls - b.d2d_calls;
  d.launches = a.launches - b.launches;
  return d;
}

uint64_t addr(const bm_device_mem_t &m) { return bm_mem_get_device_addr(m); }

// The additive "hidden" value of the text nets' masks, as the compiled graphs expect it.
void fill_mask_value(bm_data_type_t t, void *dst, size_t i, bool hidden) {
  if (t == BM_FLOAT32) {
    static_cast<float *>(dst)[i] = hidden ? -10000.0f : 0.0f;
  } else if (t == BM_FLOAT16) {
    static_cast<uint16_t *>(dst)[i] = hidden ? 0xF0E2 : 0;  // -10000 (≈-9984 after rounding) in f16
  } else {
    static_cast<uint16_t *>(dst)[i] = hidden ? 0xC61C : 0;  // -9984 in bf16
  }
}

// A K/V tensor seen as [outer, seq, inner]: outer = kv heads when heads come before the sequence (the public
// port's K), 1 for [1,SEQ,kv_heads,head_dim] (llm_convert); inner = bytes after the sequence dim.
struct KvLayout {
  size_t outer = 1, inner_bytes = 0;
  int seq = 0;
};

int seq_dim(const bm_shape_t &s, int seqlen) {
  for (int d = 1; d < s.num_dims; ++d)
    if (s.dims[d] == seqlen) return d;
  return -1;
}

KvLayout kv_layout(const bm_shape_t &s, int sd, bm_data_type_t t) {
  KvLayout k;
  for (int d = 0; d < sd; ++d) k.outer *= static_cast<size_t>(s.dims[d]);
  k.seq = s.dims[sd];
  k.inner_bytes = dtype_size(t);
  for (int d = sd + 1; d < s.num_dims; ++d) k.inner_bytes *= static_cast<size_t>(s.dims[d]);
  return k;
}

// Frames after one 3x3 stride-2 padding-1 convolution (the chunked audio encoder's front end, three of them).
int conv_len(int n) { return (n - 1) / 2 + 1; }

}  // namespace

int chunked_audio_tokens(int n_valid_frames, int chunk_frames) {
  int tokens = 0;
  for (int start = 0; start < n_valid_frames; start += chunk_frames)
    tokens += conv_len(conv_len(conv_len(std::min(chunk_frames, n_valid_frames - start))));
  return tokens;
}

struct Runtime::Impl {
  Runtime &rt;
  std::string path;
  bm_handle_t handle = nullptr;
  void *bmrt = nullptr;

  const bm_net_info_t *embed = nullptr, *embed_cache = nullptr, *lm = nullptr, *audio = nullptr,
                      *projector = nullptr, *greedy_head = nullptr;
  std::vector<const bm_net_info_t *> blocks, caches;

  bm_data_type_t states_dt = BM_BFLOAT16, mask_dt = BM_BFLOAT16, dmask_dt = BM_BFLOAT16;
  bm_data_type_t feat_dt = BM_FLOAT32, amask_dt = BM_FLOAT32, audio_out_dt = BM_FLOAT32, lm_out_dt = BM_INT32;
  size_t row_bytes = 0, kv_row_bytes = 0;
  KvLayout kv_prefill[2], kv_hist[2], kv_new[2];  // [0] K, [1] V
  int seqlen = 0, hidden = 0, vocab = 0, audio_rows = 0, n_mels = 0, n_frames = 0;
  int batch = 1;      // decode rows (slots)
  bool insert = false;  // decode nets insert the new K/V at history slot SEQLEN-1 for their own attention (and return it)
  int mlen = 0;       // decode mask slots per row: SEQLEN+1 (concat) or SEQLEN (insert); the last is the current token
  int kv_cap = 0;     // history positions a request may use: SEQLEN (concat) or SEQLEN-1 (insert)
  bool greedy = true, has_audio_mask = false;
  bm_shape_t amask_shape{};
  // chunked audio net (Qwen3-ASR): one launch = one attention window of win_chunks chunks of chunk_frames frames;
  // inputs mel [K,1,n_mels,C], conv1_keep [K,1,1,c1], conv2_keep [K,1,1,c2], mask [1,K*R]; output [1,K*R,hidden]
  bool chunked = false;
  int win_chunks = 0, chunk_frames = 0, chunk_c1 = 0, chunk_c2 = 0, chunk_rows = 0;
  bm_data_type_t keep_dt[2] = {BM_FLOAT32, BM_FLOAT32};

  bm_device_mem_t states_buf{}, pos_buf{}, mask_buf{}, dpos_buf{}, dmask_buf{}, tok_buf{};
  std::vector<bm_device_mem_t> k_store, v_store;
  std::vector<bm_device_mem_t> owned;

  Impl(Runtime &r) : rt(r) {}

  ~Impl() {
    for (auto &m : owned) bm_free_device(handle, m);
    if (bmrt) bmrt_destroy(bmrt);
    if (handle) bm_dev_free(handle);
  }

  [[noreturn]] void layout_error(const std::string &what) const {
    throw LayoutError("bmodel " + path + ": " + what);
  }

  void check(bm_status_t s, const char *what) const {
    if (s != BM_SUCCESS) throw DeviceError(std::string(what) + " failed (bm_status " + std::to_string(s) + ")");
  }

  bm_device_mem_t alloc(size_t bytes, const char *what) {
    bm_device_mem_t m{};
    check(bm_malloc_device_byte(handle, &m, static_cast<unsigned int>(bytes)), what);
    owned.push_back(m);
    return m;
  }

  // ---- counted transfers -------------------------------------------------------------------------------------
  void h2d(bm_device_mem_t dst, size_t offset, const void *src, size_t size) {
    check(bm_memcpy_s2d_partial_offset(handle, dst, const_cast<void *>(src), static_cast<unsigned int>(size),
                                       static_cast<unsigned int>(offset)),
          "host-to-device copy");
    rt.counters_.h2d_bytes += size;
    rt.counters_.h2d_calls += 1;
  }
  void d2h(void *dst, bm_device_mem_t src, size_t offset, size_t size) {
    check(bm_memcpy_d2s_partial_offset(handle, dst, src, static_cast<unsigned int>(size),
                                       static_cast<unsigned int>(offset)),
          "device-to-host copy");
    rt.counters_.d2h_bytes += size;
    rt.counters_.d2h_calls += 1;
  }
  void d2d(bm_device_mem_t dst, size_t dst_off, bm_device_mem_t src, size_t src_off, size_t size) {
    if (addr(dst) + dst_off == addr(src) + src_off) return;  // nets sharing an io buffer
    check(bm_memcpy_d2d_byte(handle, dst, dst_off, src, src_off, size), "device-to-device copy");
    rt.counters_.d2d_bytes += size;
    rt.counters_.d2d_calls += 1;
  }

  void launch(const bm_net_info_t *net, const std::vector<std::pair<int, bm_device_mem_t>> &inputs = {}) {
    const auto &st = net->stages[0];
    std::vector<bm_tensor_t> in(net->input_num), out(net->output_num);
    for (int i = 0; i < net->input_num; ++i)
      bmrt_tensor_with_device(&in[i], st.input_mems[i], net->input_dtypes[i], st.input_shapes[i]);
    for (const auto &kv : inputs)
      bmrt_tensor_with_device(&in[kv.first], kv.second, net->input_dtypes[kv.first], st.input_shapes[kv.first]);
    for (int i = 0; i < net->output_num; ++i)
      bmrt_tensor_with_device(&out[i], st.output_mems[i], net->output_dtypes[i], st.output_shapes[i]);
    if (!bmrt_launch_tensor_ex(bmrt, net->name, in.data(), net->input_num, out.data(), net->output_num, true, false))
      throw DeviceError(std::string("launching net ") + net->name + " failed");
    check(bm_thread_sync(handle), (std::string("running net ") + net->name).c_str());
    rt.counters_.launches += 1;
  }

  // ---- introspection ----------------------------------------------------------------------------------------
  const bm_net_info_t *find(const std::vector<std::string> &names, const std::vector<std::string> &candidates) {
    for (const auto &c : candidates)
      if (std::find(names.begin(), names.end(), c) != names.end()) return bmrt_get_network_info(bmrt, c.c_str());
    return nullptr;
  }

  const bm_net_info_t *require(const std::vector<std::string> &names, const std::string &name,
                               const std::string &role) {
    auto *n = find(names, {name});
    if (!n) {
      std::string all;
      for (const auto &x : names) all += (all.empty() ? "" : ", ") + x;
      layout_error("missing net '" + name + "' (" + role + "); nets found: " + all);
    }
    return n;
  }

  static const bm_shape_t &in_shape(const bm_net_info_t *n, int i) { return n->stages[0].input_shapes[i]; }
  static const bm_shape_t &out_shape(const bm_net_info_t *n, int i) { return n->stages[0].output_shapes[i]; }

  void expect_io(const bm_net_info_t *n, int n_in, int n_out, const std::string &what) {
    if (n->input_num != n_in || n->output_num != n_out)
      layout_error("net " + std::string(n->name) + " has " + std::to_string(n->input_num) + " inputs and " +
                   std::to_string(n->output_num) + " outputs; expected " + std::to_string(n_in) + " and " +
                   std::to_string(n_out) + " (" + what + ")");
  }

  void expect_static_single_stage(const bm_net_info_t *n) {
    if (n->is_dynamic)
      layout_error("net " + std::string(n->name) +
                   " is dynamic; this runtime drives static nets (compile without --dynamic)");
    if (n->stage_num < 1) layout_error("net " + std::string(n->name) + " has no stage");
  }

  // Copy n positions (all heads) from src row sr, position sp to dst row dr, position dp: one d2d when outer == 1
  // (outer = heads before the sequence dim, per row).
  void copy_kv(bm_device_mem_t dst, const KvLayout &dl, int dr, int dp, bm_device_mem_t src, const KvLayout &sl,
               int sr, int sp, int n) {
    for (size_t o = 0; o < dl.outer; ++o)
      d2d(dst, ((dr * dl.outer + o) * dl.seq + dp) * dl.inner_bytes, src,
          ((sr * sl.outer + o) * sl.seq + sp) * sl.inner_bytes, n * dl.inner_bytes);
  }

  void introspect() {
    int count = bmrt_get_network_number(bmrt);
    const char **raw = nullptr;
    bmrt_get_network_names(bmrt, &raw);
    std::vector<std::string> names;
    for (int i = 0; i < count; ++i) names.emplace_back(raw[i]);
    free(raw);

    for (const auto &name : names) {
      const bm_net_info_t *n = bmrt_get_network_info(bmrt, name.c_str());
      NetSummary s;
      s.name = name;
      s.is_dynamic = n->is_dynamic;
      s.addr_mode = n->addr_mode;
      s.stage_num = n->stage_num;
      for (int i = 0; i < n->input_num; ++i) {
        const auto &sh = in_shape(n, i);
        s.inputs.push_back({n->input_names[i], dtype_name(n->input_dtypes[i]),
                            std::vector<int>(sh.dims, sh.dims + sh.num_dims)});
      }
      for (int i = 0; i < n->output_num; ++i) {
        const auto &sh = out_shape(n, i);
        s.outputs.push_back({n->output_names[i], dtype_name(n->output_dtypes[i]),
                             std::vector<int>(sh.dims, sh.dims + sh.num_dims)});
      }
      rt.nets_.push_back(std::move(s));
    }

    embed = require(names, "embedding", "token embeddings for the prompt");
    embed_cache = require(names, "embedding_cache", "token embedding for one decoded token");
    lm = require(names, "lm_head", "final norm + head");
    audio = find(names, {"audio", "audio_encoder", "audio_ext_model", "audio_tower"});
    if (!audio) layout_error("missing the audio encoder net (looked for 'audio', 'audio_encoder', 'audio_ext_model')");
    projector = find(names, {"projector", "audio_projector"});
    for (int i = 0;; ++i) {
      auto *b = find(names, {"block_" + std::to_string(i)});
      auto *c = find(names, {"block_cache_" + std::to_string(i)});
      if (!b && !c) break;
      if (!b) layout_error("net block_cache_" + std::to_string(i) + " has no matching block_" + std::to_string(i));
      if (!c) layout_error("net block_" + std::to_string(i) + " has no matching block_cache_" + std::to_string(i));
      blocks.push_back(b);
      caches.push_back(c);
    }
    if (blocks.empty()) layout_error("no decoder layers (nets block_0 / block_cache_0 are missing)");

    for (auto *n : {embed, embed_cache, lm, audio}) expect_static_single_stage(n);
    if (projector) expect_static_single_stage(projector);
    for (size_t i = 0; i < blocks.size(); ++i) {
      expect_static_single_stage(blocks[i]);
      expect_static_single_stage(caches[i]);
    }

    // text side
    expect_io(embed, 1, 1, "token ids -> embeddings");
    if (embed->input_dtypes[0] != BM_INT32 || embed_cache->input_dtypes[0] != BM_INT32)
      layout_error("embedding nets must take INT32 token ids");
    seqlen = in_shape(embed, 0).dims[in_shape(embed, 0).num_dims - 1];
    const auto &eo = out_shape(embed, 0);
    hidden = eo.dims[eo.num_dims - 1];
    states_dt = embed->output_dtypes[0];
    if (!is_float(states_dt)) layout_error("embedding output dtype " + dtype_name(states_dt) + " is not a float type");
    row_bytes = static_cast<size_t>(hidden) * dtype_size(states_dt);
    if (elements(eo) != static_cast<uint64_t>(seqlen) * hidden)
      layout_error("embedding output " + shape_str(eo) + " is not [1," + std::to_string(seqlen) + ",hidden]");

    // decode rows: block_cache states [B,1,H]. Two decode-net styles, both returning the new K/V for the runtime to
    // copy to each row's position: "concat" (history + current token = SEQLEN+1 mask slots; llm_convert at batch 1)
    // and "insert" (convert.py --batch B: the net inserts the new K/V at history slot SEQLEN-1 for its attention;
    // mask SEQLEN slots, the last being the current token). Plain llm_convert -b B nets return only the states and
    // rely on that insert persisting in the history input, which it does not (tpu-mlir 1.30.2, probed on the
    // simulator: slot SEQLEN-1 reads back unchanged after the launch), so they are refused.
    {
      const uint64_t ce = elements(in_shape(caches[0], 0));
      if (ce == 0 || ce % static_cast<uint64_t>(hidden))
        layout_error(std::string(caches[0]->name) + " states input " + shape_str(in_shape(caches[0], 0)) +
                     " is not [B,1,hidden]");
      batch = static_cast<int>(ce / static_cast<uint64_t>(hidden));
      const auto &ms = in_shape(caches[0], 2);
      insert = ms.num_dims > 0 && ms.dims[ms.num_dims - 1] == seqlen;
      mlen = insert ? seqlen : seqlen + 1;
      kv_cap = insert ? seqlen - 1 : seqlen;
    }
    const std::string rows = batch == 1 ? "" : std::to_string(batch) + " x ";
    for (size_t i = 0; i < blocks.size(); ++i) {
      auto *b = blocks[i];
      auto *c = caches[i];
      expect_io(b, 3, 3, "prefill layer: states, position_ids, mask -> states, k, v");
      if (insert && c->output_num == 1)
        layout_error("net " + std::string(c->name) + " returns only the states and leaves the new K/V to an "
                     "in-place insert into history slot SEQLEN-1, which does not persist after the launch "
                     "(tpu-mlir 1.30.2): recompile with native/compile/convert.py --batch B, whose decode nets "
                     "also return the new K/V");
      if (insert)
        expect_io(c, 5, 3, "batched decode layer: states, position_ids, mask, k history, v history -> states, "
                           "new k, new v");
      else
        expect_io(c, 5, 3, "decode layer: states, position_id, mask, k history, v history -> states, k, v");
      if (b->input_dtypes[1] != BM_INT32 || c->input_dtypes[1] != BM_INT32)
        layout_error(std::string(b->name) + "/" + c->name + ": position ids must be INT32");
      if (elements(in_shape(b, 0)) != static_cast<uint64_t>(seqlen) * hidden || b->input_dtypes[0] != states_dt)
        layout_error(std::string(b->name) + " states input " + shape_str(in_shape(b, 0)) + " " +
                     dtype_name(b->input_dtypes[0]) + " does not match the embedding output");
      if (elements(in_shape(c, 0)) != static_cast<uint64_t>(batch) * hidden || c->input_dtypes[0] != states_dt)
        layout_error(std::string(c->name) + " states input " + shape_str(in_shape(c, 0)) + " " +
                     dtype_name(c->input_dtypes[0]) + " differs from block_cache_0's");
      if (elements(in_shape(c, 1)) != static_cast<uint64_t>(batch))
        layout_error(std::string(c->name) + " position ids " + shape_str(in_shape(c, 1)) + " are not one per row (" +
                     std::to_string(batch) + ")");
      if (elements(in_shape(b, 2)) != static_cast<uint64_t>(seqlen) * seqlen)
        layout_error(std::string(b->name) + " mask " + shape_str(in_shape(b, 2)) + " is not SEQLEN x SEQLEN (" +
                     std::to_string(seqlen) + ")");
      if (elements(in_shape(c, 2)) != static_cast<uint64_t>(batch) * mlen)
        layout_error(std::string(c->name) + " mask " + shape_str(in_shape(c, 2)) + " is not " + rows +
                     (insert ? "SEQLEN (" : "SEQLEN+1 (") + std::to_string(mlen) + ") slots");
      for (int k = 1; k <= 2; ++k) {
        const auto &ks = out_shape(b, k);
        const auto &hs = in_shape(c, 2 + k);
        std::string where = std::string(b->name) + " KV output " + shape_str(ks) + " / " + c->name + " history " +
                            shape_str(hs);
        where += " / new " + shape_str(out_shape(c, k));
        int sd = seq_dim(hs, seqlen);
        if (sd < 0 || seq_dim(ks, seqlen) != sd)
          layout_error(where + ": no common sequence dim of size SEQLEN (" + std::to_string(seqlen) + ")");
        KvLayout pk = kv_layout(ks, sd, b->output_dtypes[k]), hk = kv_layout(hs, sd, c->input_dtypes[2 + k]);
        bool ok = hk.outer % static_cast<size_t>(batch) == 0 && b->output_dtypes[k] == c->input_dtypes[2 + k];
        hk.outer /= static_cast<size_t>(batch);  // per row
        KvLayout nk = hk;
        {
          const auto &ns = out_shape(c, k);
          if (sd >= ns.num_dims || ns.dims[sd] != 1)
            layout_error(where + ": the new K/V has no sequence dim of size 1 where the history has SEQLEN");
          nk = kv_layout(ns, sd, c->output_dtypes[k]);
          ok = ok && nk.outer % static_cast<size_t>(batch) == 0 && c->output_dtypes[k] == c->input_dtypes[2 + k];
          nk.outer /= static_cast<size_t>(batch);
        }
        if (!ok || pk.outer != hk.outer || pk.outer != nk.outer || pk.inner_bytes != hk.inner_bytes ||
            pk.inner_bytes != nk.inner_bytes)
          layout_error(where + ": prefill, history and new K/V disagree in rows, heads, row size or dtype");
        if (i == 0) {
          kv_prefill[k - 1] = pk;
          kv_hist[k - 1] = hk;
          kv_new[k - 1] = nk;
        } else if (pk.outer != kv_prefill[k - 1].outer || pk.inner_bytes != kv_prefill[k - 1].inner_bytes ||
                   pk.seq != kv_prefill[k - 1].seq || hk.seq != kv_hist[k - 1].seq) {
          layout_error(where + ": differs from layer 0");
        }
      }
      kv_row_bytes = kv_hist[0].outer * kv_hist[0].inner_bytes;
      if (i == 0) {
        mask_dt = b->input_dtypes[2];
        dmask_dt = c->input_dtypes[2];
      }
      if (c->addr_mode != caches[0]->addr_mode) layout_error("decode layers use different addr_modes");
      if (!is_float(b->input_dtypes[2]) || !is_float(c->input_dtypes[2]))
        layout_error(std::string(b->name) + "/" + c->name + ": masks must be float (additive)");
    }
    if (elements(in_shape(embed_cache, 0)) != static_cast<uint64_t>(batch) ||
        elements(out_shape(embed_cache, 0)) != static_cast<uint64_t>(batch) * hidden ||
        embed_cache->output_dtypes[0] != states_dt)
      layout_error("embedding_cache " + shape_str(in_shape(embed_cache, 0)) + " -> " +
                   shape_str(out_shape(embed_cache, 0)) + " does not serve the decode nets' " + std::to_string(batch) +
                   " row(s) of " + dtype_name(states_dt) + " (a batched bmodel needs embedding_cache [B,1] and "
                   "lm_head [B,hidden]: compile with native/compile/convert.py --batch B)");
    if (caches[0]->addr_mode != 0 && caches[0]->addr_mode != 1)
      layout_error("decode nets use addr_mode " + std::to_string(caches[0]->addr_mode) +
                   "; supported: 0 (basic) and 1 (io_alone)");

    // head
    if (lm->input_num != 1 || lm->output_num < 1) layout_error("lm_head must have one input and at least one output");
    if (elements(in_shape(lm, 0)) != static_cast<uint64_t>(batch) * hidden || lm->input_dtypes[0] != states_dt)
      layout_error("lm_head input " + shape_str(in_shape(lm, 0)) + " " + dtype_name(lm->input_dtypes[0]) +
                   " is not " + rows + "one hidden row of " + dtype_name(states_dt) +
                   (batch > 1 ? " (a batched bmodel needs lm_head [B,hidden]: compile with convert.py --batch B)" : ""));
    lm_out_dt = lm->output_dtypes[0];
    uint64_t lm_elems = elements(out_shape(lm, 0));
    greedy = lm_elems == static_cast<uint64_t>(batch);
    if (greedy) {
      if (lm_out_dt != BM_INT32 && lm_out_dt != BM_FLOAT32)
        layout_error("greedy lm_head output dtype " + dtype_name(lm_out_dt) + " (expected INT32)");
    } else {
      if (!is_float(lm_out_dt)) layout_error("lm_head logits dtype " + dtype_name(lm_out_dt) + " is not float");
      if (lm_elems % static_cast<uint64_t>(batch))
        layout_error("lm_head logits " + shape_str(out_shape(lm, 0)) + " are not " + rows + "one row of scores");
      vocab = static_cast<int>(lm_elems / static_cast<uint64_t>(batch));
      // a greedy_head (argmax over the logits) keeps the token on the device; without one, argmax on host
      greedy_head = find(names, {"greedy_head", "greed"});
      if (greedy_head && (greedy_head->input_num != 1 || greedy_head->output_num < 1 ||
                          elements(in_shape(greedy_head, 0)) != lm_elems ||
                          greedy_head->input_dtypes[0] != lm_out_dt ||
                          elements(out_shape(greedy_head, 0)) != static_cast<uint64_t>(batch) ||
                          greedy_head->output_dtypes[0] != BM_INT32))
        greedy_head = nullptr;
    }

    // audio side
    const auto &fs = in_shape(audio, 0);
    if (fs.num_dims == 4 && audio->input_num == 4) {
      introspect_chunked_audio();
    } else if (audio->input_num < 1 || audio->input_num > 2 || audio->output_num < 1) {
      layout_error(std::string("audio net ") + audio->name + " must take (features[, mask]) and give embeddings, or "
                   "(chunks [K,1,n_mels,C], conv1_keep, conv2_keep, mask) for a chunked encoder");
    } else if (fs.num_dims < 2 ||
               elements(fs) != static_cast<uint64_t>(fs.dims[fs.num_dims - 2]) * fs.dims[fs.num_dims - 1]) {
      layout_error(std::string("audio net input ") + shape_str(fs) + " is not [1,n_mels,n_frames]");
    }
    if (!chunked) {
      n_mels = fs.dims[fs.num_dims - 2];
      n_frames = fs.dims[fs.num_dims - 1];
      feat_dt = audio->input_dtypes[0];
      if (!is_float(feat_dt)) layout_error("audio features dtype " + dtype_name(feat_dt) + " is not float");
      has_audio_mask = audio->input_num == 2;
    }
    if (has_audio_mask && !chunked) {
      amask_shape = in_shape(audio, 1);
      amask_dt = audio->input_dtypes[1];
      if (!is_float(amask_dt)) layout_error("audio mask dtype " + dtype_name(amask_dt) + " is not float (additive)");
      int t = amask_shape.dims[amask_shape.num_dims - 1];
      if (t != n_frames && t != (n_frames - 1) / 2 + 1)
        layout_error("audio mask " + shape_str(amask_shape) + ": last dim must be the mel frames (" +
                     std::to_string(n_frames) + ") or the encoder frames (" + std::to_string((n_frames - 1) / 2 + 1) +
                     ")");
    }
    const bm_net_info_t *last = audio;
    if (projector) {
      if (projector->input_num != 1 || projector->output_num < 1) layout_error("projector must have one input");
      if (elements(in_shape(projector, 0)) != elements(out_shape(audio, 0)) ||
          projector->input_dtypes[0] != audio->output_dtypes[0])
        layout_error("projector input " + shape_str(in_shape(projector, 0)) + " does not match audio output " +
                     shape_str(out_shape(audio, 0)));
      last = projector;
    }
    const auto &as = out_shape(last, 0);
    if (as.dims[as.num_dims - 1] != hidden)
      layout_error(std::string("audio embeddings ") + shape_str(as) + " from net " + last->name +
                   " do not have the text hidden size " + std::to_string(hidden));
    audio_rows = static_cast<int>(elements(as) / hidden);
    if (chunked && audio_rows != win_chunks * chunk_rows)
      layout_error("chunked audio net gives " + std::to_string(audio_rows) + " rows, not " +
                   std::to_string(win_chunks) + " chunks x " + std::to_string(chunk_rows) + " rows");
    audio_out_dt = last->output_dtypes[0];
    if (!is_float(audio_out_dt)) layout_error("audio embeddings dtype " + dtype_name(audio_out_dt) + " is not float");

    auto &L = rt.layout_;
    L.seqlen = seqlen;
    L.hidden = hidden;
    L.n_layers = static_cast<int>(blocks.size());
    L.kv_row_bytes = static_cast<int>(kv_row_bytes);
    L.states_dtype = dtype_name(states_dt);
    L.mask_dtype = dtype_name(mask_dt);
    L.kv_dtype = dtype_name(caches[0]->input_dtypes[3]);
    L.lm_head = greedy ? "greedy" : (greedy_head ? "logits+greedy_head" : "logits+host_argmax");
    L.token_logprob = logprob_source();
    L.vocab = vocab;
    L.audio_net = audio->name;
    L.projector_net = projector ? projector->name : "";
    L.n_mels = n_mels;
    L.n_frames = n_frames;
    L.audio_rows = audio_rows;
    L.audio_mask = has_audio_mask ? shape_str(amask_shape) : "";
    L.audio_kind = chunked ? "chunked" : "window";
    L.audio_chunk_frames = chunk_frames;
    L.audio_chunks_per_window = win_chunks;
    L.decode_addr_mode = caches[0]->addr_mode;
    L.batch = batch;
    L.decode_kv = insert ? "insert" : "concat";
    L.kv_capacity = kv_cap;
  }

  void allocate() {
    size_t melt = dtype_size(mask_dt), dmelt = dtype_size(dmask_dt);
    const size_t B = static_cast<size_t>(batch);
    states_buf = alloc(static_cast<size_t>(seqlen) * row_bytes, "allocating the prompt states buffer");
    pos_buf = alloc(static_cast<size_t>(seqlen) * 4, "allocating prefill positions");
    mask_buf = alloc(static_cast<size_t>(seqlen) * seqlen * melt, "allocating the prefill mask");
    // per-row decode state the runtime owns (net io memory may be shared with other nets between steps)
    dpos_buf = alloc(B * 4, "allocating the decode positions");
    dmask_buf = alloc((B * static_cast<size_t>(mlen) * dmelt + 3) / 4 * 4, "allocating the decode masks");  // memset: 4 B units
    tok_buf = alloc(B * 4, "allocating the decode tokens");
    for (auto m : {dpos_buf, dmask_buf, tok_buf}) check(bm_memset_device(handle, 0, m), "clearing decode state");
    for (auto *c : caches) {
      if (c->addr_mode == 1) {
        // io_alone: each decode net owns its input memory, which persists between launches: keep the history there.
        k_store.push_back(c->stages[0].input_mems[3]);
        v_store.push_back(c->stages[0].input_mems[4]);
      } else {
        k_store.push_back(alloc(B * seqlen * kv_row_bytes, "allocating the K cache"));
        v_store.push_back(alloc(B * seqlen * kv_row_bytes, "allocating the V cache"));
      }
      // never-written slots are masked, but must hold finite numbers (0 * NaN is NaN)
      check(bm_memset_device(handle, 0, k_store.back()), "clearing the K cache");
      check(bm_memset_device(handle, 0, v_store.back()), "clearing the V cache");
    }
  }

  // The device memory holding the chosen token ids (INT32, one per row) after lm_head (+ greedy_head), or nullptr
  // when the argmax runs on the host.
  const bm_device_mem_t *token_mem() const {
    if (greedy) return lm_out_dt == BM_INT32 ? &lm->stages[0].output_mems[0] : nullptr;
    return greedy_head ? &greedy_head->stages[0].output_mems[0] : nullptr;
  }

  // A head net that also returns the chosen token's log-probability: a second output, F32, one value per row.
  bool has_logprob_output(const bm_net_info_t *net) const {
    return net && net->output_num >= 2 && net->output_dtypes[1] == BM_FLOAT32 &&
           elements(out_shape(net, 1)) == static_cast<uint64_t>(batch);
  }

  // The device memory holding the chosen tokens' log-probabilities (F32, one per row), or nullptr.
  const bm_device_mem_t *logprob_mem() const {
    const bm_net_info_t *head = greedy ? lm : greedy_head;
    return has_logprob_output(head) ? &head->stages[0].output_mems[1] : nullptr;
  }

  std::string logprob_source() const {
    if (logprob_mem()) return "head";
    return !greedy && !greedy_head ? "host" : "none";
  }

  // After lm_head: the chosen ids of every row into tok_buf (on the device when the argmax runs there), and row
  // `row`'s id to the host. With argmax on the host only that row's scores come up and its id goes back down.
  std::pair<int, float> take_token(int row, bool all_rows) {
    device_argmax(row, all_rows);
    return read_token(row);
  }

  void device_argmax(int row, bool all_rows) {
    const auto &out = lm->stages[0].output_mems[0];
    const size_t B = static_cast<size_t>(batch);
    if (!greedy && greedy_head) {
      auto &gi = greedy_head->stages[0].input_mems[0];
      d2d(gi, 0, out, 0, B * static_cast<size_t>(vocab) * dtype_size(lm_out_dt));
      try {
        launch(greedy_head);
      } catch (const DeviceError &) {
        // a dynamic greedy_head needs the kernel module, which `model_tool --kernel_remove` strips: argmax on host
        greedy_head = nullptr;
        rt.layout_.lm_head = "logits+host_argmax";
        rt.layout_.token_logprob = logprob_source();
      }
    }
    const bm_device_mem_t *tm = token_mem();
    if (tm) {
      if (all_rows) d2d(tok_buf, 0, *tm, 0, B * 4);
      else d2d(tok_buf, static_cast<size_t>(row) * 4, *tm, static_cast<size_t>(row) * 4, 4);
    }
  }

  // Row `row`'s chosen id and its log-probability (NaN when the bmodel's head gives none): 4 + 4 bytes up with a
  // logprob head; with the argmax on the host, the exact log-softmax of the row of scores it reads anyway.
  std::pair<int, float> read_token(int row) {
    const size_t r = static_cast<size_t>(row);
    float logprob = std::numeric_limits<float>::quiet_NaN();
    if (const bm_device_mem_t *lp = logprob_mem()) d2h(&logprob, *lp, r * 4, 4);
    if (token_mem()) {
      int32_t v = 0;
      d2h(&v, tok_buf, r * 4, 4);
      return {v, logprob};
    }
    const auto &out = lm->stages[0].output_mems[0];
    int best = 0;
    if (greedy) {  // an F32 greedy head: the id as a float
      float f = 0;
      d2h(&f, out, r * 4, 4);
      best = static_cast<int>(f);
    } else {
      const size_t esz = dtype_size(lm_out_dt);
      std::vector<uint8_t> buf(static_cast<size_t>(vocab) * esz);
      d2h(buf.data(), out, r * buf.size(), buf.size());
      float best_v = load_float(lm_out_dt, buf.data(), 0);
      for (int i = 1; i < vocab; ++i) {
        float v = load_float(lm_out_dt, buf.data(), static_cast<size_t>(i));
        if (v > best_v) { best_v = v; best = i; }  // first maximum, as torch.argmax
      }
      // log p(best) = -log(sum_i exp(x_i - max)), summed in double
      double sum = 0;
      for (int i = 0; i < vocab; ++i)
        sum += std::exp(static_cast<double>(load_float(lm_out_dt, buf.data(), static_cast<size_t>(i))) - best_v);
      logprob = static_cast<float>(-std::log(sum));
    }
    int32_t t32 = best;
    h2d(tok_buf, r * 4, &t32, 4);  // the next step feeds it to embedding_cache
    return {best, logprob};
  }

  // The chunked encoder's inputs: shapes say K, C, the conv widths and R; every input a float type.
  void introspect_chunked_audio() {
    const auto &fs = in_shape(audio, 0);
    if (fs.dims[1] != 1 || audio->output_num < 1)
      layout_error("chunked audio net input " + shape_str(fs) + " is not [K,1,n_mels,C]");
    chunked = has_audio_mask = true;
    win_chunks = fs.dims[0];
    n_mels = fs.dims[2];
    chunk_frames = fs.dims[3];
    chunk_c1 = conv_len(chunk_frames);
    chunk_c2 = conv_len(chunk_c1);
    chunk_rows = conv_len(chunk_c2);
    n_frames = win_chunks * chunk_frames;
    feat_dt = audio->input_dtypes[0];
    const int want[3] = {win_chunks * chunk_c1, win_chunks * chunk_c2, win_chunks * chunk_rows};
    const char *what[3] = {"conv1_keep", "conv2_keep", "audio_mask"};
    for (int i = 0; i < 4; ++i)
      if (!is_float(audio->input_dtypes[i]))
        layout_error(std::string("chunked audio net input ") + std::to_string(i) + " dtype " +
                     dtype_name(audio->input_dtypes[i]) + " is not float");
    for (int i = 0; i < 3; ++i)
      if (elements(in_shape(audio, i + 1)) != static_cast<uint64_t>(want[i]))
        layout_error(std::string("chunked audio net ") + what[i] + " " + shape_str(in_shape(audio, i + 1)) +
                     " does not hold " + std::to_string(want[i]) + " values for " + std::to_string(win_chunks) +
                     " chunks of " + std::to_string(chunk_frames) + " frames");
    keep_dt[0] = audio->input_dtypes[1];
    keep_dt[1] = audio->input_dtypes[2];
    amask_shape = in_shape(audio, 3);
    amask_dt = audio->input_dtypes[3];
  }

  void h2d_floats(bm_device_mem_t dst, bm_data_type_t dt, const std::vector<float> &v) {
    std::vector<uint8_t> h(v.size() * dtype_size(dt));
    store_floats(dt, v.data(), v.size(), h.data());
    h2d(dst, 0, h.data(), h.size());
  }

  // Copy n rows of the audio embeddings `out` (from row 0) over the prompt states at row `at`.
  void splice_audio_rows(bm_device_mem_t out, int n, int at) {
    size_t n_elems = static_cast<size_t>(n) * hidden;
    if (audio_out_dt == states_dt) {
      d2d(states_buf, static_cast<size_t>(at) * row_bytes, out, 0, n_elems * dtype_size(states_dt));
    } else {  // a bmodel whose audio output was not quantized to the text dtype: convert once per request on host
      std::vector<uint8_t> a(n_elems * dtype_size(audio_out_dt));
      d2h(a.data(), out, 0, a.size());
      std::vector<float> f(n_elems);
      for (size_t i = 0; i < n_elems; ++i) f[i] = load_float(audio_out_dt, a.data(), i);
      std::vector<uint8_t> s(n_elems * dtype_size(states_dt));
      store_floats(states_dt, f.data(), n_elems, s.data());
      h2d(states_buf, static_cast<size_t>(at) * row_bytes, s.data(), s.size());
    }
  }

  // Chunked encoder: features [n_mels, width] (valid frames first) cut into chunks of C frames, K chunks per
  // launch (one attention window of the reference encoder); each window's valid rows go to the next prompt rows.
  // The convolutions see zero-padded frames past a partial chunk, except in a clip of one chunk, whose conv1/conv2
  // outputs past its own length are zeroed (the reference pads a clip's chunks only to its longest chunk).
  void encode_chunked_audio(const std::vector<float> &features, int width, int n_valid_frames, int at) {
    const auto &st = audio->stages[0];
    const int K = win_chunks, C = chunk_frames, M = n_mels;
    const int n_chunks = (n_valid_frames + C - 1) / C;
    const bool one_chunk = n_chunks == 1;
    int done = 0;
    for (int first = 0; first < n_chunks; first += K) {
      std::vector<float> mel(static_cast<size_t>(K) * M * C, 0.0f);
      std::vector<float> keep1(static_cast<size_t>(K) * chunk_c1, 0.0f), keep2(static_cast<size_t>(K) * chunk_c2, 0.0f);
      std::vector<float> mask(static_cast<size_t>(K) * chunk_rows, audio_mask_value);
      int rows = 0;
      for (int k = 0; k < K && first + k < n_chunks; ++k) {
        const int start = (first + k) * C, w = std::min(C, n_valid_frames - start);
        for (int m = 0; m < M; ++m)
          std::copy_n(features.data() + static_cast<size_t>(m) * width + start, w,
                      mel.data() + (static_cast<size_t>(k) * M + m) * C);
        const int k1 = one_chunk ? conv_len(w) : chunk_c1, k2 = one_chunk ? conv_len(conv_len(w)) : chunk_c2;
        std::fill_n(keep1.begin() + static_cast<size_t>(k) * chunk_c1, k1, 1.0f);
        std::fill_n(keep2.begin() + static_cast<size_t>(k) * chunk_c2, k2, 1.0f);
        rows += conv_len(conv_len(conv_len(w)));  // only the clip's last chunk is partial: the rows are a prefix
      }
      std::fill_n(mask.begin(), rows, 0.0f);
      h2d_floats(st.input_mems[0], feat_dt, mel);
      h2d_floats(st.input_mems[1], keep_dt[0], keep1);
      h2d_floats(st.input_mems[2], keep_dt[1], keep2);
      h2d_floats(st.input_mems[3], amask_dt, mask);
      launch(audio);
      splice_audio_rows(st.output_mems[0], rows, at + done);
      done += rows;
    }
  }

  // Run the audio net (+ projector) and copy its first n rows over the prompt states at row `at`.
  void encode_audio(const std::vector<float> &features, int width, int n_valid_frames, int n_audio, int at) {
    if (chunked) return encode_chunked_audio(features, width, n_valid_frames, at);
    const auto &st = audio->stages[0];
    size_t n_feat = static_cast<size_t>(n_mels) * n_frames;
    std::vector<uint8_t> host(n_feat * dtype_size(feat_dt));
    store_floats(feat_dt, features.data(), n_feat, host.data());
    h2d(st.input_mems[0], 0, host.data(), host.size());
    if (has_audio_mask) {
      int t = amask_shape.dims[amask_shape.num_dims - 1];
      int valid = t == n_frames ? n_valid_frames : (n_valid_frames - 1) / 2 + 1;
      size_t n = elements(amask_shape);
      std::vector<float> m(n);
      for (size_t i = 0; i < n; ++i) m[i] = static_cast<int>(i % t) < valid ? 0.0f : audio_mask_value;
      std::vector<uint8_t> mh(n * dtype_size(amask_dt));
      store_floats(amask_dt, m.data(), n, mh.data());
      h2d(st.input_mems[1], 0, mh.data(), mh.size());
    }
    launch(audio);
    bm_device_mem_t out = st.output_mems[0];
    if (projector) {
      d2d(projector->stages[0].input_mems[0], 0, out, 0, bm_mem_get_device_size(projector->stages[0].input_mems[0]));
      launch(projector);
      out = projector->stages[0].output_mems[0];
    }
    splice_audio_rows(out, n_audio, at);
  }

  float audio_mask_value = -10000.0f;
};

Runtime::Runtime(const std::string &bmodel_path, int device_id, RuntimeOptions options)
    : impl_(std::make_unique<Impl>(*this)), device_id_(device_id) {
  auto &I = *impl_;
  I.path = bmodel_path;
  I.audio_mask_value = options.audio_mask_value;
  if (!std::ifstream(bmodel_path).good()) throw std::invalid_argument("bmodel not found or unreadable: " + bmodel_path);
  bm_status_t s = bm_dev_request(&I.handle, device_id);
  if (s != BM_SUCCESS) {
    I.handle = nullptr;
    throw DeviceError("cannot open BM1684X device " + std::to_string(device_id) + " (bm_dev_request returned " +
                      std::to_string(s) + ")");
  }
  I.bmrt = bmrt_create(I.handle);
  if (!I.bmrt) throw DeviceError("bmrt_create failed on device " + std::to_string(device_id));
  if (options.share_mem) bmrt_set_flags(I.bmrt, BM_RUNTIME_SHARE_MEM);
  if (!bmrt_load_bmodel(I.bmrt, bmodel_path.c_str()))
    throw DeviceError("bmrt_load_bmodel failed for " + bmodel_path + " (not a bmodel for this chip/runtime?)");
  I.introspect();
  I.allocate();
  slots_.resize(static_cast<size_t>(I.batch));
}

Runtime::~Runtime() = default;

void Runtime::check_request(const std::vector<float> &features, int n_mels, int n_frames, int n_valid_frames,
                            const std::vector<int> &prompt_ids, int audio_token_id, int n_audio_tokens,
                            int max_new_tokens) const {
  const auto &I = *impl_;
  if (I.chunked ? n_mels != I.n_mels : (n_mels != I.n_mels || n_frames != I.n_frames))
    throw std::invalid_argument("features are [" + std::to_string(n_mels) + "," + std::to_string(n_frames) +
                                "]; the audio net takes [" + std::to_string(I.n_mels) + "," +
                                (I.chunked ? std::string("any number of frames") : std::to_string(I.n_frames)) + "]");
  if (features.size() != static_cast<size_t>(n_mels) * n_frames)
    throw std::invalid_argument("features size does not match n_mels x n_frames");
  if (n_valid_frames < 1 || n_valid_frames > n_frames)
    throw std::invalid_argument("n_valid_frames " + std::to_string(n_valid_frames) + " outside 1.." +
                                std::to_string(n_frames));
  if (max_new_tokens < 1) throw std::invalid_argument("max_new_tokens must be >= 1");
  if (n_audio_tokens < 1) throw std::invalid_argument("n_audio_tokens must be >= 1");
  if (std::count(prompt_ids.begin(), prompt_ids.end(), audio_token_id) != 1)
    throw std::invalid_argument("prompt_ids must hold the audio token id " + std::to_string(audio_token_id) +
                                " exactly once");
  for (int id : prompt_ids)
    if (id < 0) throw std::invalid_argument("negative token id " + std::to_string(id) + " in prompt_ids");
  const int L = static_cast<int>(prompt_ids.size()) - 1 + n_audio_tokens;
  if (I.chunked && n_audio_tokens != chunked_audio_tokens(n_valid_frames, I.chunk_frames))
    throw std::invalid_argument("n_audio_tokens " + std::to_string(n_audio_tokens) + " disagrees with " +
                                std::to_string(n_valid_frames) + " valid frames in chunks of " +
                                std::to_string(I.chunk_frames) + " (" +
                                std::to_string(chunked_audio_tokens(n_valid_frames, I.chunk_frames)) + " tokens)");
  if (!I.chunked && n_audio_tokens > I.audio_rows)
    throw TooLong("audio of " + std::to_string(n_audio_tokens) + " tokens exceeds the audio net's " +
                  std::to_string(I.audio_rows) + " (" + std::to_string(I.n_frames) + " mel frames)");
  if (L + 1 > I.kv_cap)
    throw TooLong("prompt of " + std::to_string(L) + " tokens (" + std::to_string(n_audio_tokens) +
                  " audio) leaves no room for an answer within SEQLEN " + std::to_string(I.seqlen) +
                  (I.kv_cap < I.seqlen ? " (" + std::to_string(I.kv_cap) + " usable: the batched decode nets keep "
                                         "the last slot for the current token)" : ""));
}

int Runtime::start(const std::vector<float> &features, int n_mels, int n_frames, int n_valid_frames,
                   const std::vector<int> &prompt_ids, int audio_token_id, int n_audio_tokens,
                   const std::vector<int> &stop_ids, int max_new_tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  return start_locked(features, n_mels, n_frames, n_valid_frames, prompt_ids, audio_token_id, n_audio_tokens,
                      stop_ids, max_new_tokens);
}

int Runtime::start_locked(const std::vector<float> &features, int n_mels, int n_frames, int n_valid_frames,
                          const std::vector<int> &prompt_ids, int audio_token_id, int n_audio_tokens,
                          const std::vector<int> &stop_ids, int max_new_tokens) {
  auto &I = *impl_;
  const int S = I.seqlen;
  check_request(features, n_mels, n_frames, n_valid_frames, prompt_ids, audio_token_id, n_audio_tokens,
                max_new_tokens);
  int r = -1;
  for (int i = 0; i < I.batch; ++i)
    if (slots_[static_cast<size_t>(i)].state == SlotState::Free) { r = i; break; }
  if (r < 0)
    throw std::logic_error("all " + std::to_string(I.batch) + " slots are busy: finish() one before start()");
  const size_t row = static_cast<size_t>(r);
  const int at = static_cast<int>(std::find(prompt_ids.begin(), prompt_ids.end(), audio_token_id) - prompt_ids.begin());
  const int L = static_cast<int>(prompt_ids.size()) - 1 + n_audio_tokens;

  Slot &sl = slots_[row];
  sl = Slot{};
  sl.state = SlotState::Decoding;  // reserved; reset to Free below if the device fails
  sl.stop_ids = stop_ids;
  sl.max_new_tokens = max_new_tokens;
  Generation &g = sl.g;
  g.slot = r;
  g.prompt_len = L;
  const Counters start = counters_;
  const auto t0 = Clock::now();
  try {
    // 1. text embeddings of the whole padded prompt (audio slots get id 0, overwritten below)
    std::vector<int32_t> ids(static_cast<size_t>(S), 0);
    for (int i = 0, j = 0; i < static_cast<int>(prompt_ids.size()); ++i) {
      if (i == at) { j += n_audio_tokens; continue; }
      ids[static_cast<size_t>(j++)] = prompt_ids[static_cast<size_t>(i)];
    }
    I.h2d(I.embed->stages[0].input_mems[0], 0, ids.data(), ids.size() * 4);
    I.launch(I.embed);
    I.d2d(I.states_buf, 0, I.embed->stages[0].output_mems[0], 0, static_cast<size_t>(S) * I.row_bytes);

    // 2. audio encoder + projector, spliced over the <|AUDIO|> slots on the device
    const auto ta = Clock::now();
    I.encode_audio(features, static_cast<int>(features.size()) / I.n_mels, n_valid_frames, n_audio_tokens, at);
    g.encode_s = seconds_since(ta);

    // 3. causal prefill, positions 0..L-1; prompt K/V into this slot's rows of the decode history
    std::vector<int32_t> pos(static_cast<size_t>(S), 0);
    for (int i = 0; i < L; ++i) pos[static_cast<size_t>(i)] = i;
    I.h2d(I.pos_buf, 0, pos.data(), pos.size() * 4);
    {
      std::vector<uint8_t> mask(static_cast<size_t>(S) * S * dtype_size(I.mask_dt));
      for (int i = 0; i < S; ++i)
        for (int j = 0; j < S; ++j)
          fill_mask_value(I.mask_dt, mask.data(), static_cast<size_t>(i) * S + j, !(j <= i && i < L));
      I.h2d(I.mask_buf, 0, mask.data(), mask.size());
    }
    bm_device_mem_t cur = I.states_buf;
    for (size_t l = 0; l < I.blocks.size(); ++l) {
      auto *b = I.blocks[l];
      const auto &st = b->stages[0];
      I.d2d(st.input_mems[0], 0, cur, 0, static_cast<size_t>(S) * I.row_bytes);
      I.d2d(st.input_mems[1], 0, I.pos_buf, 0, static_cast<size_t>(S) * 4);
      I.d2d(st.input_mems[2], 0, I.mask_buf, 0, static_cast<size_t>(S) * S * dtype_size(I.mask_dt));
      I.launch(b);
      cur = st.output_mems[0];
      I.copy_kv(I.k_store[l], I.kv_hist[0], r, 0, st.output_mems[1], I.kv_prefill[0], 0, 0, L);
      I.copy_kv(I.v_store[l], I.kv_hist[1], r, 0, st.output_mems[2], I.kv_prefill[1], 0, 0, L);
    }
    // 4. first token from the last real position, through this slot's row of lm_head
    I.d2d(I.lm->stages[0].input_mems[0], row * I.row_bytes, cur, static_cast<size_t>(L - 1) * I.row_bytes,
          I.row_bytes);
    I.launch(I.lm);
    const auto [tok, logprob] = I.take_token(r, false);
    g.has_logprobs = I.logprob_source() != "none";  // after the head's first launch (a failing greedy_head -> host)
    g.ttft_s = seconds_since(t0);
    g.prefill_s = g.ttft_s - g.encode_s;

    // this row's decode mask: the prompt's slots visible, the rest hidden, the current token's slot (the last)
    // visible. Uploaded once; each step then reveals one more slot (2-4 bytes).
    const size_t delt = dtype_size(I.dmask_dt);
    std::vector<uint8_t> dm(static_cast<size_t>(I.mlen) * delt);
    for (int j = 0; j < I.mlen; ++j)
      fill_mask_value(I.dmask_dt, dm.data(), static_cast<size_t>(j), j >= L && j < I.mlen - 1);
    I.h2d(I.dmask_buf, row * dm.size(), dm.data(), dm.size());
    g.prefill = minus(counters_, start);
    accept(r, tok, logprob);
  } catch (...) {
    sl = Slot{};
    throw;
  }
  return r;
}

// One generated token of slot r: stop, record, or keep decoding (or overrun SEQLEN).
void Runtime::accept(int r, int tok, float logprob) {
  Slot &sl = slots_[static_cast<size_t>(r)];
  Generation &g = sl.g;
  if (std::find(sl.stop_ids.begin(), sl.stop_ids.end(), tok) != sl.stop_ids.end()) {
    g.finish_reason = "eos";
    g.stop_id = tok;
    sl.state = SlotState::Done;
    return;
  }
  g.tokens.push_back(tok);
  if (g.has_logprobs) g.logprobs.push_back(logprob);
  if (static_cast<int>(g.tokens.size()) >= sl.max_new_tokens) {
    g.finish_reason = "max_tokens";
    sl.state = SlotState::Done;
    return;
  }
  const int q = g.prompt_len + static_cast<int>(g.tokens.size()) - 1;  // position of the token fed back
  if (q >= impl_->kv_cap) {
    sl.state = SlotState::TooLong;
    sl.error = "answer reached SEQLEN " + std::to_string(impl_->seqlen) + " (prompt " + std::to_string(g.prompt_len) +
               " tokens, " + std::to_string(g.tokens.size()) + " generated) without a stop token";
  }
}

std::vector<int> Runtime::step() {
  std::lock_guard<std::mutex> lock(mu_);
  return step_locked();
}

std::vector<int> Runtime::step_locked() {
  auto &I = *impl_;
  const size_t B = static_cast<size_t>(I.batch);
  std::vector<int> rows;
  for (int i = 0; i < I.batch; ++i)
    if (slots_[static_cast<size_t>(i)].state == SlotState::Decoding) rows.push_back(i);
  if (rows.empty()) return {};
  const auto ts = Clock::now();
  const Counters before = counters_;
  Counters own;  // row-specific transfers, attributed to their slot below
  std::vector<Counters> per_row(B);
  auto row_transfer = [&](int r, const std::function<void()> &fn) {
    const Counters c0 = counters_;
    fn();
    const Counters d = minus(counters_, c0);
    per_row[static_cast<size_t>(r)] = plus(per_row[static_cast<size_t>(r)], d);
    own = plus(own, d);
  };

  const size_t delt = dtype_size(I.dmask_dt);
  const std::vector<uint8_t> visible(delt, 0);
  auto &ec = I.embed_cache->stages[0];
  I.d2d(ec.input_mems[0], 0, I.tok_buf, 0, B * 4);  // the tokens never leave the device on their way back in
  I.launch(I.embed_cache);
  bm_device_mem_t cur = ec.output_mems[0];
  std::vector<int> qs(B, 0);
  for (int r : rows) {
    const Slot &sl = slots_[static_cast<size_t>(r)];
    const int L = sl.g.prompt_len;
    const int q = L + static_cast<int>(sl.g.tokens.size()) - 1;
    qs[static_cast<size_t>(r)] = q;
    row_transfer(r, [&] {
      int32_t q32 = q;
      I.h2d(I.dpos_buf, static_cast<size_t>(r) * 4, &q32, 4);
      if (q > L) I.h2d(I.dmask_buf, (static_cast<size_t>(r) * I.mlen + (q - 1)) * delt, visible.data(), delt);
    });
  }
  for (size_t l = 0; l < I.caches.size(); ++l) {
    auto *c = I.caches[l];
    const auto &st = c->stages[0];
    I.d2d(st.input_mems[0], 0, cur, 0, B * I.row_bytes);
    I.d2d(st.input_mems[1], 0, I.dpos_buf, 0, B * 4);
    I.d2d(st.input_mems[2], 0, I.dmask_buf, 0, B * static_cast<size_t>(I.mlen) * delt);
    if (c->addr_mode == 1)
      I.launch(c);
    else
      I.launch(c, {{3, I.k_store[l]}, {4, I.v_store[l]}});
    cur = st.output_mems[0];
    // each row's new K/V to that row's own position
    for (int r : rows) {
      const int q = qs[static_cast<size_t>(r)];
      I.copy_kv(I.k_store[l], I.kv_hist[0], r, q, st.output_mems[1], I.kv_new[0], r, 0, 1);
      I.copy_kv(I.v_store[l], I.kv_hist[1], r, q, st.output_mems[2], I.kv_new[1], r, 0, 1);
    }
  }
  I.d2d(I.lm->stages[0].input_mems[0], 0, cur, 0, B * I.row_bytes);
  I.launch(I.lm);
  I.device_argmax(0, true);
  std::vector<std::pair<int, float>> toks(B, {-1, 0.0f});
  for (int r : rows) row_transfer(r, [&] { toks[static_cast<size_t>(r)] = I.read_token(r); });
  const double dt = seconds_since(ts);
  const Counters shared = minus(minus(counters_, before), own);  // launches and d2d copies serve every row
  std::vector<int> finished;
  for (int r : rows) {
    Slot &sl = slots_[static_cast<size_t>(r)];
    sl.g.step_s.push_back(dt);
    sl.g.decode = plus(sl.g.decode, plus(shared, per_row[static_cast<size_t>(r)]));
    accept(r, toks[static_cast<size_t>(r)].first, toks[static_cast<size_t>(r)].second);
    if (sl.state != SlotState::Decoding) finished.push_back(r);
  }
  return finished;
}

Generation Runtime::finish(int slot) {
  std::lock_guard<std::mutex> lock(mu_);
  return finish_locked(slot);
}

Generation Runtime::finish_locked(int slot) {
  if (slot < 0 || slot >= impl_->batch) throw std::out_of_range("slot " + std::to_string(slot) + " out of range");
  Slot &sl = slots_[static_cast<size_t>(slot)];
  if (sl.state == SlotState::Free) throw std::logic_error("slot " + std::to_string(slot) + " holds no request");
  if (sl.state == SlotState::Decoding)
    throw std::logic_error("slot " + std::to_string(slot) + " is still decoding: step() until it is done, or cancel()");
  const SlotState state = sl.state;
  Generation g = std::move(sl.g);
  std::string error = std::move(sl.error);
  sl = Slot{};
  if (state == SlotState::TooLong) throw TooLong(error);
  return g;
}

void Runtime::cancel(int slot) {
  std::lock_guard<std::mutex> lock(mu_);
  if (slot < 0 || slot >= impl_->batch) throw std::out_of_range("slot " + std::to_string(slot) + " out of range");
  slots_[static_cast<size_t>(slot)] = Slot{};
}

std::string Runtime::state(int slot) const {
  if (slot < 0 || slot >= impl_->batch) throw std::out_of_range("slot " + std::to_string(slot) + " out of range");
  switch (slots_[static_cast<size_t>(slot)].state) {
    case SlotState::Free: return "free";
    case SlotState::Decoding: return "decoding";
    case SlotState::Done: return "done";
    case SlotState::TooLong: return "too_long";
  }
  return "?";
}

int Runtime::free_slots() const {
  int n = 0;
  for (const auto &s : slots_) n += s.state == SlotState::Free;
  return n;
}

// Batch 1 is the special case of the steps: start, step until this slot is done, finish.
Generation Runtime::generate(const std::vector<float> &features, int n_mels, int n_frames, int n_valid_frames,
                             const std::vector<int> &prompt_ids, int audio_token_id, int n_audio_tokens,
                             const std::vector<int> &stop_ids, int max_new_tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  const int r = start_locked(features, n_mels, n_frames, n_valid_frames, prompt_ids, audio_token_id, n_audio_tokens,
                             stop_ids, max_new_tokens);
  while (slots_[static_cast<size_t>(r)].state == SlotState::Decoding) step_locked();
  return finish_locked(r);
}

std::vector<float> Runtime::encode(const std::vector<float> &features, int n_mels, int n_frames, int n_valid_frames,
                                   int n_audio_tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  auto &I = *impl_;
  check_request(features, n_mels, n_frames, n_valid_frames, {0}, 0, n_audio_tokens, 1);
  I.encode_audio(features, static_cast<int>(features.size()) / I.n_mels, n_valid_frames, n_audio_tokens, 0);
  const size_t n = static_cast<size_t>(n_audio_tokens) * I.hidden;
  std::vector<uint8_t> raw(n * dtype_size(I.states_dt));
  I.d2h(raw.data(), I.states_buf, 0, raw.size());
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = load_float(I.states_dt, raw.data(), i);
  return out;
}

}  // namespace tbn
