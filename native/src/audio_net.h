// The bmodel's audio encoder net and how a request's audio is fed to it. Each kind of audio net (one converter's
// way of compiling an encoder) is one AudioNet subclass in audio_net.cpp with a `recognise` function that says
// whether a net is of its kind; recognise_audio_net() asks them in turn.
//
// The lengths the masks need come with the request (AudioChunk: computed by the model family in Python); a kind
// only checks them against its net's shapes and fills the inputs.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "device.h"
#include "nets.h"
#include "runtime.h"

namespace tbn {

// Where the embeddings go: rows [from, from + n) of `mem` (dtype dt, `hidden` wide) onto the next n prompt rows.
using Splice = std::function<void(bm_device_mem_t mem, bm_data_type_t dt, int from, int n)>;

class AudioNet {
 public:
  virtual ~AudioNet() = default;
  // its fields of the runtime's Layout (audio_kind, mel window, rows, masks)
  virtual void describe(Layout &layout) const = 0;
  // std::invalid_argument when the features or chunks do not fit the net; TooLong when the clip holds more audio
  // than the net can take
  virtual void check(int n_mels, int width, const std::vector<AudioChunk> &chunks) const = 0;
  // runs the net over the request's audio (as many launches as it needs), the rows to `splice` in order
  virtual void encode(Device &dev, const std::vector<float> &features, int width,
                      const std::vector<AudioChunk> &chunks, const Splice &splice) const = 0;
};

// The audio net ('audio', or the names other converters use) and its optional separate projector, as the first
// kind that recognises it; LayoutError naming the net when none does. mask_value: the hidden value of key masks.
std::unique_ptr<AudioNet> recognise_audio_net(const NetSet &nets, int hidden, float mask_value);

}  // namespace tbn
