"""The quantized deployment modes (bf16, w8bf16, w4bf16) token-checked on the BM1684X simulator.

The fixture (tests/fixtures/tiny-qwen2-audio-confident/, made by native/compile/make_confident_fixture.py) is the
tiny Qwen2-Audio trained to transcribe four card clips, so every greedy step leads the runner-up logit by several
logits. Each quantized bmodel, driven by the native runtime like the f16 fixture in test_native_runtime.py, must give
the HF fp32 tokens at every step: with margins this wide a mismatch is a real fault of the quantized path (a wrong
group size, scale or dtype), not rounding noise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bm1684x_support import REPO, _missing, clip_row, native, runtime_audio

FIXTURE = Path(os.environ.get("TRANSCRIBE_BATCH_CONFIDENT_FIXTURE",
                              REPO / "tests" / "fixtures" / "tiny-qwen2-audio-confident"))
QUANTIZATIONS = ("bf16", "w8bf16", "w4bf16")
REGENERATE = "native/compile/make_confident_fixture.py"
# Every reference step's top-1 logit must lead the top-2 by at least this much. A flip needs the two logits to move
# toward each other by the margin, i.e. an error of at least MIN_MARGIN / 2 in one of them; the w4bf16 build's
# largest measured error against HF fp32 (reference.json "measured", make_confident_fixture.py --measure) is required
# to stay below a quarter of it, so this fixture separates "quantization noise" from "broken" by a factor >= 2.
# (Recorded: smallest reference margin 7.28, largest w4bf16 error 0.175 - a factor of ~20.)
MIN_MARGIN = 3.0
# The simulator costs ~1 s per net launch (audio, embedding, 2 blocks, lm_head, then 4 per decoded token: 17 for a
# 4-token answer). The two clips with the shortest answers ("ten of clubs", "five five"; 4 tokens with the stop):
# the 4-bit build, the one most at risk, decodes both; bf16 and w8bf16 one each (68 launches in all). Every
# reference step of all four clips is checked against each build's logits by make_confident_fixture.py --measure.
TEST_CLIPS = {"bf16": ("001.wav",), "w8bf16": ("004.wav",), "w4bf16": ("001.wav", "004.wav")}


def reference() -> dict:
    path = FIXTURE / "reference.json"
    if not path.is_file():
        _missing(f"confident fixture missing: {path} (regenerate: {REGENERATE})")
    return json.loads(path.read_text())


def bmodel(q: str) -> Path:
    path = FIXTURE / reference()["bmodels"][q]
    if not path.is_file():
        _missing(f"confident fixture incomplete: {path} missing (regenerate: {REGENERATE})")
    return path


def family():
    from transcribe_batch.workers.models import load_family

    return load_family(FIXTURE)


def describe(clip: dict) -> str:
    steps = clip["steps"]
    return ", ".join(f"step {i}: {s['top1']} over {s['top2']} by {s['margin']:.2f}" for i, s in enumerate(steps))


def test_reference_answers_are_confident_and_depend_on_the_audio(audio_rows):
    ref = reference()
    stop = set(ref["stop_token_ids"])
    answers = {}
    for clip in ref["clips"]:
        where = clip["audio_filepath"]
        assert clip["finish"] == "stop" and clip["tokens"][-1] in stop, f"{where}: answer does not end in a stop id"
        small = [(i, s["margin"]) for i, s in enumerate(clip["steps"]) if s["margin"] < MIN_MARGIN]
        assert not small, f"{where}: reference margins below {MIN_MARGIN}: {small} ({describe(clip)})"
        assert [s["top1"] for s in clip["steps"]] == clip["tokens"]
        transcript = next(r["text"] for r in audio_rows if r["audio_filepath"] == where)
        assert clip["text"].split("<|")[0] == transcript, f"{where}: the fixture says {clip['text']!r}"
        answers[where] = tuple(clip["tokens"])
    assert len(set(answers.values())) == len(answers), f"answers do not depend on the audio: {answers}"
    # the text of the prompt is the same for every clip: only the audio differs
    audio_id = json.loads((FIXTURE / "config.json").read_text())["audio_token_index"]
    prompts = {tuple(i for i in c["input_ids"] if i != audio_id) for c in ref["clips"]}
    assert len(prompts) == 1, "the clips' prompts differ beyond their audio tokens"


def test_measured_logit_error_leaves_the_margins_wide():
    """What make_confident_fixture.py --measure recorded: each build's per-step logits against HF fp32."""
    ref = reference()
    measured = ref.get("measured")
    assert measured, f"{FIXTURE / 'reference.json'} has no 'measured' section (run {REGENERATE} --measure)"
    assert set(measured) == set(QUANTIZATIONS)
    for q in QUANTIZATIONS:
        m = measured[q]
        assert m["all_top1_equal"], f"{q}: a logits build's top-1 differs from HF: {m['clips']}"
        assert m["max_abs_logit_error"] < MIN_MARGIN / 4, (
            f"{q}: max |logit - HF fp32| {m['max_abs_logit_error']:.3f} is not small against margin {MIN_MARGIN}")
    # more bits, less error: the ordering is what quantization should give
    errs = [measured[q]["max_abs_logit_error"] for q in QUANTIZATIONS]
    assert errs[0] <= errs[2] and errs[1] <= errs[2], errs


@pytest.fixture(scope="module")
def tbn():
    return native()


@pytest.fixture(scope="module")
def requests(audio_dir):
    from transcribe_batch.workers.frontend import FrontEnd

    fe = FrontEnd(FIXTURE, template="default", max_new_tokens=256)
    wanted = {name for names in TEST_CLIPS.values() for name in names} | {"001.wav", "004.wav"}
    out = {}
    for clip in reference()["clips"]:
        if clip["audio_filepath"] in wanted:
            (req,) = fe.prepare(clip_row(clip, audio_dir))
            assert list(req.expanded_ids) == clip["input_ids"], f"{clip['audio_filepath']}: front end prompt differs"
            out[clip["audio_filepath"]] = (clip, req)
    assert set(out) == wanted
    return out


@pytest.mark.slow
@pytest.mark.simulator
@pytest.mark.parametrize("q", QUANTIZATIONS)
def test_quantized_bmodel_gives_the_hf_tokens_at_every_step(tbn, requests, q):
    path = bmodel(q)
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert side["quantization"] == q and side["half_precision"] == "bf16"
    rt = tbn.Runtime(str(path), 0, mask_value=side["audio_mask_value"])
    assert rt.layout.states_dtype.lower() == "bf16", rt.layout
    for clip, req in (requests[name] for name in TEST_CLIPS[q]):
        out = rt.generate(req.features, runtime_audio(tbn, family(), req), list(req.prompt_ids), req.audio_token_id,
                          list(req.stop_ids), reference()["max_new_tokens"])
        got = out.tokens + ([out.stop_id] if out.finish_reason == "eos" else [])
        want = clip["tokens"]
        for i, (g, w) in enumerate(zip(got, want)):
            s = clip["steps"][i]
            assert g == w, (f"{q} {clip['audio_filepath']}: step {i}: got {g}, HF fp32 {w} (top-2 {s['top2']}, "
                            f"margin {s['margin']:.3f}); got {got}, reference {want}; margins: {describe(clip)}")
        assert len(got) == len(want), f"{q} {clip['audio_filepath']}: got {got}, reference {want}"
        assert out.finish_reason == "eos"
        print(f"{q} {clip['audio_filepath']}: {got} = HF; margins {[round(s['margin'], 2) for s in clip['steps']]}")


# ------------------------------------------- the same builds with 4 decode rows (convert.py --batch 4)


def batched_bmodel(q: str) -> tuple[Path, int]:
    batched = reference().get("batched_bmodels")
    if not batched:
        _missing(f"{FIXTURE / 'reference.json'} lists no batched bmodels (regenerate: {REGENERATE} --batched-only)")
    path = FIXTURE / batched["bmodels"][q]
    if not path.is_file():
        _missing(f"confident fixture incomplete: {path} missing (regenerate: {REGENERATE} --batched-only)")
    return path, batched["batch"]


@pytest.mark.slow
@pytest.mark.simulator
@pytest.mark.parametrize("q", QUANTIZATIONS)
def test_batched_quantized_bmodel_gives_the_hf_tokens_in_every_slot(tbn, requests, q):
    """Two requests in two of the B slots, the second started after the first's first decode step (so the rows sit
    at different positions in every shared step): each request's tokens equal HF fp32 at every step."""
    path, batch = batched_bmodel(q)
    if not hasattr(tbn.Runtime, "start"):
        _missing("this native runtime has no batched decode (Runtime.start/step/finish): rebuild it (make native)")
    rt = tbn.Runtime(str(path), 0)
    assert rt.batch == batch, (rt.batch, batch)
    names = ("001.wav", "004.wav")
    max_new = reference()["max_new_tokens"]

    def start(name):
        _, req = requests[name]
        return rt.start(req.features, runtime_audio(tbn, family(), req), list(req.prompt_ids), req.audio_token_id,
                        list(req.stop_ids), max_new)

    slots = {names[0]: start(names[0])}
    done = set(rt.step())
    slots[names[1]] = start(names[1])
    results = {}
    while len(results) < len(names):
        for name, slot in slots.items():
            if name not in results and (slot in done or rt.state(slot) != "decoding"):
                results[name] = rt.finish(slot)
        if len(results) < len(names):
            done = set(rt.step())
    assert len(set(slots.values())) == len(names)
    for name in names:
        clip, _ = requests[name]
        out = results[name]
        got = out.tokens + ([out.stop_id] if out.finish_reason == "eos" else [])
        want = clip["tokens"]
        for i, (g, w) in enumerate(zip(got, want)):
            s = clip["steps"][i]
            assert g == w, (f"{q} B={batch} {name} (slot {slots[name]}): step {i}: got {g}, HF fp32 {w} (top-2 "
                            f"{s['top2']}, margin {s['margin']:.3f}); got {got}, reference {want}; "
                            f"margins: {describe(clip)}")
        assert len(got) == len(want) and out.finish_reason == "eos", f"{q} B={batch} {name}: got {got}, want {want}"
    assert rt.free_slots() == batch
