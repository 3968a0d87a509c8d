// Python binding of the runtime: the C++ structs themselves (Layout, Generation, Counters, NetSummary, AudioChunk),
// read-only except AudioChunk, which the caller builds. Device work runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/operators.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>

#include "runtime.h"

namespace py = pybind11;

namespace {

using Features = py::array_t<float, py::array::c_style | py::array::forcecast>;

// features [n_mels, width] float32 -> a Request with the rest of its fields
tbn::Request request(const Features &features, std::vector<tbn::AudioChunk> audio, std::vector<int> prompt_ids,
                     int audio_token_id, std::vector<int> stop_ids, int max_new_tokens) {
  if (features.ndim() != 2) throw std::invalid_argument("features must be [n_mels, frames]");
  tbn::Request r;
  r.n_mels = static_cast<int>(features.shape(0));
  r.width = static_cast<int>(features.shape(1));
  r.features.assign(features.data(), features.data() + features.size());
  r.audio = std::move(audio);
  r.prompt_ids = std::move(prompt_ids);
  r.audio_token_id = audio_token_id;
  r.stop_ids = std::move(stop_ids);
  r.max_new_tokens = max_new_tokens;
  return r;
}

// "Name(field=value, ...)" from (name, repr of value) pairs
std::string repr(const char *name, std::initializer_list<std::pair<const char *, py::object>> fields) {
  std::ostringstream o;
  o << name << "(";
  bool first = true;
  for (const auto &f : fields) {
    o << (first ? "" : ", ") << f.first << "=" << py::repr(f.second).cast<std::string>();
    first = false;
  }
  o << ")";
  return o.str();
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "BM1684X runtime for Qwen2-Audio and Qwen3-ASR bmodels (KV cache on the device)";
  py::register_exception<tbn::DeviceError>(m, "DeviceError", PyExc_RuntimeError);
  // std::logic_error (slot misuse) arrives as RuntimeError, std::out_of_range as IndexError
  py::register_exception<tbn::TooLong>(m, "TooLongError", PyExc_ValueError);
  py::register_exception<tbn::LayoutError>(m, "LayoutError", PyExc_ValueError);
  m.attr("DEFAULT_MASK_VALUE") = tbn::kDefaultMaskValue;

  py::class_<tbn::Counters>(m, "Counters", "Bytes and calls copied host->device, device->host, device->device, and "
                                            "net launches.")
      .def_readonly("h2d_bytes", &tbn::Counters::h2d_bytes)
      .def_readonly("d2h_bytes", &tbn::Counters::d2h_bytes)
      .def_readonly("d2d_bytes", &tbn::Counters::d2d_bytes)
      .def_readonly("h2d_calls", &tbn::Counters::h2d_calls)
      .def_readonly("d2h_calls", &tbn::Counters::d2h_calls)
      .def_readonly("d2d_calls", &tbn::Counters::d2d_calls)
      .def_readonly("launches", &tbn::Counters::launches)
      .def(py::self + py::self)
      .def(py::self - py::self)
      .def(py::self == py::self)
      .def("__repr__", [](const tbn::Counters &c) {
        return repr("Counters", {{"h2d_bytes", py::cast(c.h2d_bytes)}, {"d2h_bytes", py::cast(c.d2h_bytes)},
                                 {"d2d_bytes", py::cast(c.d2d_bytes)}, {"h2d_calls", py::cast(c.h2d_calls)},
                                 {"d2h_calls", py::cast(c.d2h_calls)}, {"d2d_calls", py::cast(c.d2d_calls)},
                                 {"launches", py::cast(c.launches)}});
      });

  py::class_<tbn::AudioChunk>(
      m, "AudioChunk",
      "One chunk of a request's audio as the model family measures it (workers/models/ `audio_chunks`): valid mel "
      "frames, valid outputs of each convolution the net masks, valid key positions, embeddings it yields.")
      .def(py::init([](int frames, std::vector<int> keep, int keys, int rows) {
             return tbn::AudioChunk{frames, std::move(keep), keys, rows};
           }),
           py::arg("frames"), py::arg("keep") = std::vector<int>{}, py::arg("keys") = 0, py::arg("rows") = 0)
      .def_readwrite("frames", &tbn::AudioChunk::frames)
      .def_readwrite("keep", &tbn::AudioChunk::keep)
      .def_readwrite("keys", &tbn::AudioChunk::keys)
      .def_readwrite("rows", &tbn::AudioChunk::rows)
      .def("__eq__", [](const tbn::AudioChunk &a, const tbn::AudioChunk &b) {
        return a.frames == b.frames && a.keep == b.keep && a.keys == b.keys && a.rows == b.rows;
      })
      .def("__repr__", [](const tbn::AudioChunk &c) {
        return repr("AudioChunk", {{"frames", py::cast(c.frames)}, {"keep", py::cast(c.keep)},
                                   {"keys", py::cast(c.keys)}, {"rows", py::cast(c.rows)}});
      });

  py::class_<tbn::TensorSummary>(m, "TensorSummary")
      .def_readonly("name", &tbn::TensorSummary::name)
      .def_readonly("dtype", &tbn::TensorSummary::dtype)
      .def_readonly("shape", &tbn::TensorSummary::shape)
      .def("__repr__", [](const tbn::TensorSummary &t) {
        return repr("TensorSummary", {{"name", py::cast(t.name)}, {"dtype", py::cast(t.dtype)},
                                      {"shape", py::cast(t.shape)}});
      });

  py::class_<tbn::NetSummary>(m, "NetSummary", "One net of the bmodel (stage 0).")
      .def_readonly("name", &tbn::NetSummary::name)
      .def_readonly("is_dynamic", &tbn::NetSummary::is_dynamic)
      .def_readonly("addr_mode", &tbn::NetSummary::addr_mode)
      .def_readonly("stage_num", &tbn::NetSummary::stage_num)
      .def_readonly("inputs", &tbn::NetSummary::inputs)
      .def_readonly("outputs", &tbn::NetSummary::outputs)
      .def("__repr__", [](const tbn::NetSummary &n) {
        return repr("NetSummary", {{"name", py::cast(n.name)}, {"inputs", py::cast(n.inputs)},
                                   {"outputs", py::cast(n.outputs)}});
      });

  // fields and meanings: native/src/runtime.h (struct Layout)
  py::class_<tbn::Layout>(m, "Layout", "What the runtime found in the bmodel and adapted to (native/src/runtime.h).")
      .def_readonly("seqlen", &tbn::Layout::seqlen)
      .def_readonly("prefill_len", &tbn::Layout::prefill_len)
      .def_readonly("position_rows", &tbn::Layout::position_rows)
      .def_readonly("hidden", &tbn::Layout::hidden)
      .def_readonly("n_layers", &tbn::Layout::n_layers)
      .def_readonly("kv_row_bytes", &tbn::Layout::kv_row_bytes)
      .def_readonly("states_dtype", &tbn::Layout::states_dtype)
      .def_readonly("mask_dtype", &tbn::Layout::mask_dtype)
      .def_readonly("kv_dtype", &tbn::Layout::kv_dtype)
      .def_readonly("lm_head", &tbn::Layout::lm_head)
      .def_readonly("vocab", &tbn::Layout::vocab)
      .def_readonly("token_logprob", &tbn::Layout::token_logprob)
      .def_readonly("audio_net", &tbn::Layout::audio_net)
      .def_readonly("projector_net", &tbn::Layout::projector_net)
      .def_readonly("n_mels", &tbn::Layout::n_mels)
      .def_readonly("n_frames", &tbn::Layout::n_frames)
      .def_readonly("audio_rows", &tbn::Layout::audio_rows)
      .def_readonly("audio_mask", &tbn::Layout::audio_mask)
      .def_readonly("audio_kind", &tbn::Layout::audio_kind)
      .def_readonly("audio_chunk_frames", &tbn::Layout::audio_chunk_frames)
      .def_readonly("audio_chunks_per_window", &tbn::Layout::audio_chunks_per_window)
      .def_readonly("audio_keys", &tbn::Layout::audio_keys)
      .def_readonly("audio_keep", &tbn::Layout::audio_keep)
      .def_readonly("decode_addr_mode", &tbn::Layout::decode_addr_mode)
      .def_readonly("batch", &tbn::Layout::batch)
      .def_readonly("decode_kv", &tbn::Layout::decode_kv)
      .def_readonly("kv_capacity", &tbn::Layout::kv_capacity)
      .def_readonly("mask_value", &tbn::Layout::mask_value)
      .def("__repr__", [](const tbn::Layout &l) {
        return repr("Layout", {{"seqlen", py::cast(l.seqlen)}, {"prefill_len", py::cast(l.prefill_len)},
                               {"hidden", py::cast(l.hidden)},
                               {"n_layers", py::cast(l.n_layers)}, {"batch", py::cast(l.batch)},
                               {"lm_head", py::cast(l.lm_head)}, {"token_logprob", py::cast(l.token_logprob)},
                               {"audio_kind", py::cast(l.audio_kind)}, {"n_mels", py::cast(l.n_mels)},
                               {"n_frames", py::cast(l.n_frames)}, {"audio_rows", py::cast(l.audio_rows)},
                               {"audio_keys", py::cast(l.audio_keys)}, {"audio_keep", py::cast(l.audio_keep)},
                               {"decode_kv", py::cast(l.decode_kv)}, {"mask_value", py::cast(l.mask_value)}});
      });

  py::class_<tbn::Generation>(m, "Generation", "One request's result (native/src/runtime.h, struct Generation).")
      .def_readonly("slot", &tbn::Generation::slot)
      .def_readonly("tokens", &tbn::Generation::tokens)
      // natural-log probability of each token (the head's f32 log-softmax), or None when the bmodel's head gives none
      .def_property_readonly("token_logprobs",
                             [](const tbn::Generation &g) -> py::object {
                               return g.has_logprobs ? py::cast(g.logprobs) : py::none();
                             })
      .def_readonly("finish_reason", &tbn::Generation::finish_reason)
      .def_readonly("stop_id", &tbn::Generation::stop_id)
      .def_readonly("prompt_len", &tbn::Generation::prompt_len)
      .def_readonly("encode_s", &tbn::Generation::encode_s)
      .def_readonly("prefill_s", &tbn::Generation::prefill_s)
      .def_readonly("ttft_s", &tbn::Generation::ttft_s)
      .def_readonly("step_s", &tbn::Generation::step_s)
      .def_readonly("prefill", &tbn::Generation::prefill)
      .def_readonly("decode", &tbn::Generation::decode)
      .def("__repr__", [](const tbn::Generation &g) {
        return repr("Generation", {{"slot", py::cast(g.slot)}, {"tokens", py::cast(g.tokens)},
                                   {"finish_reason", py::cast(g.finish_reason)}, {"prompt_len", py::cast(g.prompt_len)},
                                   {"ttft_s", py::cast(g.ttft_s)}, {"steps", py::cast(g.step_s.size())}});
      });

  py::class_<tbn::Runtime>(m, "Runtime")
      .def(py::init([](const std::string &bmodel, int device, bool share_mem, float mask_value) {
             tbn::RuntimeOptions o;
             o.share_mem = share_mem;
             o.mask_value = mask_value;
             py::gil_scoped_release release;
             return std::make_unique<tbn::Runtime>(bmodel, device, o);
           }),
           py::arg("bmodel"), py::arg("device") = 0, py::arg("share_mem") = true,
           py::arg("mask_value") = tbn::kDefaultMaskValue,
           "Load a bmodel on a device (simulator: any id) and check its nets. mask_value: the additive value of a "
           "hidden mask position (the sidecar's audio_mask_value; DEFAULT_MASK_VALUE when the bmodel has none).")
      // copies: a Layout kept by the caller must not keep the runtime (and its device memory) alive
      .def_property_readonly("layout", &tbn::Runtime::layout, py::return_value_policy::copy)
      .def_property_readonly("nets", &tbn::Runtime::nets, py::return_value_policy::copy,
                             "every net of the bmodel (NetSummary)")
      .def_property_readonly("device", &tbn::Runtime::device_id)
      .def("counters", &tbn::Runtime::counters, "Counters since load.")
      .def_property_readonly("batch", &tbn::Runtime::batch, "decode rows = slots (requests in flight at once)")
      .def(
          "generate",
          [](tbn::Runtime &r, const Features &features, std::vector<tbn::AudioChunk> audio, std::vector<int> prompt_ids,
             int audio_token_id, std::vector<int> stop_ids, int max_new_tokens) {
            tbn::Request q = request(features, std::move(audio), std::move(prompt_ids), audio_token_id,
                                     std::move(stop_ids), max_new_tokens);
            py::gil_scoped_release release;
            return r.generate(q);
          },
          py::arg("features"), py::arg("audio"), py::arg("prompt_ids"), py::arg("audio_token_id"), py::arg("stop_ids"),
          py::arg("max_new_tokens"),
          "Greedy transcription of one request (start + step until done + finish): a Generation with tokens, finish "
          "reason, timings and traffic counters. features: [n_mels, frames] float32 log-mel (the clip's frames "
          "first); audio: its AudioChunks; prompt_ids: the chat prompt with ONE audio_token_id.")
      .def(
          "encode",
          [](tbn::Runtime &r, const Features &features, std::vector<tbn::AudioChunk> audio) {
            tbn::Request q = request(features, std::move(audio), {0}, 0, {}, 1);
            std::vector<float> e;
            {
              py::gil_scoped_release release;
              e = r.encode(q.features, q.n_mels, q.width, q.audio);
            }
            const py::ssize_t hidden = r.layout().hidden;
            py::array_t<float> out({static_cast<py::ssize_t>(e.size()) / hidden, hidden});
            std::copy(e.begin(), e.end(), out.mutable_data());
            return out;
          },
          py::arg("features"), py::arg("audio"),
          "The audio net alone: the audio embeddings [audio tokens, hidden] float32 that start() would splice into "
          "the prompt (for checking the encoder against a reference).")
      .def(
          "start",
          [](tbn::Runtime &r, const Features &features, std::vector<tbn::AudioChunk> audio, std::vector<int> prompt_ids,
             int audio_token_id, std::vector<int> stop_ids, int max_new_tokens) {
            tbn::Request q = request(features, std::move(audio), std::move(prompt_ids), audio_token_id,
                                     std::move(stop_ids), max_new_tokens);
            py::gil_scoped_release release;
            return r.start(q);
          },
          py::arg("features"), py::arg("audio"), py::arg("prompt_ids"), py::arg("audio_token_id"), py::arg("stop_ids"),
          py::arg("max_new_tokens"),
          "Start a request in a free slot (audio encode, splice, prefill into the slot's K/V, first token); returns "
          "the slot. TooLongError if the prompt leaves no room; RuntimeError if no slot is free.")
      .def(
          "step",
          [](tbn::Runtime &r) {
            py::gil_scoped_release release;
            return r.step();
          },
          "One decode step for every decoding slot (one launch per net for the whole batch); returns the slots that "
          "stopped decoding in it.")
      .def("finish", &tbn::Runtime::finish, py::arg("slot"),
           "The result (Generation) of a done slot, which becomes free; TooLongError for a slot whose answer reached "
           "SEQLEN.")
      .def("cancel", &tbn::Runtime::cancel, py::arg("slot"), "Free a slot, whatever its state.")
      .def("state", &tbn::Runtime::state, py::arg("slot"), "'free' | 'decoding' | 'done' | 'too_long'")
      .def("free_slots", &tbn::Runtime::free_slots);
}
