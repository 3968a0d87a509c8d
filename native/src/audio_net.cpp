#include "audio_net.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "dtype.h"

namespace tbn {
namespace {

std::string str(int v) { return std::to_string(v); }

// The embedding output of `net`: [.., rows, hidden] float. Returns rows.
int embedding_rows(const NetSet &nets, const bm_net_info_t *net, int hidden) {
  const auto &s = out_shape(net, 0);
  if (s.num_dims < 1 || s.dims[s.num_dims - 1] != hidden)
    nets.fail(std::string("audio embeddings ") + shape_str(s) + " from net " + net->name +
              " do not have the text hidden size " + str(hidden));
  if (!is_float(net->output_dtypes[0]))
    nets.fail(std::string("audio embeddings dtype ") + dtype_name(net->output_dtypes[0]) + " is not float");
  return static_cast<int>(elements(s) / static_cast<uint64_t>(hidden));
}

// The checks both chunked kinds make: the features' mel bins, each chunk's frames (every one but the last in full),
// and that the chunks fit the features; `each(which, chunk)` checks what is the kind's own.
template <class Each>
void check_chunks(int n_mels, int width, const std::vector<AudioChunk> &chunks, int net_mels, int chunk_frames,
                  Each each) {
  if (n_mels != net_mels)
    throw std::invalid_argument("features are [" + str(n_mels) + "," + str(width) + "]; the audio net takes [" +
                                str(net_mels) + ",any number of frames]");
  long frames = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const AudioChunk &c = chunks[i];
    const std::string which = "chunk " + str(int(i)) + ": ";
    if (c.frames > chunk_frames || (i + 1 < chunks.size() && c.frames != chunk_frames))
      throw std::invalid_argument(which + str(c.frames) + " frames; chunks hold " + str(chunk_frames) +
                                  " frames, every one but the last in full");
    each(which, c);
    frames += c.frames;
  }
  if (frames > width)
    throw std::invalid_argument("the chunks cover " + std::to_string(frames) + " frames; the features hold " +
                                str(width));
}

// ---- "window": one launch over a fixed mel window (Qwen2-Audio: native/compile's net and the public port's) ----
// Inputs: features [1, n_mels, F] and optionally an additive key mask whose last dim is the encoder's key positions
// T (any leading dims: the port's [1,1,T,T] gets the same keys in every row). Optionally a separate projector net
// after it (the port). The request is one chunk: its keys valid positions, its first rows embeddings spliced.
class WindowAudio : public AudioNet {
 public:
  static std::unique_ptr<AudioNet> recognise(const NetSet &nets, const bm_net_info_t *audio,
                                             const bm_net_info_t *projector, int hidden, float mask_value) {
    const auto &fs = in_shape(audio, 0);
    if (audio->input_num < 1 || audio->input_num > 2 || fs.num_dims < 2 || fs.num_dims > 3) return nullptr;
    auto w = std::unique_ptr<WindowAudio>(new WindowAudio());
    w->audio_ = audio;
    w->projector_ = projector;
    w->mask_value_ = mask_value;
    if (audio->output_num < 1) nets.fail(std::string("audio net ") + audio->name + " has no output");
    if (elements(fs) != static_cast<uint64_t>(fs.dims[fs.num_dims - 2]) * fs.dims[fs.num_dims - 1])
      nets.fail("audio net input " + shape_str(fs) + " is not [1,n_mels,n_frames]");
    w->n_mels_ = fs.dims[fs.num_dims - 2];
    w->n_frames_ = fs.dims[fs.num_dims - 1];
    nets.expect_float_input(audio, 0, "log-mel features");
    w->feat_dt_ = audio->input_dtypes[0];
    if (audio->input_num == 2) {
      nets.expect_float_input(audio, 1, "additive key mask");
      nets.check_mask_value(audio, 1, mask_value);
      w->mask_shape_ = in_shape(audio, 1);
      if (w->mask_shape_.num_dims < 1 || elements(w->mask_shape_) == 0)
        nets.fail("audio net key mask " + shape_str(w->mask_shape_) + " has no positions");
      w->keys_ = w->mask_shape_.dims[w->mask_shape_.num_dims - 1];
    }
    const bm_net_info_t *last = audio;
    if (projector) {
      nets.expect_static(projector);
      if (projector->input_num != 1 || projector->output_num < 1) nets.fail("projector must have one input");
      if (elements(in_shape(projector, 0)) != elements(out_shape(audio, 0)) ||
          projector->input_dtypes[0] != audio->output_dtypes[0])
        nets.fail("projector input " + shape_str(in_shape(projector, 0)) + " does not match audio output " +
                  shape_str(out_shape(audio, 0)));
      last = projector;
    }
    w->rows_ = embedding_rows(nets, last, hidden);
    w->out_dt_ = last->output_dtypes[0];
    return w;
  }

  void describe(Layout &l) const override {
    l.audio_kind = "window";
    l.audio_net = audio_->name;
    l.projector_net = projector_ ? projector_->name : "";
    l.n_mels = n_mels_;
    l.n_frames = n_frames_;
    l.audio_rows = rows_;
    l.audio_mask = keys_ ? shape_str(mask_shape_) : "";
    l.audio_keys = keys_;
    l.audio_chunk_frames = l.audio_chunks_per_window = 0;
    l.audio_keep.clear();
  }

  void check(int n_mels, int width, const std::vector<AudioChunk> &chunks) const override {
    if (n_mels != n_mels_ || width != n_frames_)
      throw std::invalid_argument("features are [" + str(n_mels) + "," + str(width) + "]; the audio net takes [" +
                                  str(n_mels_) + "," + str(n_frames_) + "]");
    if (chunks.size() != 1)
      throw std::invalid_argument("the window audio net takes a clip as one chunk; got " + str(int(chunks.size())));
    const AudioChunk &c = chunks[0];
    if (c.frames > n_frames_)
      throw std::invalid_argument("a chunk of " + str(c.frames) + " frames does not fit the " + str(n_frames_) +
                                  "-frame window");
    if (!c.keep.empty()) throw std::invalid_argument("the window audio net masks no convolution; the chunk has keep lengths");
    if (keys_ && (c.keys < 1 || c.keys > keys_))
      throw std::invalid_argument("the chunk's " + str(c.keys) + " valid key positions are outside 1.." + str(keys_) +
                                  " (audio mask " + shape_str(mask_shape_) + ")");
    if (c.rows > rows_)
      throw TooLong("audio of " + str(c.rows) + " tokens exceeds the audio net's " + str(rows_) + " (" +
                    str(n_frames_) + " mel frames)");
  }

  void encode(Device &dev, const std::vector<float> &features, int, const std::vector<AudioChunk> &chunks,
              const Splice &splice) const override {
    const auto &st = audio_->stages[0];
    dev.h2d_floats(st.input_mems[0], feat_dt_, features);
    if (keys_) {
      const size_t n = elements(mask_shape_);
      std::vector<float> m(n);
      for (size_t i = 0; i < n; ++i) m[i] = static_cast<int>(i % keys_) < chunks[0].keys ? 0.0f : mask_value_;
      dev.h2d_floats(st.input_mems[1], audio_->input_dtypes[1], m);
    }
    dev.launch(audio_);
    bm_device_mem_t out = st.output_mems[0];
    if (projector_) {
      const auto &ps = projector_->stages[0];
      dev.d2d(ps.input_mems[0], 0, out, 0, bm_mem_get_device_size(ps.input_mems[0]));
      dev.launch(projector_);
      out = ps.output_mems[0];
    }
    splice(out, out_dt_, 0, chunks[0].rows);
  }

 private:
  WindowAudio() = default;
  const bm_net_info_t *audio_ = nullptr, *projector_ = nullptr;
  int n_mels_ = 0, n_frames_ = 0, rows_ = 0, keys_ = 0;
  bm_data_type_t feat_dt_ = BM_FLOAT32, out_dt_ = BM_FLOAT32;
  bm_shape_t mask_shape_{};
  float mask_value_ = kDefaultMaskValue;
};

// ---- "chunked": one launch per attention window of K chunks of C frames (native/compile's Qwen3-ASR net) ----
// Inputs: chunks [K,1,n_mels,C]; conv1_keep, conv2_keep [K,..,c1], [K,..,c2] (1 where a convolution's output frame
// is part of the chunk, 0 after); additive key mask [1,K*R]. Output [1,K*R,hidden]; c1, c2 and R from the shapes.
// Each chunk's keys and rows are a prefix of its R positions; consecutive valid rows are spliced with one copy.
class ChunkedAudio : public AudioNet {
 public:
  static std::unique_ptr<AudioNet> recognise(const NetSet &nets, const bm_net_info_t *audio,
                                             const bm_net_info_t *projector, int hidden, float mask_value) {
    const auto &fs = in_shape(audio, 0);
    if (audio->input_num != 4 || fs.num_dims != 4) return nullptr;
    auto a = std::unique_ptr<ChunkedAudio>(new ChunkedAudio());
    a->audio_ = audio;
    a->mask_value_ = mask_value;
    if (fs.dims[1] != 1 || audio->output_num < 1)
      nets.fail("chunked audio net input " + shape_str(fs) + " is not [K,1,n_mels,C]");
    if (projector)
      nets.fail(std::string("net ") + projector->name + ": a chunked audio net must include its projector");
    a->win_chunks_ = fs.dims[0];
    a->n_mels_ = fs.dims[2];
    a->chunk_frames_ = fs.dims[3];
    const char *what[4] = {"chunks", "conv1_keep", "conv2_keep", "audio_mask"};
    int per_chunk[3];
    for (int i = 0; i < 4; ++i) nets.expect_float_input(audio, i, what[i]);
    for (int i = 1; i < 4; ++i) {
      const uint64_t n = elements(in_shape(audio, i));
      if (n == 0 || n % static_cast<uint64_t>(a->win_chunks_))
        nets.fail(std::string("chunked audio net ") + what[i] + " " + shape_str(in_shape(audio, i)) + " does not hold "
                  "the same number of values for each of its " + str(a->win_chunks_) + " chunks");
      per_chunk[i - 1] = static_cast<int>(n / static_cast<uint64_t>(a->win_chunks_));
    }
    nets.check_mask_value(audio, 3, mask_value);
    a->keep_width_ = {per_chunk[0], per_chunk[1]};
    a->chunk_rows_ = per_chunk[2];
    const int rows = embedding_rows(nets, audio, hidden);
    if (rows != a->win_chunks_ * a->chunk_rows_)
      nets.fail("chunked audio net gives " + str(rows) + " rows, not " + str(a->win_chunks_) + " chunks x " +
                str(a->chunk_rows_) + " rows (its key mask " + shape_str(in_shape(audio, 3)) + ")");
    return a;
  }

  void describe(Layout &l) const override {
    l.audio_kind = "chunked";
    l.audio_net = audio_->name;
    l.projector_net = "";
    l.n_mels = n_mels_;
    l.n_frames = win_chunks_ * chunk_frames_;
    l.audio_rows = win_chunks_ * chunk_rows_;
    l.audio_mask = shape_str(in_shape(audio_, 3));
    l.audio_chunk_frames = chunk_frames_;
    l.audio_chunks_per_window = win_chunks_;
    l.audio_keys = chunk_rows_;
    l.audio_keep = keep_width_;
  }

  void check(int n_mels, int width, const std::vector<AudioChunk> &chunks) const override {
    check_chunks(n_mels, width, chunks, n_mels_, chunk_frames_, [&](const std::string &which, const AudioChunk &c) {
      if (c.keep.size() != keep_width_.size())
        throw std::invalid_argument(which + str(int(c.keep.size())) + " keep lengths; the net masks " +
                                    str(int(keep_width_.size())) + " convolutions");
      for (size_t j = 0; j < c.keep.size(); ++j)
        if (c.keep[j] < 0 || c.keep[j] > keep_width_[j])
          throw std::invalid_argument(which + "keep length " + str(c.keep[j]) + " of convolution " + str(int(j) + 1) +
                                      " is outside 0.." + str(keep_width_[j]));
      if (c.keys < 0 || c.keys > chunk_rows_ || c.rows > c.keys)
        throw std::invalid_argument(which + str(c.keys) + " valid keys and " + str(c.rows) + " rows; the net has " +
                                    str(chunk_rows_) + " positions per chunk and splices only valid ones");
    });
  }

  void encode(Device &dev, const std::vector<float> &features, int width, const std::vector<AudioChunk> &chunks,
              const Splice &splice) const override {
    const auto &st = audio_->stages[0];
    const int K = win_chunks_, C = chunk_frames_, M = n_mels_, R = chunk_rows_;
    const int c1 = keep_width_[0], c2 = keep_width_[1];
    const int n_chunks = static_cast<int>(chunks.size());
    size_t offset = 0;  // first frame of the next chunk
    for (int first = 0; first < n_chunks; first += K) {
      std::vector<float> mel(static_cast<size_t>(K) * M * C, 0.0f);
      std::vector<float> keep1(static_cast<size_t>(K) * c1, 0.0f), keep2(static_cast<size_t>(K) * c2, 0.0f);
      std::vector<float> mask(static_cast<size_t>(K) * R, mask_value_);
      const int in_window = std::min(K, n_chunks - first);
      for (int k = 0; k < in_window; ++k) {
        const AudioChunk &c = chunks[static_cast<size_t>(first + k)];
        for (int m = 0; m < M; ++m)
          std::copy_n(features.data() + static_cast<size_t>(m) * width + offset, c.frames,
                      mel.data() + (static_cast<size_t>(k) * M + m) * C);
        offset += static_cast<size_t>(c.frames);
        std::fill_n(keep1.begin() + static_cast<size_t>(k) * c1, c.keep[0], 1.0f);
        std::fill_n(keep2.begin() + static_cast<size_t>(k) * c2, c.keep[1], 1.0f);
        std::fill_n(mask.begin() + static_cast<size_t>(k) * R, c.keys, 0.0f);
      }
      dev.h2d_floats(st.input_mems[0], audio_->input_dtypes[0], mel);
      dev.h2d_floats(st.input_mems[1], audio_->input_dtypes[1], keep1);
      dev.h2d_floats(st.input_mems[2], audio_->input_dtypes[2], keep2);
      dev.h2d_floats(st.input_mems[3], audio_->input_dtypes[3], mask);
      dev.launch(audio_);
      int run_from = 0, run_rows = 0;  // consecutive valid rows of the output, spliced with one copy
      for (int k = 0; k < in_window; ++k) {
        const int rows = chunks[static_cast<size_t>(first + k)].rows;
        if (run_rows && run_from + run_rows != k * R) {
          splice(st.output_mems[0], audio_->output_dtypes[0], run_from, run_rows);
          run_rows = 0;
        }
        if (!run_rows) run_from = k * R;
        run_rows += rows;
      }
      if (run_rows) splice(st.output_mems[0], audio_->output_dtypes[0], run_from, run_rows);
    }
  }

 private:
  ChunkedAudio() = default;
  const bm_net_info_t *audio_ = nullptr;
  int win_chunks_ = 0, n_mels_ = 0, chunk_frames_ = 0, chunk_rows_ = 0;
  std::vector<int> keep_width_;  // outputs per chunk of conv1, conv2
  float mask_value_ = kDefaultMaskValue;
};

// ---- "one_chunk": one launch per chunk of C frames, no mask (tpu-mlir's own Qwen3AsrConverter: Sophgo's prebuilt
// Qwen3-ASR bmodels) ----
// Input: ONE chunk [1,1,n_mels,C]; output [1,R,hidden]. The net attends within the chunk's R rows and has no mask
// input: a partial last chunk is zero-padded and its first `rows` outputs spliced (its attention still spans all R
// rows, which is why the engine pads requests to whole chunks; native/compile/README.md section 8).
class OneChunkAudio : public AudioNet {
 public:
  static std::unique_ptr<AudioNet> recognise(const NetSet &nets, const bm_net_info_t *audio,
                                             const bm_net_info_t *projector, int hidden, float) {
    const auto &fs = in_shape(audio, 0);
    if (audio->input_num != 1 || fs.num_dims != 4 || fs.dims[0] != 1 || fs.dims[1] != 1) return nullptr;
    auto a = std::unique_ptr<OneChunkAudio>(new OneChunkAudio());
    a->audio_ = audio;
    if (audio->output_num < 1) nets.fail(std::string("audio net ") + audio->name + " has no output");
    if (projector)
      nets.fail(std::string("net ") + projector->name + ": a one-chunk audio net must include its projector");
    nets.expect_float_input(audio, 0, "log-mel features of one chunk");
    a->n_mels_ = fs.dims[2];
    a->chunk_frames_ = fs.dims[3];
    a->rows_ = embedding_rows(nets, audio, hidden);
    return a;
  }

  void describe(Layout &l) const override {
    l.audio_kind = "one_chunk";
    l.audio_net = audio_->name;
    l.projector_net = "";
    l.n_mels = n_mels_;
    l.n_frames = chunk_frames_;
    l.audio_rows = rows_;
    l.audio_mask = "";
    l.audio_chunk_frames = chunk_frames_;
    l.audio_chunks_per_window = 1;
    l.audio_keys = 0;
    l.audio_keep.clear();
  }

  void check(int n_mels, int width, const std::vector<AudioChunk> &chunks) const override {
    check_chunks(n_mels, width, chunks, n_mels_, chunk_frames_, [&](const std::string &which, const AudioChunk &c) {
      if (!c.keep.empty() || c.keys != 0)
        throw std::invalid_argument(which + "keep lengths or key positions given; the one-chunk audio net masks "
                                    "nothing");
      if (c.rows > rows_)
        throw std::invalid_argument(which + str(c.rows) + " rows; the net gives " + str(rows_) + " per chunk");
    });
  }

  void encode(Device &dev, const std::vector<float> &features, int width, const std::vector<AudioChunk> &chunks,
              const Splice &splice) const override {
    const auto &st = audio_->stages[0];
    const int C = chunk_frames_, M = n_mels_;
    size_t offset = 0;  // first frame of the next chunk
    for (const AudioChunk &c : chunks) {
      std::vector<float> mel(static_cast<size_t>(M) * C, 0.0f);
      for (int m = 0; m < M; ++m)
        std::copy_n(features.data() + static_cast<size_t>(m) * width + offset, c.frames,
                    mel.data() + static_cast<size_t>(m) * C);
      offset += static_cast<size_t>(c.frames);
      dev.h2d_floats(st.input_mems[0], audio_->input_dtypes[0], mel);
      dev.launch(audio_);
      splice(st.output_mems[0], audio_->output_dtypes[0], 0, c.rows);
    }
  }

 private:
  OneChunkAudio() = default;
  const bm_net_info_t *audio_ = nullptr;
  int n_mels_ = 0, chunk_frames_ = 0, rows_ = 0;
};

using Recogniser = std::unique_ptr<AudioNet> (*)(const NetSet &, const bm_net_info_t *, const bm_net_info_t *, int,
                                                 float);

// Every kind this runtime drives; a new kind is one more entry (its net must not also match an earlier one).
const Recogniser kKinds[] = {&ChunkedAudio::recognise, &OneChunkAudio::recognise, &WindowAudio::recognise};

}  // namespace

std::unique_ptr<AudioNet> recognise_audio_net(const NetSet &nets, int hidden, float mask_value) {
  const bm_net_info_t *audio = nets.find({"audio", "audio_encoder", "audio_ext_model", "audio_tower"});
  if (!audio) nets.fail("missing the audio encoder net (looked for 'audio', 'audio_encoder', 'audio_ext_model', "
                        "'audio_tower')");
  nets.expect_static(audio);
  const bm_net_info_t *projector = nets.find({"projector", "audio_projector"});
  for (Recogniser recognise : kKinds)
    if (auto net = recognise(nets, audio, projector, hidden, mask_value)) return net;
  std::string inputs;
  for (int i = 0; i < audio->input_num; ++i) inputs += (i ? ", " : "") + shape_str(in_shape(audio, i));
  nets.fail(std::string("audio net ") + audio->name + " with inputs (" + inputs + ") is no kind this runtime drives: "
            "(features [1,n_mels,n_frames][, key mask]) for a fixed window, (chunks [K,1,n_mels,C], conv1_keep, "
            "conv2_keep, key mask) for a chunked encoder, or (one chunk [1,1,n_mels,C]) for tpu-mlir's one-chunk "
            "encoder");
}

}  // namespace tbn
