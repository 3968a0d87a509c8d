import subprocess
import sys
from collections import Counter
from dataclasses import replace

import pytest

from manifest_helpers import shared_rows
from transcribe_batch.manifests.reader import iter_rows
from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.pipeline.config import worker_config
from transcribe_batch.workers.actor import TranscriptionWorker, escalated_chunk_s
from transcribe_batch.workers.engines import create_engine
from transcribe_batch.workers.engines.base import FINISH_EOS, FINISH_MAX_TOKENS, DecodeOptions, EngineError, Request
from transcribe_batch.workers.engines.simulated import FaultSpec, SimulatedFault
from transcribe_batch.workers.record import now
from transcribe_batch.workers.work import FINAL, RETRY, WorkItem


def test_fault_spec_parsing():
    spec = FaultSpec.parse("error=0.05,empty=0.02,repeat=0.02,crash=0.01,seed=7")
    assert (spec.error, spec.empty, spec.repeat, spec.crash, spec.seed) == (0.05, 0.02, 0.02, 0.01, 7)
    assert FaultSpec.parse("") == FaultSpec()
    for bad, words in [("explode=0.1", "unknown fault"), ("error=2", "probability"), ("error", "key=value"),
                       ("error=0.6,empty=0.6", "more than 1")]:
        with pytest.raises(ValueError, match=words):
            FaultSpec.parse(bad)


def test_fault_draws_are_seeded_per_attempt():
    spec = FaultSpec.parse("error=0.2,empty=0.1,repeat=0.1,crash=0.1,seed=3")
    draws = [spec.draw(f"u{i}", 1) for i in range(4000)]
    assert draws == [spec.draw(f"u{i}", 1) for i in range(4000)]  # reproducible
    counts = Counter(draws)
    for kind, p in [("error", 0.2), ("empty", 0.1), ("repeat", 0.1), ("crash", 0.1), (None, 0.5)]:
        assert abs(counts[kind] / 4000 - p) < 0.03, (kind, counts)
    failing = [i for i, d in enumerate(draws) if d]
    second = [spec.draw(f"u{i}", 2) for i in failing]
    assert sum(d is None for d in second) > 0.4 * len(failing)  # a retry gets a fresh draw
    other_seed = FaultSpec.parse("error=0.2,empty=0.1,repeat=0.1,crash=0.1,seed=4")
    assert [other_seed.draw(f"u{i}", 1) for i in range(200)] != draws[:200]


def _request(text="the quick brown fox", **kw):
    return Request(id="u1", duration_s=3.0, n_audio_tokens=75, reference=text, decode=DecodeOptions(40), **kw)


def test_cost_model_and_reference_text():
    eng = create_engine(worker_config(engine="simulated", sim_speedup=1000), device=2)
    assert eng.name == "simulated" and eng.model_id == "simulated"
    res = eng.transcribe(_request())
    assert res.text == "the quick brown fox" and res.finish_reason == FINISH_EOS
    n = len(res.token_ids)
    assert n == 5  # ceil(19 chars / 4)
    assert res.ttft_s == pytest.approx(24.0 / 1000)
    assert res.decode_s == pytest.approx(n * 0.8 / 1000)  # n tokens after the first, counting the stop token
    fixed = create_engine(worker_config(engine="simulated", sim_speedup=1000, sim_text="hello", sim_ttft_s=2,
                                        sim_s_per_token=0.5), 0)
    r = fixed.transcribe(_request())
    assert r.text == "hello" and r.ttft_s == pytest.approx(0.002) and r.decode_s == pytest.approx(0.0005 * 2)
    assert create_engine(worker_config(engine="simulated", sim_speedup=1000), 0).transcribe(_request(text=None)).text


def test_answer_stops_at_max_new_tokens_whatever_the_reference(model_dir):
    """Issue 9.9: a 10 MB reference used to be tokenized whole and slept for (looked like a hang)."""
    import time

    huge = "word " * 2_000_000
    for eng in (create_engine(worker_config(engine="simulated", sim_speedup=1000), 0),
                create_engine(worker_config(engine="simulated", sim_speedup=1000, model_dir=str(model_dir)), 0)):
        t0 = time.perf_counter()
        res = eng.transcribe(_request(text=huge))
        assert time.perf_counter() - t0 < 2.0
        assert len(res.token_ids) == 40 and res.finish_reason == FINISH_MAX_TOKENS
        assert res.decode_s == pytest.approx(39 * 0.8 / 1000)
        assert res.text is None or len(res.text) <= 40 * 4


def _engine_with(fault: str):
    return create_engine(worker_config(engine="simulated", sim_speedup=1000, sim_faults=f"{fault}=1"), 0)


def test_injected_faults():
    with pytest.raises(SimulatedFault) as info:
        _engine_with("error").transcribe(_request())
    assert isinstance(info.value, EngineError)
    assert _engine_with("empty").transcribe(_request()).text == ""
    rep = _engine_with("repeat").transcribe(_request())
    assert rep.finish_reason == FINISH_MAX_TOKENS and len(rep.token_ids) == 40 and rep.text.split() == ["the"] * 40
    broken = create_engine(worker_config(engine="simulated", sim_speedup=1000,
                                         engine_options={"sim_broken_devices": [1]}), 1)
    with pytest.raises(SimulatedFault, match="broken"):
        broken.transcribe(_request())


def test_crash_ends_the_process():
    code = ("from transcribe_batch.workers.engines import create_engine; from transcribe_batch.workers.engines.base "
            "import DecodeOptions, Request; from transcribe_batch.pipeline.config import worker_config; "
            "e = create_engine(worker_config(engine='simulated', sim_faults='crash=1', sim_speedup=1000), 0); "
            "e.transcribe(Request(id='x', duration_s=1.0, decode=DecodeOptions(40))); print('survived')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 77 and "survived" not in proc.stdout


def _items(rows, attempt=1):
    return [WorkItem(index=i, line=i + 1, attempt=attempt, row=r, queued_at=now(), duration=r.duration)
            for i, r in enumerate(rows)]


def _outcomes(worker, items):
    """The worker's outcomes in item order (they come back as they finish)."""
    got = {o.key: o for o in worker.run_shard(items)}
    assert len(got) == len(items)
    return [got[item.key] for item in items]


def _records(worker, items):
    return [o.record for o in _outcomes(worker, items)]


@pytest.fixture(scope="module")
def rows(audio_manifest):
    return [r for _, r in iter_rows(audio_manifest)]


def test_worker_cheap_front_end_records(rows):
    w = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=2000, segment_max_s=30.0), device=3)
    try:
        recs = _records(w, _items(rows))
    finally:
        w.close()
    assert [r.id for r in recs] == [r.id for r in rows]
    for rec, row in zip(recs, rows):
        assert rec.status == "ok", rec
        assert rec.engine == "simulated" and rec.model_id == "simulated"
        assert rec.device == 3 and rec.node and rec.attempts == 1
        assert rec.duration_s == pytest.approx(row.duration, abs=0.05)
        assert rec.n_audio_tokens > 0 and rec.n_new_tokens > 0 and rec.prep_s > 0
        assert rec.started_at <= rec.finished_at and rec.total_s > 0 and rec.rtf > 0
        if row.duration <= 30:
            assert rec.n_chunks == 1
        if row.text:
            assert rec.text == row.text and rec.pred_text
    assert max(r.n_chunks for r in recs) >= 2  # the 44 s recording is split to fit 30 s


def test_worker_with_real_front_end_counts_prompt_tokens(rows, model_dir):
    w = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=2000, model_dir=str(model_dir)), device=0)
    try:
        rec = _records(w, _items(rows[:2]))[0]
    finally:
        w.close()
    assert rec.status == "ok"
    assert rec.n_prompt_tokens > rec.n_audio_tokens > 0
    assert rec.engine == "simulated" and rec.model_id == "simulated"
    assert rec.prompt  # the instruction text of the default template


@pytest.mark.parametrize("fault, error_class, finish", [("error", "SimulatedFault", "error"),
                                                        ("empty", "EmptyOutput", "error"),
                                                        ("repeat", "Repetition", "repetition")])
def test_worker_marks_bad_predictions_for_retry(rows, fault, error_class, finish):
    w = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=2000, sim_faults=f"{fault}=1"), device=1)
    try:
        out = _outcomes(w, _items(rows[:1], attempt=2))[0]
    finally:
        w.close()
    rec = out.record
    assert rec.status == "failed" and out.decision == RETRY and out.on_device
    assert rec.error_class == error_class and rec.finish_reason == finish and rec.attempts == 2
    assert rec.error_message


def test_bad_audio_fails_for_good_naming_the_file(tmp_path, rows):
    missing = replace(rows[0], id="gone", audio_filepath=str(tmp_path / "gone.wav"))
    w = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=2000), device=0)
    try:
        out = _outcomes(w, _items([missing, rows[1]]))
    finally:
        w.close()
    rec = [o.record for o in out]
    assert rec[0].status == "failed" and out[0].decision == FINAL and not out[0].on_device
    assert rec[0].error_class == "AudioNotFound" and "gone.wav" in rec[0].error_message
    assert rec[1].status == "ok"


def test_retry_escalation_splits_long_audio(audio_dir):
    assert escalated_chunk_s(44.0, 1, 30.0, 10.0) is None
    assert escalated_chunk_s(44.0, 2, 30.0, 10.0) == 15.0
    assert escalated_chunk_s(44.0, 3, 30.0, 10.0) == 7.5
    assert escalated_chunk_s(8.0, 3, 30.0, 10.0) is None  # short utterances are retried as they are
    long_row = next(r for r in shared_rows(audio_dir) if r["duration"] > 40)
    row = ManifestRow(id="long", audio_filepath=long_row["audio_filepath"], duration=long_row["duration"],
                      text=long_row.get("text"))
    w = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=2000, segment_max_s=30.0), device=0)
    try:
        first, third = _records(w, _items([row]) + [replace(_items([row], attempt=3)[0], index=1, line=2)])
    finally:
        w.close()
    assert first.n_chunks == 2 and third.n_chunks >= 6


def test_batched_engine_calls_give_the_same_rows(rows):
    one = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=2000), device=0)
    batched = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=2000, batch_size=3), device=0)
    bad = replace(rows[0], id="gone", audio_filepath="/nonexistent/gone.wav")
    try:
        a = _records(one, _items(rows[:7] + [bad]))
        b = _records(batched, _items(rows[:7] + [bad]))
    finally:
        one.close()
        batched.close()
    keys = ("id", "status", "pred_text", "n_chunks", "n_audio_tokens", "n_new_tokens", "error_class")
    assert [{k: getattr(r, k) for k in keys} for r in a] == [{k: getattr(r, k) for k in keys} for r in b]
    assert all(r.started_at <= r.finished_at for r in b if r.status == "ok")


def test_model_folder_gives_real_token_ids(model_dir):
    from transcribe_batch.workers.prompts import load_tokenizer

    eng = create_engine(worker_config(engine="simulated", sim_speedup=1000, model_dir=str(model_dir)), 0)
    res = eng.transcribe(_request("Mister Quilter is the apostle of the middle classes."))
    tok = load_tokenizer(model_dir)
    assert res.token_ids == tok.encode("Mister Quilter is the apostle of the middle classes.", add_special_tokens=False).ids
    assert tok.decode(res.token_ids) == res.text
    assert res.decode_s == pytest.approx(len(res.token_ids) * 0.8 / 1000)


def test_front_end_is_warm_before_the_first_row(model_dir):
    from transcribe_batch.workers.features import _mel_filters32, mel_filters

    mel_filters.cache_clear()
    _mel_filters32.cache_clear()
    w = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=2000, model_dir=str(model_dir)), device=0)
    try:
        assert mel_filters.cache_info().currsize == 1  # librosa imported, the filter bank built
        spec = w.frontend.family.prompt_spec(None, w.frontend.template)
        assert spec in w.frontend.family._cache  # the template's prompt ids made
    finally:
        w.close()


def test_wait_s_excludes_time_another_shard_held_the_device(rows, model_dir):
    """Two shard calls in flight (as the scheduler runs them): the second shard's rows are prepared (real front end)
    while the first holds the device, so the device never waits for them, though their thread waited."""
    import threading

    w = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=40, model_dir=str(model_dir)),
                            device=0)  # ≥ 0.6 s a row
    out: dict[str, list] = {}

    def shard(name, items):
        out[name] = _records(w, items)

    try:
        first = threading.Thread(target=shard, args=("a", _items(rows[:1])))
        first.start()
        while not w._device_lock.locked():  # the first shard holds the device
            pass
        shard("b", _items(rows[1:3]))
        first.join()
    finally:
        w.close()
    assert all(r.status == "ok" for r in out["a"] + out["b"])
    assert out["a"][0].finished_at <= out["b"][0].started_at
    assert [r.wait_s for r in out["b"]] == [0.0, 0.0]


def test_pieces_of_split_audio_say_their_share_of_the_reference(audio_dir, model_dir):
    """Each piece says its share of the words (not the whole reference): the joined transcript is the reference and
    the generated tokens are counted once, not once per piece."""
    from transcribe_batch.workers.engines.simulated import count_tokens
    from transcribe_batch.workers.prompts import load_tokenizer

    reference = " ".join(f"word{i}" for i in range(41))
    eng = create_engine(worker_config(engine="simulated", sim_speedup=1000), 0)
    pieces = [eng.transcribe(_request(reference, chunk_index=k, n_chunks=3)).text for k in range(3)]
    assert " ".join(pieces) == reference and all(pieces)

    long_row = next(r for r in shared_rows(audio_dir) if r["duration"] > 40)
    row = ManifestRow(id="long", audio_filepath=long_row["audio_filepath"], duration=long_row["duration"],
                      text=reference)
    tok = load_tokenizer(model_dir)
    for options, whole in [({}, count_tokens(reference)),
                           ({"model_dir": str(model_dir)}, len(tok.encode(reference, add_special_tokens=False).ids))]:
        w = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=2000, segment_max_s=30.0, **options),
                                device=0)
        try:
            recs = _records(w, _items([row]) + [replace(_items([row], attempt=3)[0], index=1, line=2)])
        finally:
            w.close()
        assert [r.n_chunks for r in recs][0] == 2 and recs[1].n_chunks >= 6
        for rec in recs:
            assert rec.status == "ok" and rec.pred_text == reference
            assert whole <= rec.n_new_tokens <= whole + rec.n_chunks  # a piece boundary may cost a token


def test_batched_step_cost_model_is_memory_bound_projection():
    from transcribe_batch.workers.engines.simulated import DEFAULT_KV_SHARE, batched_step_s

    assert batched_step_s(0.8, 1) == pytest.approx(0.8)
    # weights read once for all rows, each row's K/V on top: B rows cost far less than B steps
    assert batched_step_s(0.8, 4) == pytest.approx(0.8 * (1 + 3 * DEFAULT_KV_SHARE))
    assert 4 * 0.8 / batched_step_s(0.8, 4) > 3
    with pytest.raises(ValueError, match="batch"):
        batched_step_s(0.8, 0)


# -- the card cost model and decode slots (issue 19) -----------------------------------------------------------------
def _card(**options):
    return create_engine(worker_config(engine="simulated", sim_speedup=1000, sim_cost_model="card", sim_card_model="qwen2-audio-7b", **options), 0)


def test_card_cost_model_times_a_request_as_the_card_model_does():
    from transcribe_batch.workers.cardcost import CardModel, preset

    eng = _card(sim_card_quant="w8bf16")
    req = _request(text="the quick brown fox jumps over the lazy dog")
    res = eng.transcribe(req)
    model = CardModel(preset("qwen2-audio-7b"), "w8bf16", seqlen=1024)
    prompt = model.arch.prompt_len(req.duration_s)  # no tokenized prompt: the architecture's estimate
    n_decode = len(res.token_ids)  # + the stop token - the first token
    assert res.ttft_s == pytest.approx(model.first_token_s(req.duration_s, prompt) / 1000)
    assert res.decode_s == pytest.approx(n_decode * model.decode_step_s([1024]) / 1000)
    assert res.extra["cost_model"] == "card" and res.extra["prompt_len"] == prompt
    assert res.text == req.reference
    port = create_engine(worker_config(engine="simulated", sim_speedup=1000), 0).transcribe(req)
    assert res.ttft_s < port.ttft_s / 10 and res.decode_s < port.decode_s  # the chip, not the port's host copies


def test_decode_slots_share_steps_and_keep_answers():
    """sim_batch B: the actor hands B requests per call (preferred_batch_size); their decode steps are shared, so
    the call takes less than the same requests one at a time, and every answer is the same."""
    reqs = [Request(id=f"u{i}", duration_s=5.0, reference=" ".join(["word"] * (3 + 4 * i)), decode=DecodeOptions(100))
            for i in range(6)]
    one, four = _card(), _card(sim_batch=4)
    assert (one.preferred_batch_size, four.preferred_batch_size) == (1, 4)
    a, b = one.transcribe_batch(reqs), four.transcribe_batch(reqs)
    assert [r.token_ids for r in a] == [r.token_ids for r in b] and [r.text for r in a] == [r.text for r in b]
    assert [r.ttft_s for r in a] == pytest.approx([r.ttft_s for r in b])  # a prefill is a prefill
    assert sum(r.decode_s for r in b) > sum(r.decode_s for r in a)  # each row pays shared (longer) steps ...
    wall_one = sum(r.ttft_s + r.decode_s for r in a)
    wall_four = max(r.extra["slot_wait_s"] + r.ttft_s + r.decode_s for r in b)
    assert wall_four < 0.8 * wall_one  # ... but the card finishes sooner
    assert {r.extra["slot"] for r in b} == {0, 1, 2, 3} and 0.5 < b[0].extra["slot_occupancy"] <= 1.0
    assert [r.extra["decode_steps"] for r in b] == [len(r.token_ids) for r in b]


def test_port_cost_model_with_slots_uses_its_batched_step():
    from transcribe_batch.workers.engines.simulated import batched_step_s

    eng = create_engine(worker_config(engine="simulated", sim_speedup=1000, sim_batch=2), 0)
    reqs = [Request(id=f"u{i}", duration_s=2.0, reference="a b c d e f g h", decode=DecodeOptions(40)) for i in range(2)]
    a, b = eng.transcribe_batch(reqs)
    steps = len(a.token_ids)  # both answers equal: every step has both rows
    assert a.decode_s == pytest.approx(steps * batched_step_s(0.8, 2) / 1000)
    assert a.extra["cost_model"] == "port" and a.extra["slot_occupancy"] == 1.0


def test_a_failing_request_fails_alone_in_a_batched_call():
    spec = FaultSpec.parse("error=0.5,seed=11")
    ids = [f"u{i}" for i in range(8)]
    failing = {i for i in ids if spec.draw(i, 1) == "error"}
    assert 0 < len(failing) < len(ids)
    eng = _card(sim_batch=4, sim_faults="error=0.5,seed=11")
    out = eng.transcribe_batch([Request(id=i, duration_s=3.0, reference="hello there", decode=DecodeOptions(20)) for i in ids])
    assert {i for i, r in zip(ids, out) if isinstance(r, SimulatedFault)} == failing
    assert all(r.text == "hello there" for r in out if not isinstance(r, BaseException))


def test_card_model_from_the_model_folder():
    from pathlib import Path

    tiny = Path(__file__).parent / "fixtures" / "tiny-qwen2-audio"
    eng = create_engine(worker_config(engine="simulated", sim_speedup=1000, sim_cost_model="card", model_dir=str(tiny)), 0)
    assert eng.cost.model.arch.name == "tiny-qwen2-audio" and eng.cost.model.arch.decoder.hidden == 64


def test_simulated_settings_are_checked_before_a_run(tmp_path):
    from transcribe_batch.pipeline.config import ConfigError, build_config

    ok = build_config("m.jsonl", tmp_path, engine="simulated", sim_cost_model="card", sim_card_model="qwen3-asr-0.6b",
                      sim_card_quant="bf16", sim_card_seqlen=512, sim_batch=4)
    sim = ok.worker_config().sim
    assert (sim.cost_model, sim.card_model, sim.card_quant, sim.card_seqlen, sim.batch) == \
        ("card", "qwen3-asr-0.6b", "bf16", 512, 4)
    for overrides, words in [
        (dict(sim_cost_model="roofline"), "sim_cost_model: 'roofline' is not one of port, card"),
        (dict(sim_cost_model="card"), "needs a model: set sim_card_model"),
        (dict(sim_cost_model="card", sim_card_model="qwen9"), "sim_card_model: unknown card model 'qwen9'"),
        (dict(sim_cost_model="card", sim_card_model="qwen2-audio-7b", sim_card_quant="w3"), "sim_card_quant: 'w3'"),
        (dict(sim_cost_model="card", sim_card_model="qwen2-audio-7b", sim_card_seqlen=-1), "sim_card_seqlen: -1"),
        (dict(sim_batch=0), "sim_batch: 0 is not a whole number >= 1"),
        (dict(sim_cost_model="card", model_dir=tmp_path), "config.json: not found"),
    ]:
        with pytest.raises(ConfigError, match=words):
            build_config("m.jsonl", tmp_path / "out", engine="simulated", **overrides)
