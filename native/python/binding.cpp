// Python binding of the runtime. Device work runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "runtime.h"

namespace py = pybind11;

namespace {

py::dict counters_dict(const tbn::Counters &c) {
  py::dict d;
  d["h2d_bytes"] = c.h2d_bytes;
  d["d2h_bytes"] = c.d2h_bytes;
  d["d2d_bytes"] = c.d2d_bytes;
  d["h2d_calls"] = c.h2d_calls;
  d["d2h_calls"] = c.d2h_calls;
  d["d2d_calls"] = c.d2d_calls;
  d["launches"] = c.launches;
  return d;
}

py::dict layout_dict(const tbn::Layout &l) {
  py::dict d;
  d["seqlen"] = l.seqlen;
  d["hidden"] = l.hidden;
  d["n_layers"] = l.n_layers;
  d["kv_row_bytes"] = l.kv_row_bytes;
  d["states_dtype"] = l.states_dtype;
  d["mask_dtype"] = l.mask_dtype;
  d["kv_dtype"] = l.kv_dtype;
  d["lm_head"] = l.lm_head;
  d["token_logprob"] = l.token_logprob;
  d["vocab"] = l.vocab;
  d["audio_net"] = l.audio_net;
  d["projector_net"] = l.projector_net;
  d["n_mels"] = l.n_mels;
  d["n_frames"] = l.n_frames;
  d["audio_rows"] = l.audio_rows;
  d["audio_mask"] = l.audio_mask;
  d["audio_kind"] = l.audio_kind;
  d["audio_chunk_frames"] = l.audio_chunk_frames;
  d["audio_chunks_per_window"] = l.audio_chunks_per_window;
  d["decode_addr_mode"] = l.decode_addr_mode;
  d["batch"] = l.batch;
  d["decode_kv"] = l.decode_kv;
  d["kv_capacity"] = l.kv_capacity;
  return d;
}

py::list nets_list(const std::vector<tbn::NetSummary> &nets) {
  py::list out;
  auto tensors = [](const std::vector<tbn::TensorSummary> &ts) {
    py::list l;
    for (const auto &t : ts) {
      py::dict d;
      d["name"] = t.name;
      d["dtype"] = t.dtype;
      d["shape"] = t.shape;
      l.append(d);
    }
    return l;
  };
  for (const auto &n : nets) {
    py::dict d;
    d["name"] = n.name;
    d["is_dynamic"] = n.is_dynamic;
    d["addr_mode"] = n.addr_mode;
    d["stage_num"] = n.stage_num;
    d["inputs"] = tensors(n.inputs);
    d["outputs"] = tensors(n.outputs);
    out.append(d);
  }
  return out;
}

py::dict generation_dict(const tbn::Generation &g) {
  py::dict d;
  d["slot"] = g.slot;
  d["tokens"] = g.tokens;
  // natural-log probability of each token (the head's f32 log-softmax), or None when the bmodel's head gives none
  if (g.has_logprobs)
    d["token_logprobs"] = g.logprobs;
  else
    d["token_logprobs"] = py::none();
  d["finish_reason"] = g.finish_reason;
  d["stop_id"] = g.stop_id;
  d["prompt_len"] = g.prompt_len;
  d["encode_s"] = g.encode_s;
  d["prefill_s"] = g.prefill_s;
  d["ttft_s"] = g.ttft_s;
  d["step_s"] = g.step_s;
  d["prefill"] = counters_dict(g.prefill);
  d["decode"] = counters_dict(g.decode);
  return d;
}

std::vector<float> features_vector(const py::array_t<float, py::array::c_style | py::array::forcecast> &features,
                                   int &n_mels, int &n_frames) {
  if (features.ndim() != 2) throw std::invalid_argument("features must be [n_mels, n_frames]");
  n_mels = static_cast<int>(features.shape(0));
  n_frames = static_cast<int>(features.shape(1));
  return std::vector<float>(features.data(), features.data() + features.size());
}

using Features = py::array_t<float, py::array::c_style | py::array::forcecast>;

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "BM1684X runtime for Qwen2-Audio bmodels (KV cache on the device)";
  auto base = py::register_exception<tbn::DeviceError>(m, "DeviceError", PyExc_RuntimeError);
  // std::logic_error (slot misuse) arrives as RuntimeError, std::out_of_range as IndexError
  py::register_exception<tbn::TooLong>(m, "TooLongError", PyExc_ValueError);
  py::register_exception<tbn::LayoutError>(m, "LayoutError", PyExc_ValueError);
  (void)base;

  py::class_<tbn::Runtime>(m, "Runtime")
      .def(py::init([](const std::string &bmodel, int device, bool share_mem, float audio_mask_value) {
             tbn::RuntimeOptions o;
             o.share_mem = share_mem;
             o.audio_mask_value = audio_mask_value;
             py::gil_scoped_release release;
             return std::make_unique<tbn::Runtime>(bmodel, device, o);
           }),
           py::arg("bmodel"), py::arg("device") = 0, py::arg("share_mem") = true,
           py::arg("audio_mask_value") = -10000.0f,
           "Load a bmodel on a device (simulator: any id) and check its nets.")
      .def_property_readonly("layout", [](const tbn::Runtime &r) { return layout_dict(r.layout()); })
      .def_property_readonly("nets", [](const tbn::Runtime &r) { return nets_list(r.nets()); })
      .def_property_readonly("device", &tbn::Runtime::device_id)
      .def("counters", [](const tbn::Runtime &r) { return counters_dict(r.counters()); },
           "Bytes and calls copied host->device, device->host, device->device, and net launches since load.")
      .def_property_readonly("batch", &tbn::Runtime::batch, "decode rows = slots (requests in flight at once)")
      .def(
          "generate",
          [](tbn::Runtime &r, Features features, int n_valid_frames, std::vector<int> prompt_ids, int audio_token_id,
             int n_audio_tokens, std::vector<int> stop_ids, int max_new_tokens) {
            int n_mels = 0, n_frames = 0;
            std::vector<float> f = features_vector(features, n_mels, n_frames);
            tbn::Generation g;
            {
              py::gil_scoped_release release;
              g = r.generate(f, n_mels, n_frames, n_valid_frames, prompt_ids, audio_token_id, n_audio_tokens,
                             stop_ids, max_new_tokens);
            }
            return generation_dict(g);
          },
          py::arg("features"), py::arg("n_valid_frames"), py::arg("prompt_ids"), py::arg("audio_token_id"),
          py::arg("n_audio_tokens"), py::arg("stop_ids"), py::arg("max_new_tokens"),
          "Greedy transcription of one request (start + step until done + finish); returns tokens, finish reason, "
          "timings and traffic counters.")
      .def(
          "encode",
          [](tbn::Runtime &r, Features features, int n_valid_frames, int n_audio_tokens) {
            int n_mels = 0, n_frames = 0;
            std::vector<float> f = features_vector(features, n_mels, n_frames);
            std::vector<float> e;
            {
              py::gil_scoped_release release;
              e = r.encode(f, n_mels, n_frames, n_valid_frames, n_audio_tokens);
            }
            const py::ssize_t hidden = r.layout().hidden;
            py::array_t<float> out({static_cast<py::ssize_t>(n_audio_tokens), hidden});
            std::copy(e.begin(), e.end(), out.mutable_data());
            return out;
          },
          py::arg("features"), py::arg("n_valid_frames"), py::arg("n_audio_tokens"),
          "The audio net alone: the n_audio_tokens audio embeddings [n_audio_tokens, hidden] float32 that start() "
          "would splice into the prompt (for checking the encoder against a reference).")
      .def(
          "start",
          [](tbn::Runtime &r, Features features, int n_valid_frames, std::vector<int> prompt_ids, int audio_token_id,
             int n_audio_tokens, std::vector<int> stop_ids, int max_new_tokens) {
            int n_mels = 0, n_frames = 0;
            std::vector<float> f = features_vector(features, n_mels, n_frames);
            py::gil_scoped_release release;
            return r.start(f, n_mels, n_frames, n_valid_frames, prompt_ids, audio_token_id, n_audio_tokens, stop_ids,
                           max_new_tokens);
          },
          py::arg("features"), py::arg("n_valid_frames"), py::arg("prompt_ids"), py::arg("audio_token_id"),
          py::arg("n_audio_tokens"), py::arg("stop_ids"), py::arg("max_new_tokens"),
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
      .def(
          "finish", [](tbn::Runtime &r, int slot) { return generation_dict(r.finish(slot)); }, py::arg("slot"),
          "The result of a done slot, which becomes free; TooLongError for a slot whose answer reached SEQLEN.")
      .def("cancel", &tbn::Runtime::cancel, py::arg("slot"), "Free a slot, whatever its state.")
      .def("state", &tbn::Runtime::state, py::arg("slot"), "'free' | 'decoding' | 'done' | 'too_long'")
      .def("free_slots", &tbn::Runtime::free_slots);
}
