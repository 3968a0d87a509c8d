"""What the driver hands a device actor and what comes back: typed work items and outcomes.

The driver (pipeline/scheduler.py) builds `WorkItem`s, the actor (workers/actor.py) turns each into exactly one
`Outcome`, in any order. (Which items are on the device right now, for charging a crash: workers/ledger.py.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime


@dataclass(frozen=True)
class WorkItem:
    """One manifest row's attempt, as handed to a device."""

    index: int  # the row's index in the driver's plan: the key its outcome comes back under
    line: int  # 1-based manifest line
    attempt: int = 1  # which attempt this is (1-based); an attempt is spent only when it ran and failed or crashed
    failed_on: tuple[str, ...] = ()  # device labels earlier attempts failed or crashed on, oldest first
    duration: float | None = None  # planned audio seconds (manifest or file header); None if unknown
    row: dict | None = None  # the normalized manifest row (read from the manifest when the item is handed out)
    queued_at: datetime | None = None  # when the driver handed it to the device (UTC)
    alone: bool = False  # run it in a batch of its own: it was in a batch that was on the device when it crashed

    @property
    def key(self) -> tuple[int, int]:
        """(plan index, attempt): names this try of this row."""
        return self.index, self.attempt

    @property
    def id(self) -> str:
        return (self.row or {}).get("id", f"#{self.index}")

    def next_attempt(self, device: str) -> "WorkItem":
        """The same row, one attempt later, having failed on `device`."""
        return replace(self, attempt=self.attempt + 1, failed_on=self.failed_on + (device,), row=None, queued_at=None,
                       alone=False)

    def requeued(self, *, alone: bool | None = None) -> "WorkItem":
        """The same attempt again (lost with a device that died running something else, or, `alone`, with a batch
        that crashed: run alone next, a crash then is its own)."""
        return replace(self, row=None, queued_at=None, alone=self.alone if alone is None else alone)


RETRY = "retry"  # a failed prediction (engine error, empty, runaway or repeated output): worth another attempt
FINAL = "final"  # done for good: ok, or failed for a reason another attempt cannot fix (bad audio, bad prompt)


@dataclass(frozen=True)
class Outcome:
    """An actor's answer for one work item: its result record (workers/record.py) and what should happen next."""

    key: tuple[int, int]  # WorkItem.key
    record: dict
    decision: str = FINAL  # RETRY | FINAL
    on_device: bool = True  # the attempt reached the device (False: failed in the front end)

    @property
    def ok(self) -> bool:
        return self.record.get("status") == "ok"
