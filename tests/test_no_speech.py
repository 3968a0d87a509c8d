"""An empty answer to audio without speech is the right answer (issue 16 item 10): recorded ok, finish_reason
`no_speech`, pred_text ""; an empty answer to audio with speech is still a failed prediction, retried."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.pipeline.config import build_config, worker_config
from transcribe_batch.workers.actor import TranscriptionWorker
from transcribe_batch.workers.frontend import has_speech
from transcribe_batch.workers.record import now
from transcribe_batch.workers.work import FINAL, RETRY, WorkItem

SR = 16000


def _tone_db(seconds, db, seed=0):
    """White noise at `db` dB full scale (RMS)."""
    noise = np.random.default_rng(seed).standard_normal(int(seconds * SR))
    return (noise / np.sqrt(np.mean(noise ** 2)) * 10 ** (db / 20)).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory, audio_dir):
    folder = tmp_path_factory.mktemp("clips")
    sf.write(folder / "silence.wav", np.zeros(3 * SR, np.int16), SR)
    sf.write(folder / "room.wav", _tone_db(3.0, -65.0), SR, subtype="PCM_16")  # room tone
    short = np.zeros(3 * SR, np.float32)
    short[SR:SR + int(0.2 * SR)] = _tone_db(0.2, -25.0, seed=1)  # a 0.2 s word in silence
    sf.write(folder / "word.wav", short, SR, subtype="PCM_16")
    return {"silence": folder / "silence.wav", "room": folder / "room.wav", "word": folder / "word.wav",
            "speech": audio_dir / "001.wav"}


def test_energy_check(clips):
    from transcribe_batch.workers.audio import load_audio

    assert not has_speech(load_audio(clips["silence"]))
    assert not has_speech(load_audio(clips["room"]))
    assert has_speech(load_audio(clips["word"]))  # one short word is enough
    assert has_speech(load_audio(clips["speech"]))
    assert not has_speech(np.zeros(10, np.float32)) and not has_speech(_tone_db(0.05, -20.0))  # shorter than 0.1 s


def _run_rows(rows, **settings):
    worker = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=2000, **settings), 0)
    try:
        items = [WorkItem(i, i + 1, attempt=1, row=r, queued_at=now()) for i, r in enumerate(rows)]
        got = {o.key: o for o in worker.run_shard(items)}
        return [got[item.key] for item in items]
    finally:
        worker.close()


def test_an_empty_answer_is_ok_only_without_speech(clips):
    rows = [ManifestRow(id=name, audio_filepath=str(clips[name]), text="") for name in ("silence", "room", "speech")]
    silence, room, speech = _run_rows(rows)
    for out in (silence, room):
        rec = out.record
        assert out.decision == FINAL and rec.status == "ok" and rec.pred_text == "" and rec.raw_text == ""
        assert rec.finish_reason == "no_speech" and rec.error_class is None
    assert speech.decision == RETRY and speech.record.status == "failed"
    assert speech.record.error_class == "EmptyOutput"


def test_an_answer_to_silence_is_kept(clips):
    """The check only accepts an empty answer; it never empties one."""
    (out,) = _run_rows([ManifestRow(id="s", audio_filepath=str(clips["silence"]), text="thank you")])
    assert out.record.status == "ok" and out.record.pred_text == "thank you" and out.record.finish_reason == "eos"


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_run_over_silence_completes(tmp_path, clips):
    """Before: EmptyOutput on every attempt, the row failed after --max-attempts."""
    import json

    from transcribe_batch.pipeline.runner import run_job

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": n, "audio_filepath": str(clips[n]), "text": t}) + "\n"
                                for n, t in (("silence", ""), ("speech", "ten of clubs"))))
    summary = run_job(build_config(manifest, tmp_path / "out", engine="simulated", sim_speedup=2000, devices="1",
                                   quiet=True))
    rows = {r["id"]: r for r in pq.read_table(summary.results).to_pylist()}
    assert summary.status == "complete" and summary.n_ok == 2
    assert (rows["silence"]["status"], rows["silence"]["pred_text"], rows["silence"]["attempts"]) == ("ok", "", 1)
    assert rows["silence"]["finish_reason"] == "no_speech" and rows["speech"]["finish_reason"] == "eos"
