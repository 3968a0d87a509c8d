"""Which bmodel layout the native runtime found, what it means for the requests, and where it is not the model folder's
function.

The runtime (native/) recognises a bmodel's nets by their structure and reports them as a Layout; this module names
the layout, turns it into the engine's limits (what the front end fits requests to) and the audio chunks the runtime
takes, and says what such a bmodel cannot compute. Four layouts:

- "tpu-mlir-qwen3-asr": tpu-mlir's own Qwen3-ASR converter (`llm_convert.py ... --max_input_length M`), the layout of
  Sophgo's prebuilt `qwen3-asr-*_bm1684x` bmodels: batch 1, a prefill of M positions (the longest prompt, audio
  included) and a decode history of SEQLEN, an `audio` net over ONE 1-s chunk at a time that attends within that
  chunk (no mask). Requests get whole seconds of audio (padded with silence, never truncated); qwen-asr's released
  checkpoints attend within 8-s windows, which this net cannot compute: the engine runs it and says so (caveats).
- "qwen3-asr": native/compile/convert.py's Qwen3-ASR (chunked audio net with masks, one launch per attention window).
- "qwen2-audio": native/compile/convert.py's Qwen2-Audio (one 30-s window per request).
- "qwen2-audio-port": the public Qwen2-Audio port's (separate projector net).

native/compile/README.md section 8 lists the prebuilt layout's nets; docs/prebuilt.md how to run it.
"""

from __future__ import annotations

from ..contracts import EngineLimits
from ..models import ModelFamily

PREBUILT = "tpu-mlir-qwen3-asr"
ONE_CHUNK = "one_chunk"  # Layout.audio_kind of tpu-mlir's Qwen3-ASR audio net


def layout_name(layout) -> str:
    """The name of the layout the runtime found (module docstring)."""
    if layout.audio_kind == ONE_CHUNK:
        return PREBUILT
    if layout.audio_kind == "chunked":
        return "qwen3-asr"
    return "qwen2-audio-port" if layout.projector_net else "qwen2-audio"


def takes_any_length(layout) -> bool:
    """Chunked encoders take as many chunks as the clip has; a window encoder one fixed window per request."""
    return layout.audio_kind != "window"


def chunk_seconds(family: ModelFamily, layout) -> float:
    feats = family.features
    return layout.audio_chunk_frames * feats.hop_length / feats.sampling_rate


def engine_limits(family: ModelFamily, layout) -> EngineLimits:
    """The engine's limits from the bmodel: SEQLEN (prompt + answer), the prefill width (prompt + audio; equal to
    SEQLEN except in the prebuilt layout), the audio a request may hold (a fixed window's length, else the family's
    own limit) and, for the one-chunk audio net, whole chunks of audio."""
    feats = family.features
    window_s = layout.n_frames * feats.hop_length / feats.sampling_rate
    one_chunk = layout.audio_kind == ONE_CHUNK
    return EngineLimits(
        max_audio_s=family.max_request_s if takes_any_length(layout) else window_s,
        max_seq_len=int(layout.seqlen),
        max_input_len=int(layout.prefill_len),
        audio_multiple_s=chunk_seconds(family, layout) if one_chunk else None,
        layout=layout_name(layout),
        caveats=tuple(caveats(family, layout)),
    )


def runtime_chunks(native, family: ModelFamily, layout, n_valid_frames: int) -> list:
    """The family's chunks of a clip (`audio_chunks`) as the runtime's AudioChunk structs for this layout's audio net:
    the one-chunk net has no masks, so its chunks carry frames and rows only."""
    chunks = family.audio_chunks(n_valid_frames)
    if layout.audio_kind == ONE_CHUNK:
        return [native.AudioChunk(frames=c.frames, rows=c.rows) for c in chunks]
    return [native.AudioChunk(frames=c.frames, keep=list(c.keep), keys=c.keys, rows=c.rows) for c in chunks]


def one_chunk_problems(family: ModelFamily, layout) -> list[str]:
    """The one-chunk audio net against the model folder: a chunked family, the same chunk length, mel bins and rows
    per chunk."""
    facts = family.net_facts()
    name = family.model_type
    if facts.chunk_frames is None:
        return [f"audio encoder: the bmodel's audio net takes chunks of {layout.audio_chunk_frames} frames, the {name} "
                "folder's encoder a fixed window"]
    problems = []
    if facts.chunk_frames != layout.audio_chunk_frames:
        problems.append(f"audio chunk frames: the bmodel's audio net takes {layout.audio_chunk_frames}, config.json "
                        f"says {facts.chunk_frames} (2 * n_window)")
    rows = sum(c.rows for c in family.audio_chunks(layout.audio_chunk_frames))
    if rows != layout.audio_rows:
        problems.append(f"audio tokens per chunk: the bmodel's audio net gives {layout.audio_rows}, the {name} folder's "
                        f"encoder makes {rows} of {layout.audio_chunk_frames} frames")
    return problems


def caveats(family: ModelFamily, layout) -> list[str]:
    """Where the bmodel does not compute the model folder's function, in words for the run's log."""
    if layout.audio_kind != ONE_CHUNK:
        return []
    window = family.net_facts().frames_per_launch
    chunk = layout.audio_chunk_frames
    if window == chunk:
        return []
    return [f"the bmodel's audio net ({PREBUILT} layout: tpu-mlir's own Qwen3-ASR converter, as in Sophgo's prebuilt "
            f"bmodels) attends within one {chunk}-frame chunk ({chunk_seconds(family, layout):g} s), but this model "
            f"folder's encoder attends within n_window_infer = {window} frames: the audio embeddings of any request "
            f"longer than one chunk differ from qwen-asr's, and so may the transcripts. Running anyway; compile your "
            "own bmodel (native/compile/convert.py) for the released encoder - docs/prebuilt.md"]


def describe(layout, family: ModelFamily) -> dict:
    """What the engine found, for its log and the run's records."""
    return {
        "layout": layout_name(layout),
        "seqlen": int(layout.seqlen),
        "prefill_len": int(layout.prefill_len),
        "batch": int(layout.batch),
        "hidden": int(layout.hidden),
        "n_layers": int(layout.n_layers),
        "lm_head": layout.lm_head,
        "token_logprob": layout.token_logprob,
        "audio_kind": layout.audio_kind,
        "audio_chunk_frames": int(layout.audio_chunk_frames),
        "audio_rows": int(layout.audio_rows),
        "caveats": caveats(family, layout),
    }
