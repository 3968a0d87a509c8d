// Audio LLMs (Qwen2-Audio, Qwen3-ASR) on a BM1684X bmodel: audio encoder, on-device splice of the audio embeddings,
// causal prefill, and greedy decoding with the KV cache kept on the device.
//
// The runtime recognises the bmodel's nets by their structure (text_nets.h, audio_net.h) and drives them; the model
// family's arithmetic (how many audio tokens a clip makes, how long each mask's valid part is) comes with each
// request as AudioChunk lengths computed in Python (workers/models/), and is only checked against the nets here.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace tbn {

// The request does not fit the bmodel (prompt + audio + answer > SEQLEN, or more audio than the mel window).
class TooLong : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The bmodel's nets are not a layout this runtime can drive; the message names what is missing.
class LayoutError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A device call failed.
class DeviceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The additive value of a hidden position in every mask the runtime fills (the prefill and decode masks, the audio
// net's key mask), stored in each mask's dtype (bf16 rounds it to -9984). Callers pass the bmodel sidecar's
// audio_mask_value (written by native/compile/sidecar.py); this is the one fallback for a bmodel without one:
// tpu-mlir's LLM convention, which native/compile also compiles for.
constexpr float kDefaultMaskValue = -10000.0f;

struct Counters {
  uint64_t h2d_bytes = 0, d2h_bytes = 0, d2d_bytes = 0;
  uint64_t h2d_calls = 0, d2h_calls = 0, d2d_calls = 0, launches = 0;
};
Counters operator+(const Counters &a, const Counters &b);
Counters operator-(const Counters &a, const Counters &b);
bool operator==(const Counters &a, const Counters &b);

// One chunk of a request's audio as the model family measures it (workers/models/*.py `audio_chunks`). The runtime
// fills the audio net's masks from these lengths and checks them against the net's shapes; it derives none of them.
// A fixed-window encoder (Qwen2-Audio) takes one chunk for the whole clip; a chunked encoder (Qwen3-ASR) one chunk
// per C frames: consecutive, every one but the last full.
struct AudioChunk {
  int frames = 0;         // valid mel frames of this chunk (taken from the features in order)
  std::vector<int> keep;  // valid outputs of each convolution the net masks (chunked nets: conv1, conv2); else empty
  int keys = 0;           // valid key positions of the encoder's attention in this chunk (0 for a net without mask)
  int rows = 0;           // audio embeddings it yields: placeholder slots it fills, in order
};

// One request, as start()/generate() take it.
struct Request {
  std::vector<float> features;  // [n_mels, width] float32 log-mel, row-major, the clip's frames first
  int n_mels = 0, width = 0;
  std::vector<AudioChunk> audio;  // the clip's chunks (their rows sum to the audio tokens)
  std::vector<int> prompt_ids;    // chat prompt with exactly one audio_token_id, replaced by the audio embeddings
  int audio_token_id = 0;
  std::vector<int> stop_ids;
  int max_new_tokens = 0;
};

struct TensorSummary {
  std::string name, dtype;
  std::vector<int> shape;  // stage 0
};

struct NetSummary {
  std::string name;
  bool is_dynamic = false;
  int addr_mode = 0, stage_num = 0;
  std::vector<TensorSummary> inputs, outputs;
};

// What the runtime found in the bmodel and adapted to.
struct Layout {
  int seqlen = 0;          // SEQLEN: prompt + audio + answer tokens (the decode history)
  int prefill_len = 0;     // positions one prefill takes: the longest prompt, audio included (= SEQLEN, or tpu-mlir's
                           // --max_input_length: Sophgo's prebuilt Qwen3-ASR bmodels)
  int position_rows = 1;   // rows of position ids the text nets take: 1, or 3 equal rows (MRoPE as declared by some
                           // tpu-mlir versions of the Qwen3-ASR layout)
  int hidden = 0;
  int n_layers = 0;
  int kv_row_bytes = 0;    // one position's K (or V) in one layer
  std::string states_dtype, mask_dtype, kv_dtype;
  // "greedy" (token id from lm_head), "logits+greedy_head" (argmax net on the device) or "logits+host_argmax"
  std::string lm_head;
  int vocab = 0;           // logits width (0 for a greedy head)
  // where each chosen token's log-probability comes from: "head" (the id-picking net's second output, f32 [B,1],
  // computed on the device), "host" (exact log-softmax over the row of logits the host argmax reads anyway), or
  // "none" (a head with ids only: older bmodels; Generation::logprobs stays empty)
  std::string token_logprob;
  std::string audio_net, projector_net;  // projector_net empty when the audio net includes it
  int n_mels = 0, n_frames = 0;  // mel frames one audio-net launch takes
  int audio_rows = 0;      // audio embeddings one launch yields
  std::string audio_mask;  // "" (no key-mask input) or the key mask's shape, e.g. "[1,1,100,100]"
  // "window": one launch per request over a fixed mel window (Qwen2-Audio; n_frames = the window, audio_rows = its
  // most tokens); "chunked": one launch per attention window of audio_chunks_per_window chunks of
  // audio_chunk_frames frames, as many launches as the clip needs (Qwen3-ASR; n_frames / audio_rows per launch);
  // "one_chunk": one launch per chunk of audio_chunk_frames frames, no mask input, attention within the chunk
  // (tpu-mlir's own Qwen3-ASR converter: Sophgo's prebuilt bmodels; n_frames = the chunk, audio_chunks_per_window 1)
  std::string audio_kind;
  int audio_chunk_frames = 0, audio_chunks_per_window = 0;  // 0 for "window"
  int audio_keys = 0;           // key-mask positions per chunk ("chunked") or of the window; 0 without a key mask
  std::vector<int> audio_keep;  // "chunked": outputs of each masked convolution per chunk; empty for "window"
  int decode_addr_mode = 0;
  int batch = 1;           // decode rows = slots: requests in flight at once
  std::string decode_kv;   // "concat" (nets return the new K/V) or "insert" (nets write it into history slot SEQLEN-1)
  int kv_capacity = 0;     // positions a request may fill (prompt + answer): SEQLEN, or SEQLEN-1 for "insert"
  float mask_value = kDefaultMaskValue;  // the hidden value the masks are filled with (before dtype rounding)
};

struct Generation {
  int slot = 0;                   // the decode row it ran in
  std::vector<int> tokens;        // generated ids, stop id excluded
  bool has_logprobs = false;      // layout().token_logprob != "none"
  std::vector<float> logprobs;    // natural-log probability of each of `tokens` (empty without has_logprobs)
  std::string finish_reason;      // "eos" or "max_tokens"
  int stop_id = -1;               // the stop id seen, -1 if none
  int prompt_len = 0;             // merged prompt: text tokens + audio tokens
  double encode_s = 0, prefill_s = 0, ttft_s = 0;  // ttft = encode + prefill + first token read
  std::vector<double> step_s;     // one per decode step it took part in (each yields one token; shared by the batch)
  // traffic of the two phases. decode: its own row's transfers (position, mask slot, token id) plus, in full, the
  // launches and device-to-device copies of every step it took part in (they serve the whole batch)
  Counters prefill, decode;
};

struct RuntimeOptions {
  bool share_mem = true;                 // bmruntime BM_RUNTIME_SHARE_MEM (nets share neuron memory)
  float mask_value = kDefaultMaskValue;  // see kDefaultMaskValue; must be finite, negative, and fit every mask dtype
};

class Runtime {
 public:
  Runtime(const std::string &bmodel_path, int device_id, RuntimeOptions options = {});
  ~Runtime();
  Runtime(const Runtime &) = delete;
  Runtime &operator=(const Runtime &) = delete;

  // The runtime steps. B = layout().batch slots, each one request: its K/V rows, position, mask and stop state.
  //
  // start: a request into a free slot (audio encode, splice, prefill into that slot's K/V rows, first token);
  //   returns the slot. It may already be done (stop id or max_new_tokens 1). TooLong (nothing occupied) if the
  //   prompt leaves no room; std::invalid_argument for a malformed request; std::logic_error if no slot is free.
  int start(const Request &request);
  // step: one token for every decoding slot, one launch per net for the whole batch; returns the slots that
  //   stopped decoding in it (done, or too_long: the answer reached SEQLEN).
  std::vector<int> step();
  // finish: the result of a done slot, which becomes free; TooLong for a too_long slot (also freed).
  Generation finish(int slot);
  void cancel(int slot);                 // free a slot, whatever its state
  std::string state(int slot) const;     // "free" | "decoding" | "done" | "too_long"
  int free_slots() const;
  // start + step until that slot is done + finish (batch 1 is this special case of the steps)
  Generation generate(const Request &request);

  // The audio net alone: the request's audio embeddings [audio tokens x hidden] (as float) that start() would splice
  // into the prompt, read back from the device (for checking the encoder against a reference; no slot is used).
  std::vector<float> encode(const std::vector<float> &features, int n_mels, int width,
                            const std::vector<AudioChunk> &audio);

  const Layout &layout() const { return layout_; }
  const std::vector<NetSummary> &nets() const { return nets_; }
  int batch() const { return layout_.batch; }
  Counters counters() const;
  int device_id() const { return device_id_; }

 private:
  enum class SlotState { Free, Decoding, Done, TooLong };
  struct Slot {
    SlotState state = SlotState::Free;
    std::vector<int> stop_ids;
    int max_new_tokens = 0;
    Generation g;
    std::string error;
  };
  int check_request(const Request &r) const;  // returns the merged prompt length
  int start_locked(const Request &r);
  std::vector<int> step_locked();
  Generation finish_locked(int slot);
  void accept(int slot, int token, float logprob);

  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<Slot> slots_;
  Layout layout_;
  std::vector<NetSummary> nets_;
  int device_id_;
  std::mutex mu_;
};

}  // namespace tbn
