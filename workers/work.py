"""What the driver hands a device actor and what comes back: typed work items and outcomes.

The driver (pipeline/scheduler.py) builds `WorkItem`s, the actor (workers/actor.py) turns each into exactly one
`Outcome`, in any order. (Which items are on the device right now, for charging a crash: workers/ledger.py.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from transcribe_batch.manifests.row import ManifestRow

from .record import Record


@dataclass(frozen=True)
class Span:
    """Which time range of a long row a work item is: pipeline/plan.py plans a row longer than the range length as
    `n` items, range k between the nominal boundaries row_s · k / n and row_s · (k + 1) / n (seconds from the row's
    offset; workers/ranges.py range_boundaries). Each actor moves an inner boundary into a pause with
    workers/ranges.boundary_cut, which both neighbours compute alike."""

    k: int  # which range (0-based)
    n: int  # ranges of the row (≥ 2)
    row_s: float  # the row's planned duration, seconds from its offset (the same number for every range)

    def __post_init__(self):
        if not (0 <= self.k < self.n and self.n >= 2 and self.row_s > 0):
            raise ValueError(f"not a range of a row: k={self.k}, n={self.n}, row_s={self.row_s}")

    def nominal(self, k: int) -> float:
        """Nominal boundary k (0 < k < n), seconds from the row's offset."""
        return self.row_s * k / self.n

    @property
    def first(self) -> bool:
        return self.k == 0

    @property
    def last(self) -> bool:
        return self.k == self.n - 1


@dataclass(frozen=True)
class WorkItem:
    """One manifest row's attempt (or one time range of a long row: `span`), as handed to a device."""

    index: int  # the row's index in the driver's plan: the key its outcome comes back under
    line: int  # 1-based manifest line
    input_digest: int | None = None  # the plan's digest of what the row (or range) asks for (its record carries it)
    attempt: int = 1  # which attempt this is (1-based); an attempt is spent only when it ran and failed or crashed
    failed_on: tuple[str, ...] = ()  # device labels earlier attempts failed or crashed on, oldest first
    duration: float | None = None  # planned audio seconds (manifest or file header; a range's nominal length); None
    #                                if unknown
    row: ManifestRow | None = None  # the manifest row (read back from the manifest when the item is handed out)
    queued_at: datetime | None = None  # when the driver handed it to the device (UTC)
    alone: bool = False  # run it in a batch of its own: it was in a batch that was on the device when it crashed
    span: Span | None = None  # the time range of a long row this item is (None: the whole row)

    @property
    def key(self) -> tuple[int, int, int]:
        """(plan index, range, attempt): names this try of this row (range 0 for a whole row)."""
        return self.index, self.span.k if self.span else 0, self.attempt

    @property
    def id(self) -> str:
        return self.row.id if self.row is not None else f"#{self.index}"

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
    """The answer for one work item (from its actor, or from the driver for a row it gave up on): the result
    record, which plan row and attempt it answers, and what should happen next."""

    index: int  # plan index of the row (WorkItem.index; -1: a bad manifest line, which has no plan row)
    attempt: int  # the attempt it answers (WorkItem.attempt)
    input_digest: int | None  # WorkItem.input_digest: goes into the part file with the record (None: bad line)
    record: Record  # the row's record, or for a range (`span`) the range's: the merge joins a row's ranges
    decision: str = FINAL  # RETRY | FINAL
    on_device: bool = True  # the attempt reached the device (False: failed in the front end)
    span: Span | None = None  # WorkItem.span: the range of a long row it answers (None: the whole row)

    @classmethod
    def of(cls, item: WorkItem, record: Record, decision: str = FINAL, *, on_device: bool = True) -> "Outcome":
        return cls(item.index, item.attempt, item.input_digest, record, decision, on_device, item.span)

    @property
    def key(self) -> tuple[int, int, int]:
        """WorkItem.key."""
        return self.index, self.span.k if self.span else 0, self.attempt

    @property
    def ok(self) -> bool:
        return self.record.status == "ok"
