#include "runtime.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <utility>

#include "audio_net.h"
#include "device.h"
#include "dtype.h"
#include "nets.h"
#include "text_nets.h"

namespace tbn {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string str(int v) { return std::to_string(v); }

// `value` as one element of dtype t (the bytes a mask slot holds).
std::vector<uint8_t> encoded(bm_data_type_t t, float value) {
  std::vector<uint8_t> b(dtype_size(t));
  store_floats(t, &value, 1, b.data());
  return b;
}

}  // namespace

struct Runtime::Impl {
  Impl(const std::string &bmodel_path, int device_id, const RuntimeOptions &o)
      : dev(device_id, o.share_mem), path(bmodel_path), mask_value(o.mask_value) {}

  Device dev;  // destroyed last: everything below only points into its memory and bmruntime
  std::string path;
  float mask_value;
  std::unique_ptr<NetSet> nets;
  TextNets text;
  std::unique_ptr<AudioNet> audio;
  std::vector<uint8_t> hidden_mask, hidden_dmask;  // mask_value in the prefill / decode mask dtype

  bm_device_mem_t states_buf{}, pos_buf{}, mask_buf{}, dpos_buf{}, dmask_buf{}, tok_buf{};
  std::vector<bm_device_mem_t> k_store, v_store;

  // The nets, recognised by structure: the text side, then the audio net (audio_net.h); the masks' hidden value
  // checked against every mask dtype.
  void recognise() {
    nets = std::make_unique<NetSet>(dev.bmrt(), path);
    text = recognise_text_nets(*nets);
    audio = recognise_audio_net(*nets, text.hidden, mask_value);
    nets->check_mask_value(text.blocks[0], 2, mask_value);
    nets->check_mask_value(text.caches[0], 2, mask_value);
    hidden_mask = encoded(text.mask_dt, mask_value);
    hidden_dmask = encoded(text.dmask_dt, mask_value);
  }

  void describe(Layout &L) const {
    const auto &t = text;
    L.seqlen = t.seqlen;
    L.prefill_len = t.prefill_len;
    L.position_rows = t.pos_rows;
    L.hidden = t.hidden;
    L.n_layers = static_cast<int>(t.blocks.size());
    L.kv_row_bytes = static_cast<int>(t.kv_row_bytes);
    L.states_dtype = dtype_name(t.states_dt);
    L.mask_dtype = dtype_name(t.mask_dt);
    L.kv_dtype = dtype_name(t.caches[0]->input_dtypes[3]);
    L.lm_head = t.head_kind();
    L.token_logprob = t.logprob_source();
    L.vocab = t.vocab;
    audio->describe(L);
    L.decode_addr_mode = t.caches[0]->addr_mode;
    L.batch = t.batch;
    L.decode_kv = t.insert ? "insert" : "concat";
    L.kv_capacity = t.kv_cap;
    L.mask_value = mask_value;
  }

  void allocate() {
    const auto &t = text;
    const size_t melt = dtype_size(t.mask_dt), dmelt = dtype_size(t.dmask_dt);
    const size_t B = static_cast<size_t>(t.batch), S = static_cast<size_t>(t.seqlen);
    const size_t M = static_cast<size_t>(t.prefill_len);
    states_buf = dev.alloc(M * t.row_bytes, "allocating the prompt states buffer");
    const size_t P = static_cast<size_t>(t.pos_rows);
    pos_buf = dev.alloc(P * M * 4, "allocating prefill positions");
    mask_buf = dev.alloc(M * M * melt, "allocating the prefill mask");
    // per-row decode state the runtime owns (net io memory may be shared with other nets between steps)
    dpos_buf = dev.alloc(P * B * 4, "allocating the decode positions");
    dmask_buf = dev.alloc((B * static_cast<size_t>(t.mlen) * dmelt + 3) / 4 * 4, "allocating the decode masks");
    tok_buf = dev.alloc(B * 4, "allocating the decode tokens");
    for (auto m : {dpos_buf, dmask_buf, tok_buf}) dev.clear(m, "clearing decode state");
    for (auto *c : t.caches) {
      if (c->addr_mode == 1) {
        // io_alone: each decode net owns its input memory, which persists between launches: keep the history there.
        k_store.push_back(c->stages[0].input_mems[3]);
        v_store.push_back(c->stages[0].input_mems[4]);
      } else {
        k_store.push_back(dev.alloc(B * S * t.kv_row_bytes, "allocating the K cache"));
        v_store.push_back(dev.alloc(B * S * t.kv_row_bytes, "allocating the V cache"));
      }
      // never-written slots are masked, but must hold finite numbers (0 * NaN is NaN)
      dev.clear(k_store.back(), "clearing the K cache");
      dev.clear(v_store.back(), "clearing the V cache");
    }
  }

  // n mask slots from `first`: hidden (mask_value) or visible (0), in the mask's dtype.
  static void fill_mask(std::vector<uint8_t> &mask, size_t first, size_t n, const std::vector<uint8_t> &hidden) {
    for (size_t i = first; i < first + n; ++i) std::memcpy(mask.data() + i * hidden.size(), hidden.data(), hidden.size());
  }

  // Copy n positions (all heads) from src row sr, position sp to dst row dr, position dp: one d2d when outer == 1
  // (outer = heads before the sequence dim, per row).
  void copy_kv(bm_device_mem_t dst, const KvLayout &dl, int dr, int dp, bm_device_mem_t src, const KvLayout &sl,
               int sr, int sp, int n) {
    for (size_t o = 0; o < dl.outer; ++o)
      dev.d2d(dst, ((dr * dl.outer + o) * dl.seq + dp) * dl.inner_bytes, src,
              ((sr * sl.outer + o) * sl.seq + sp) * sl.inner_bytes, n * dl.inner_bytes);
  }

  // Rows [from, from + n) of an audio net's output `mem` (dtype dt) over the prompt states at row `at`: on the
  // device, or converted through the host once per request if the audio output dtype is not the text dtype.
  void splice_rows(bm_device_mem_t mem, bm_data_type_t dt, int from, int n, int at) {
    if (n <= 0) return;
    const size_t n_elems = static_cast<size_t>(n) * text.hidden, row_elems = static_cast<size_t>(text.hidden);
    if (dt == text.states_dt) {
      dev.d2d(states_buf, static_cast<size_t>(at) * text.row_bytes, mem, static_cast<size_t>(from) * text.row_bytes,
              n_elems * dtype_size(dt));
      return;
    }
    std::vector<uint8_t> a(n_elems * dtype_size(dt));
    dev.d2h(a.data(), mem, static_cast<size_t>(from) * row_elems * dtype_size(dt), a.size());
    std::vector<float> f(n_elems);
    for (size_t i = 0; i < n_elems; ++i) f[i] = load_float(dt, a.data(), i);
    std::vector<uint8_t> s(n_elems * dtype_size(text.states_dt));
    store_floats(text.states_dt, f.data(), n_elems, s.data());
    dev.h2d(states_buf, static_cast<size_t>(at) * text.row_bytes, s.data(), s.size());
  }

  // The audio net over the request's audio; its rows over the prompt states from row `at`, in order.
  void encode_audio(const Request &r, int at) {
    int next = at;
    audio->encode(dev, r.features, r.width, r.audio, [&](bm_device_mem_t mem, bm_data_type_t dt, int from, int n) {
      splice_rows(mem, dt, from, n, next);
      next += n;
    });
  }

  // After lm_head: the chosen ids of every row into tok_buf (on the device when the argmax runs there), and row
  // `row`'s id to the host. With argmax on the host only that row's scores come up and its id goes back down.
  std::pair<int, float> take_token(Layout &layout, int row, bool all_rows) {
    device_argmax(layout, row, all_rows);
    return read_token(row);
  }

  void device_argmax(Layout &layout, int row, bool all_rows) {
    const auto &out = text.lm->stages[0].output_mems[0];
    const size_t B = static_cast<size_t>(text.batch);
    if (!text.greedy && text.greedy_head) {
      auto &gi = text.greedy_head->stages[0].input_mems[0];
      dev.d2d(gi, 0, out, 0, B * static_cast<size_t>(text.vocab) * dtype_size(text.lm_out_dt));
      try {
        dev.launch(text.greedy_head);
      } catch (const DeviceError &) {
        // a dynamic greedy_head needs the kernel module, which `model_tool --kernel_remove` strips: argmax on host
        text.greedy_head = nullptr;
        layout.lm_head = text.head_kind();
        layout.token_logprob = text.logprob_source();
      }
    }
    if (const bm_device_mem_t *tm = text.token_mem()) {
      if (all_rows) dev.d2d(tok_buf, 0, *tm, 0, B * 4);
      else dev.d2d(tok_buf, static_cast<size_t>(row) * 4, *tm, static_cast<size_t>(row) * 4, 4);
    }
  }

  // Row `row`'s chosen id and its log-probability (NaN when the bmodel's head gives none): 4 + 4 bytes up with a
  // logprob head; with the argmax on the host, the exact log-softmax of the row of scores it reads anyway.
  std::pair<int, float> read_token(int row) {
    const size_t r = static_cast<size_t>(row);
    float logprob = std::numeric_limits<float>::quiet_NaN();
    if (const bm_device_mem_t *lp = text.logprob_mem()) dev.d2h(&logprob, *lp, r * 4, 4);
    if (text.token_mem()) {
      int32_t v = 0;
      dev.d2h(&v, tok_buf, r * 4, 4);
      return {v, logprob};
    }
    const auto &out = text.lm->stages[0].output_mems[0];
    int best = 0;
    if (text.greedy) {  // an F32 greedy head: the id as a float
      float f = 0;
      dev.d2h(&f, out, r * 4, 4);
      best = static_cast<int>(f);
    } else {
      const bm_data_type_t dt = text.lm_out_dt;
      std::vector<uint8_t> buf(static_cast<size_t>(text.vocab) * dtype_size(dt));
      dev.d2h(buf.data(), out, r * buf.size(), buf.size());
      float best_v = load_float(dt, buf.data(), 0);
      for (int i = 1; i < text.vocab; ++i) {
        float v = load_float(dt, buf.data(), static_cast<size_t>(i));
        if (v > best_v) { best_v = v; best = i; }  // first maximum, as torch.argmax
      }
      // log p(best) = -log(sum_i exp(x_i - max)), summed in double
      double sum = 0;
      for (int i = 0; i < text.vocab; ++i)
        sum += std::exp(static_cast<double>(load_float(dt, buf.data(), static_cast<size_t>(i))) - best_v);
      logprob = static_cast<float>(-std::log(sum));
    }
    int32_t t32 = best;
    dev.h2d(tok_buf, r * 4, &t32, 4);  // the next step feeds it to embedding_cache
    return {best, logprob};
  }
};

Runtime::Runtime(const std::string &bmodel_path, int device_id, RuntimeOptions options) : device_id_(device_id) {
  if (!std::ifstream(bmodel_path).good()) throw std::invalid_argument("bmodel not found or unreadable: " + bmodel_path);
  if (!std::isfinite(options.mask_value) || !(options.mask_value < 0))
    throw std::invalid_argument("mask_value " + float_str(options.mask_value) +
                                ": the masks' hidden value must be finite and negative");
  impl_ = std::make_unique<Impl>(bmodel_path, device_id, options);
  auto &I = *impl_;
  I.dev.load(bmodel_path);
  I.recognise();
  nets_ = I.nets->summaries();
  I.describe(layout_);
  I.allocate();
  slots_.resize(static_cast<size_t>(I.text.batch));
}

Runtime::~Runtime() = default;

Counters Runtime::counters() const { return impl_->dev.counters(); }

int Runtime::check_request(const Request &r) const {
  const auto &I = *impl_;
  if (r.n_mels < 1 || r.width < 1 || r.features.size() != static_cast<size_t>(r.n_mels) * r.width)
    throw std::invalid_argument("features hold " + std::to_string(r.features.size()) + " values, not n_mels " +
                                str(r.n_mels) + " x width " + str(r.width));
  if (r.audio.empty()) throw std::invalid_argument("no audio chunks");
  long tokens = 0;  // summed before the audio net bounds each chunk's rows
  for (size_t i = 0; i < r.audio.size(); ++i) {
    const AudioChunk &c = r.audio[i];
    if (c.frames < 1 || c.keys < 0 || c.rows < 0)
      throw std::invalid_argument("audio chunk " + str(static_cast<int>(i)) + ": " + str(c.frames) + " frames, " +
                                  str(c.keys) + " keys, " + str(c.rows) + " rows (frames >= 1, keys and rows >= 0)");
    tokens += c.rows;
  }
  I.audio->check(r.n_mels, r.width, r.audio);
  if (tokens < 1) throw std::invalid_argument("the audio chunks yield no audio token");
  if (r.max_new_tokens < 1) throw std::invalid_argument("max_new_tokens must be >= 1");
  if (std::count(r.prompt_ids.begin(), r.prompt_ids.end(), r.audio_token_id) != 1)
    throw std::invalid_argument("prompt_ids must hold the audio token id " + str(r.audio_token_id) + " exactly once");
  for (int id : r.prompt_ids)
    if (id < 0) throw std::invalid_argument("negative token id " + str(id) + " in prompt_ids");
  const int L = static_cast<int>(r.prompt_ids.size()) - 1 + static_cast<int>(tokens);
  if (L + 1 > I.text.kv_cap)
    throw TooLong("prompt of " + str(L) + " tokens (" + std::to_string(tokens) + " audio) leaves no room for an answer within "
                  "SEQLEN " + str(I.text.seqlen) +
                  (I.text.kv_cap < I.text.seqlen ? " (" + str(I.text.kv_cap) + " usable: the batched decode nets keep "
                                                   "the last slot for the current token)" : ""));
  if (L > I.text.prefill_len)
    throw TooLong("prompt of " + str(L) + " tokens (" + std::to_string(tokens) + " audio) exceeds the " +
                  str(I.text.prefill_len) + " positions one prefill takes (the bmodel's input length)");
  return L;
}

int Runtime::start(const Request &request) {
  std::lock_guard<std::mutex> lock(mu_);
  return start_locked(request);
}

int Runtime::start_locked(const Request &req) {
  auto &I = *impl_;
  const auto &T = I.text;
  const int M = T.prefill_len;
  const int L = check_request(req);
  int r = -1;
  for (int i = 0; i < T.batch; ++i)
    if (slots_[static_cast<size_t>(i)].state == SlotState::Free) { r = i; break; }
  if (r < 0) throw std::logic_error("all " + str(T.batch) + " slots are busy: finish() one before start()");
  const size_t row = static_cast<size_t>(r);
  const auto &prompt = req.prompt_ids;
  const int at = static_cast<int>(std::find(prompt.begin(), prompt.end(), req.audio_token_id) - prompt.begin());
  const int n_audio = L - (static_cast<int>(prompt.size()) - 1);

  Slot &sl = slots_[row];
  sl = Slot{};
  sl.state = SlotState::Decoding;  // reserved; reset to Free below if the device fails
  sl.stop_ids = req.stop_ids;
  sl.max_new_tokens = req.max_new_tokens;
  Generation &g = sl.g;
  g.slot = r;
  g.prompt_len = L;
  const Counters start = I.dev.counters();
  const auto t0 = Clock::now();
  try {
    // 1. text embeddings of the whole padded prompt, M wide (audio slots get id 0, overwritten below)
    std::vector<int32_t> ids(static_cast<size_t>(M), 0);
    for (int i = 0, j = 0; i < static_cast<int>(prompt.size()); ++i) {
      if (i == at) { j += n_audio; continue; }
      ids[static_cast<size_t>(j++)] = prompt[static_cast<size_t>(i)];
    }
    I.dev.h2d(T.embed->stages[0].input_mems[0], 0, ids.data(), ids.size() * 4);
    I.dev.launch(T.embed);
    I.dev.d2d(I.states_buf, 0, T.embed->stages[0].output_mems[0], 0, static_cast<size_t>(M) * T.row_bytes);

    // 2. audio encoder (+ projector), spliced over the audio placeholder's slots on the device
    const auto ta = Clock::now();
    I.encode_audio(req, at);
    g.encode_s = seconds_since(ta);

    // 3. causal prefill, positions 0..L-1; prompt K/V into this slot's rows of the decode history
    std::vector<int32_t> pos(static_cast<size_t>(T.pos_rows) * M, 0);  // pos_rows equal rows
    for (int k = 0; k < T.pos_rows; ++k)
      for (int i = 0; i < L; ++i) pos[static_cast<size_t>(k) * M + i] = i;
    I.dev.h2d(I.pos_buf, 0, pos.data(), pos.size() * 4);
    {
      std::vector<uint8_t> mask(static_cast<size_t>(M) * M * I.hidden_mask.size(), 0);
      for (int i = 0; i < M; ++i) {
        const size_t first = static_cast<size_t>(i) * M;
        if (i < L) Impl::fill_mask(mask, first + i + 1, static_cast<size_t>(M - i - 1), I.hidden_mask);  // causal
        else Impl::fill_mask(mask, first, static_cast<size_t>(M), I.hidden_mask);  // padding rows: all hidden
      }
      I.dev.h2d(I.mask_buf, 0, mask.data(), mask.size());
    }
    bm_device_mem_t cur = I.states_buf;
    for (size_t l = 0; l < T.blocks.size(); ++l) {
      auto *b = T.blocks[l];
      const auto &st = b->stages[0];
      I.dev.d2d(st.input_mems[0], 0, cur, 0, static_cast<size_t>(M) * T.row_bytes);
      I.dev.d2d(st.input_mems[1], 0, I.pos_buf, 0, pos.size() * 4);
      I.dev.d2d(st.input_mems[2], 0, I.mask_buf, 0, static_cast<size_t>(M) * M * I.hidden_mask.size());
      I.dev.launch(b);
      cur = st.output_mems[0];
      I.copy_kv(I.k_store[l], T.kv_hist[0], r, 0, st.output_mems[1], T.kv_prefill[0], 0, 0, L);
      I.copy_kv(I.v_store[l], T.kv_hist[1], r, 0, st.output_mems[2], T.kv_prefill[1], 0, 0, L);
    }
    // 4. first token from the last real position, through this slot's row of lm_head
    I.dev.d2d(T.lm->stages[0].input_mems[0], row * T.row_bytes, cur, static_cast<size_t>(L - 1) * T.row_bytes,
              T.row_bytes);
    I.dev.launch(T.lm);
    const auto [tok, logprob] = I.take_token(layout_, r, false);
    g.has_logprobs = T.logprob_source() != "none";  // after the head's first launch (a failing greedy_head -> host)
    g.ttft_s = seconds_since(t0);
    g.prefill_s = g.ttft_s - g.encode_s;

    // this row's decode mask: the prompt's slots visible, the rest hidden, the current token's slot (the last)
    // visible. Uploaded once; each step then reveals one more slot (2-4 bytes).
    std::vector<uint8_t> dm(static_cast<size_t>(T.mlen) * I.hidden_dmask.size(), 0);
    Impl::fill_mask(dm, static_cast<size_t>(L), static_cast<size_t>(T.mlen - 1 - L), I.hidden_dmask);
    I.dev.h2d(I.dmask_buf, row * dm.size(), dm.data(), dm.size());
    g.prefill = I.dev.counters() - start;
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
  if (q >= impl_->text.kv_cap) {
    sl.state = SlotState::TooLong;
    sl.error = "answer reached SEQLEN " + str(impl_->text.seqlen) + " (prompt " + str(g.prompt_len) + " tokens, " +
               std::to_string(g.tokens.size()) + " generated) without a stop token";
  }
}

std::vector<int> Runtime::step() {
  std::lock_guard<std::mutex> lock(mu_);
  return step_locked();
}

std::vector<int> Runtime::step_locked() {
  auto &I = *impl_;
  const auto &T = I.text;
  const size_t B = static_cast<size_t>(T.batch);
  std::vector<int> rows;
  for (int i = 0; i < T.batch; ++i)
    if (slots_[static_cast<size_t>(i)].state == SlotState::Decoding) rows.push_back(i);
  if (rows.empty()) return {};
  const auto ts = Clock::now();
  const Counters before = I.dev.counters();
  Counters own;  // row-specific transfers, attributed to their slot below
  std::vector<Counters> per_row(B);
  auto row_transfer = [&](int r, const std::function<void()> &fn) {
    const Counters c0 = I.dev.counters();
    fn();
    const Counters d = I.dev.counters() - c0;
    per_row[static_cast<size_t>(r)] = per_row[static_cast<size_t>(r)] + d;
    own = own + d;
  };

  const size_t delt = I.hidden_dmask.size();
  const std::vector<uint8_t> visible(delt, 0);
  auto &ec = T.embed_cache->stages[0];
  I.dev.d2d(ec.input_mems[0], 0, I.tok_buf, 0, B * 4);  // the tokens never leave the device on their way back in
  I.dev.launch(T.embed_cache);
  bm_device_mem_t cur = ec.output_mems[0];
  std::vector<int> qs(B, 0);
  for (int r : rows) {
    const Slot &sl = slots_[static_cast<size_t>(r)];
    const int L = sl.g.prompt_len;
    const int q = L + static_cast<int>(sl.g.tokens.size()) - 1;
    qs[static_cast<size_t>(r)] = q;
    row_transfer(r, [&] {
      int32_t q32 = q;
      for (int k = 0; k < T.pos_rows; ++k)
        I.dev.h2d(I.dpos_buf, (static_cast<size_t>(k) * B + r) * 4, &q32, 4);
      if (q > L) I.dev.h2d(I.dmask_buf, (static_cast<size_t>(r) * T.mlen + (q - 1)) * delt, visible.data(), delt);
    });
  }
  for (size_t l = 0; l < T.caches.size(); ++l) {
    auto *c = T.caches[l];
    const auto &st = c->stages[0];
    I.dev.d2d(st.input_mems[0], 0, cur, 0, B * T.row_bytes);
    I.dev.d2d(st.input_mems[1], 0, I.dpos_buf, 0, static_cast<size_t>(T.pos_rows) * B * 4);
    I.dev.d2d(st.input_mems[2], 0, I.dmask_buf, 0, B * static_cast<size_t>(T.mlen) * delt);
    if (c->addr_mode == 1)
      I.dev.launch(c);
    else
      I.dev.launch(c, {{3, I.k_store[l]}, {4, I.v_store[l]}});
    cur = st.output_mems[0];
    // each row's new K/V to that row's own position
    for (int r : rows) {
      const int q = qs[static_cast<size_t>(r)];
      I.copy_kv(I.k_store[l], T.kv_hist[0], r, q, st.output_mems[1], T.kv_new[0], r, 0, 1);
      I.copy_kv(I.v_store[l], T.kv_hist[1], r, q, st.output_mems[2], T.kv_new[1], r, 0, 1);
    }
  }
  I.dev.d2d(T.lm->stages[0].input_mems[0], 0, cur, 0, B * T.row_bytes);
  I.dev.launch(T.lm);
  I.device_argmax(layout_, 0, true);
  std::vector<std::pair<int, float>> toks(B, {-1, 0.0f});
  for (int r : rows) row_transfer(r, [&] { toks[static_cast<size_t>(r)] = I.read_token(r); });
  const double dt = seconds_since(ts);
  const Counters shared = I.dev.counters() - before - own;  // launches and d2d copies serve every row
  std::vector<int> finished;
  for (int r : rows) {
    Slot &sl = slots_[static_cast<size_t>(r)];
    sl.g.step_s.push_back(dt);
    sl.g.decode = sl.g.decode + shared + per_row[static_cast<size_t>(r)];
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
  if (slot < 0 || slot >= layout_.batch) throw std::out_of_range("slot " + str(slot) + " out of range");
  Slot &sl = slots_[static_cast<size_t>(slot)];
  if (sl.state == SlotState::Free) throw std::logic_error("slot " + str(slot) + " holds no request");
  if (sl.state == SlotState::Decoding)
    throw std::logic_error("slot " + str(slot) + " is still decoding: step() until it is done, or cancel()");
  const SlotState state = sl.state;
  Generation g = std::move(sl.g);
  std::string error = std::move(sl.error);
  sl = Slot{};
  if (state == SlotState::TooLong) throw TooLong(error);
  return g;
}

void Runtime::cancel(int slot) {
  std::lock_guard<std::mutex> lock(mu_);
  if (slot < 0 || slot >= layout_.batch) throw std::out_of_range("slot " + str(slot) + " out of range");
  slots_[static_cast<size_t>(slot)] = Slot{};
}

std::string Runtime::state(int slot) const {
  if (slot < 0 || slot >= layout_.batch) throw std::out_of_range("slot " + str(slot) + " out of range");
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
Generation Runtime::generate(const Request &request) {
  std::lock_guard<std::mutex> lock(mu_);
  const int r = start_locked(request);
  while (slots_[static_cast<size_t>(r)].state == SlotState::Decoding) step_locked();
  return finish_locked(r);
}

std::vector<float> Runtime::encode(const std::vector<float> &features, int n_mels, int width,
                                   const std::vector<AudioChunk> &audio) {
  std::lock_guard<std::mutex> lock(mu_);
  auto &I = *impl_;
  Request r;
  r.features = features;
  r.n_mels = n_mels;
  r.width = width;
  r.audio = audio;
  r.prompt_ids = {0};
  r.audio_token_id = 0;
  r.max_new_tokens = 1;
  const int n_audio = check_request(r);
  I.encode_audio(r, 0);
  const size_t n = static_cast<size_t>(n_audio) * I.text.hidden;
  std::vector<uint8_t> raw(n * dtype_size(I.text.states_dt));
  I.dev.d2h(raw.data(), I.states_buf, 0, raw.size());
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = load_float(I.text.states_dt, raw.data(), i);
  return out;
}

}  // namespace tbn
