"""BM1684X runtime for Qwen2-Audio and Qwen3-ASR bmodels (C++17, KV cache on the device).

    rt = Runtime("model.bmodel", device=0)
    rt.layout            # what the runtime found: SEQLEN, hidden, layers, head kind, mel window, ...
    out = rt.generate(features, n_valid_frames, prompt_ids, audio_token_id, n_audio_tokens, stop_ids, max_new_tokens)
    out["tokens"], out["finish_reason"], out["ttft_s"], out["step_s"], out["decode"]["h2d_bytes"]

Errors: TooLongError (the request does not fit SEQLEN or the mel window), LayoutError (the bmodel's nets are not a
layout this runtime drives), DeviceError (a device call failed).
"""

from ._native import DeviceError, LayoutError, Runtime, TooLongError

__all__ = ["DeviceError", "LayoutError", "Runtime", "TooLongError"]
