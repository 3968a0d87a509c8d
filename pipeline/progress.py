"""Progress: a rich bar (utterances and audio hours done/total, failures, audio-s/s, ETA), clear log lines, and a
machine-readable JSONL log (one object per update/event) for unattended runs. Where this host's Sophgo driver reports
NPU use (/sys/class/bm-sophon/bm-sophon<N>/device/npu_usage), the log's `start`, `progress` and `end` objects carry
`npu_usage`: {device id: % busy in the driver's last window, null while its statistics are off}."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from transcribe_batch.workers.platforms import PLATFORMS


def _hms(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _StatsColumn(ProgressColumn):
    def __init__(self, tracker: "ProgressTracker"):
        super().__init__()
        self.tracker = tracker

    def render(self, task: Task) -> Text:
        t = self.tracker
        s = t.snapshot()
        return Text(
            f"{s['done']}/{s['total']} utt · {s['audio_h_done']:.2f}/{s['audio_h_total']:.2f} h audio "
            f"({_hms(s['audio_s_done'])}/{_hms(s['audio_s_total'])}) · {s['failed']} failed · "
            f"{s['audio_s_per_s']:.2f} audio-s/s · ETA {_hms(s['eta_s'])}",
            style="yellow" if s["failed"] else "",
        )


class ProgressTracker:
    def __init__(self, *, total: int, audio_s_total: float, done: int = 0, failed: int = 0, audio_s_done: float = 0.0,
                 log_path: Path | None = None, quiet: bool = False, min_log_interval_s: float = 1.0,
                 npu_usage: Callable[[], dict[int, int | None]] | None = None):
        self.total = total
        self.audio_s_total = audio_s_total
        self.done = done
        self.failed = failed
        self.audio_s_done = audio_s_done
        self.retries = 0
        self._session_audio_s = 0.0
        self._t0 = time.monotonic()
        self._last_log = 0.0
        self.min_log_interval_s = min_log_interval_s
        self.quiet = quiet
        self.console = Console(stderr=True, log_path=False)
        self._log = open(log_path, "a", encoding="utf-8") if log_path else None
        self._bar: Progress | None = None
        self._task = None
        self._npu_usage = npu_usage or PLATFORMS["bm1684x"].usage  # the local cards' driver; {} without one

    def __enter__(self) -> "ProgressTracker":
        if not self.quiet:
            self._bar = Progress(TextColumn("[bold]transcribing"), BarColumn(), _StatsColumn(self),
                                 console=self.console, transient=False, refresh_per_second=4)
            self._bar.__enter__()
            self._task = self._bar.add_task("run", total=max(1, self.total), completed=self.done)
        self._write({"event": "start"})
        return self

    def __exit__(self, *exc) -> None:
        self._write({"event": "end"})
        if self._bar is not None:
            self._bar.__exit__(*exc)
        if self._log:
            self._log.close()

    def snapshot(self) -> dict:
        elapsed = time.monotonic() - self._t0
        rate = self._session_audio_s / elapsed if elapsed > 0 else 0.0
        left = max(0.0, self.audio_s_total - self.audio_s_done)
        eta = left / rate if rate > 0 else None
        return {"done": self.done, "total": self.total, "failed": self.failed, "retries": self.retries,
                "audio_s_done": round(self.audio_s_done, 3), "audio_s_total": round(self.audio_s_total, 3),
                "audio_h_done": self.audio_s_done / 3600, "audio_h_total": self.audio_s_total / 3600,
                "audio_s_per_s": rate, "elapsed_s": round(elapsed, 3), "eta_s": None if eta is None else round(eta, 1)}

    def update(self, records: list) -> None:
        """records: workers.record.Record of rows done for good."""
        for r in records:
            self.done += 1
            self.failed += r.status != "ok"
            d = r.duration_s or 0.0
            self.audio_s_done += d
            self._session_audio_s += d
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        if time.monotonic() - self._last_log >= self.min_log_interval_s or self.done >= self.total:
            self._write({"event": "progress"})

    def update_range(self, record, *, row_failed: bool | None) -> None:
        """record: a range of a long row done for good (its audio counts); `row_failed`: None while the row has
        ranges left, else whether the row, now done, failed."""
        d = record.duration_s or 0.0
        self.audio_s_done += d
        self._session_audio_s += d
        if row_failed is not None:
            self.done += 1
            self.failed += bool(row_failed)
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done)
        if time.monotonic() - self._last_log >= self.min_log_interval_s or self.done >= self.total:
            self._write({"event": "progress"})

    def retry(self, n: int) -> None:
        self.retries += n

    def log(self, message: str, *, event: str = "log", **fields) -> None:
        """A line for humans (also in quiet mode: it matters) and an event in the JSONL log."""
        if self._bar is not None:
            self._bar.console.log(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)
        self._write({"event": event, "message": message, **fields}, force=True)

    def _write(self, obj: dict, force: bool = True) -> None:
        if not self._log:
            return
        self._last_log = time.monotonic()
        line = {"time": datetime.now(timezone.utc).isoformat(), **obj, **self.snapshot()}
        line.pop("audio_h_done"), line.pop("audio_h_total")
        if obj.get("event") in ("start", "progress", "end"):
            usage = self._npu_usage()
            if usage:
                line["npu_usage"] = {str(d): u for d, u in sorted(usage.items())}
        self._log.write(json.dumps(line) + "\n")
        self._log.flush()
