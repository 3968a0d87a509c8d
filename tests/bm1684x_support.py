"""Shared by the bm1684x/native tests: the tiny Qwen2-Audio fixture, its HF reference, and the native extension.

Tests that need the extension or the fixture fail in CI (CI=true) when either is missing, and skip locally with the
command that builds it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("TRANSCRIBE_BATCH_TINY_FIXTURE", REPO / "tests" / "fixtures" / "tiny-qwen2-audio"))
SIM_SDK = Path(os.environ.get("TRANSCRIBE_BATCH_SIM_SDK", "~/.cache/transcribe-batch/sim-sdk-1.30.2")).expanduser()
BUILD = "make native   (= bash native/scripts/fetch_sim_sdk.sh $SIM_SDK && LIBSOPHON_ROOT=$SIM_SDK pip install ./native)"
MARGIN_TIE = 1e-3  # reference steps whose top-2 logits are closer than this may legitimately differ


def _missing(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


def native():
    try:
        import transcribe_batch_native
    except ImportError as e:
        _missing(f"native extension transcribe_batch_native not installed ({e}); build it with: {BUILD}")
    if not (SIM_SDK / "lib").is_dir() and not Path("/opt/sophon/libsophon-current/lib").is_dir():
        _missing(f"no simulator SDK at {SIM_SDK} (TRANSCRIBE_BATCH_SIM_SDK) and no libsophon; run: {BUILD}")
    return transcribe_batch_native


def fixture_dir() -> Path:
    for name in ("tiny-qwen2-audio.bmodel", "tiny-qwen2-audio.bmodel.json", "reference.json", "config.json"):
        if not (FIXTURE / name).is_file():
            _missing(f"tiny fixture incomplete: {FIXTURE / name} missing (regenerate: native/compile/make_tiny_fixture.py)")
    return FIXTURE


def bmodel_path() -> Path:
    return fixture_dir() / "tiny-qwen2-audio.bmodel"


def port_bmodel_path() -> Path:
    """The same weights compiled in the public port's net layout (heads-first K, audio + projector, logits + greed)."""
    path = FIXTURE.parent / "tiny-qwen2-audio-port" / "tiny-qwen2-audio-port.bmodel"
    if not path.is_file():
        _missing(f"port-layout fixture missing: {path} (regenerate: native/compile/port_layout.py)")
    return path


BATCH = 4  # decode rows of the batched fixture


def batched_bmodel_path() -> Path:
    """The same weights compiled with `convert.py --batch 4` (4 decode slots; prefill and audio net as at B=1)."""
    path = FIXTURE.parent / f"tiny-qwen2-audio-b{BATCH}" / f"tiny-qwen2-audio-b{BATCH}.bmodel"
    if not path.is_file() or not Path(f"{path}.json").is_file():
        _missing(f"batched fixture missing: {path} (+ .json) (regenerate: native/compile/make_tiny_fixture.py "
                 "--batched-only)")
    return path


def runtime_audio(tbn, family, req) -> list:
    """The request's audio as the runtime takes it: the model family's chunks of its valid frames (as the engine
    passes them)."""
    from transcribe_batch.workers.engines.bm1684x import native_audio

    return native_audio(tbn, family, int(req.feature_mask.sum()))


def too_long_prompt(req, kv_capacity: int, answer_room: int) -> list[int]:
    """req's prompt padded with copies of its last id so the merged prompt leaves `answer_room` positions of the
    runtime's kv_capacity: the request starts, then overruns SEQLEN in its answer_room-th decode step."""
    merged = len(req.prompt_ids) - 1 + req.n_audio_tokens
    return [req.prompt_ids[-1]] * (kv_capacity - answer_room - merged) + list(req.prompt_ids)


def reference() -> dict:
    return json.loads((fixture_dir() / "reference.json").read_text())


def clip_row(clip: dict, audio_dir: Path):
    """A manifest row (ManifestRow) for a reference clip."""
    from transcribe_batch.manifests.row import ManifestRow

    return ManifestRow(id=clip["audio_filepath"], audio_filepath=str(audio_dir / clip["audio_filepath"]),
                       offset=clip.get("offset") or 0.0, duration=clip.get("duration"))


def assert_tokens_match(got: list[int], clip: dict, *, where: str) -> None:
    """Tokens equal the HF reference at every step; a step may differ only where the reference's top-2 margin is
    below MARGIN_TIE, and then the test says so (and stops comparing: later steps follow a different prefix)."""
    want = clip["tokens"]
    steps = clip["steps"]
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            margin = steps[i]["margin"]
            assert margin < MARGIN_TIE and g == steps[i]["top2"], (
                f"{where}: step {i}: got token {g}, reference {w} (top-2 {steps[i]['top2']}, margin {margin:.5f}); "
                f"got {got}, reference {want}"
            )
            print(f"{where}: step {i} differs at a near-tie (margin {margin:.2e}): got {g}, reference {w}")
            return
    assert len(got) == len(want), f"{where}: got {len(got)} tokens {got}, reference {len(want)} {want}"


# The fixture is f16 (10-bit mantissa): the card's logits differ from HF fp32's by a few 1e-3 (rounding of the
# hidden states, the f16 lm_head matmul), and log p(top-1) = -log(sum exp(x - max)) moves by at most the largest
# logit error; measured max |card - HF| is printed by the tests. bf16 builds would need ~8x this.
LOGPROB_ATOL_F16 = 2e-2


def assert_logprobs_match(got: list[float] | None, clip: dict, *, where: str, atol: float = LOGPROB_ATOL_F16) -> float:
    """The card's per-token log-probabilities against HF fp32's log-softmax of the chosen tokens (aligned with the
    tokens it generated, stop id excluded). Returns the largest difference."""
    assert got is not None, f"{where}: no token log-probabilities"
    want = clip["token_logprobs"][:len(got)]
    assert len(got) == len(want), f"{where}: {len(got)} log-probabilities for {len(want)} reference steps"
    assert all(v <= 1e-3 for v in got), f"{where}: log-probabilities above 0: {got}"
    worst = max((abs(g - w) for g, w in zip(got, want)), default=0.0)
    assert worst <= atol, f"{where}: log-probabilities {got} vs HF fp32 {want} (max diff {worst:.2e} > {atol})"
    return worst
