"""benchmarks/splitters.py still runs on a tiny input and its figures add up (no timing or quality asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_splitters_benchmark_runs_on_a_tiny_input(audio_dir):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "splitters.py"), "--audio-dir", str(audio_dir),
                           "--minutes", "1", "--range-every-s", "20", "--scenarios", "bg10"], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    for scenario in ("bg10",):
        for splitter in ("vad", "energy"):
            assert any(line.startswith(f"| {scenario} | {splitter} |") for line in lines), done.stdout
    headlines = {}
    for line in lines[-2:]:
        figures = dict(pair.split("=", 1) for pair in line.split())
        headlines[figures["splitter"]] = figures
    assert set(headlines) == {"vad", "energy"}
    for f in headlines.values():
        cuts, words_cut = int(f["cuts"]), int(f["words_cut"])
        assert cuts > 0 and 0 <= words_cut <= cuts and int(f["range_cuts"]) == 2
        assert float(f["cuts_in_gaps_pct"]) == round(100 * (cuts - words_cut) / cuts, 2)
        assert 0 <= float(f["speech_dropped_pct"]) <= 100 and 0 <= float(f["music_noise_kept_pct"]) <= 100
        assert float(f["cpu_s_per_audio_h"]) > 0 and int(f["segments"]) > 0


def test_splitters_benchmark_names_a_missing_folder(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "splitters.py"), "--audio-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode != 0 and f"{tmp_path}/manifest.jsonl: not found" in done.stderr
