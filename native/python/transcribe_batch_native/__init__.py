"""BM1684X runtime for Qwen2-Audio and Qwen3-ASR bmodels (C++17, KV cache on the device).

    rt = Runtime("model.bmodel", device=0, mask_value=sidecar["audio_mask_value"])
    rt.layout            # Layout: SEQLEN, hidden, layers, head kind, audio net kind and geometry, ...
    audio = [AudioChunk(frames=..., keep=[...], keys=..., rows=...)]   # the model family's numbers (workers/models/)
    out = rt.generate(features, audio, prompt_ids, audio_token_id, stop_ids, max_new_tokens)
    out.tokens, out.finish_reason, out.token_logprobs, out.ttft_s, out.step_s, out.decode.h2d_bytes

Errors: TooLongError (the request does not fit SEQLEN or the mel window), LayoutError (the bmodel's nets are not a
layout this runtime drives), DeviceError (a device call failed).
"""

from ._native import (DEFAULT_MASK_VALUE, AudioChunk, Counters, DeviceError, Generation, Layout, LayoutError,
                      NetSummary, Runtime, TensorSummary, TooLongError)

__all__ = ["DEFAULT_MASK_VALUE", "AudioChunk", "Counters", "DeviceError", "Generation", "Layout", "LayoutError",
           "NetSummary", "Runtime", "TensorSummary", "TooLongError"]
