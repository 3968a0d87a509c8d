"""Which work items a device actor has on its device right now, kept in a small file on the actor's own node, so
that when the actor's process dies its crash is charged to exactly those rows (pipeline/scheduler.py).

Before every engine call the actor replaces its ledger file with the keys it is about to put on the device (write
to a temp file, rename: never half-written). A process that dies, however it dies, leaves the file in the page
cache; the driver then takes it (reads and deletes it), in its own process when the actor ran on the driver's
node, else through a tiny task pinned to the actor's node. That costs a file write per engine call (tens of µs)
instead of a synchronous round trip to another actor (milliseconds, and half a second while it starts).

Files live in /dev/shm (memory; else the temp dir), or in $TRANSCRIBE_BATCH_LEDGER_DIR, named
`transcribe-batch-ledger-<uid>-<run>-<device>`: `.keys` (the keys, JSON) and `.lock` (flock-ed by the live actor).
The driver removes its run's files when the run ends; an actor starting on a node removes files that no live
actor holds and that nothing wrote to for `STALE_S` (left by a driver that was SIGKILLed).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

DIR_ENV = "TRANSCRIBE_BATCH_LEDGER_DIR"
STALE_S = 120.0  # an unheld ledger older than this belongs to a run that is over (a driver reads a crashed
# actor's ledger within seconds; a restarted actor holds it again as soon as it starts)


def ledger_dir() -> Path:
    """This node's folder for ledger files."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def _prefix() -> str:
    return f"transcribe-batch-ledger-{os.getuid()}-"


def ledger_stem(run: str, label: str) -> str:
    """File name (without suffix) of a device's ledger in a run: readable and unique per (run, label)."""
    slug = re.sub(r"[^A-Za-z0-9._]+", "_", label)[:40]
    return f"{_prefix()}{run}-{slug}-{hashlib.blake2b(label.encode(), digest_size=4).hexdigest()}"


def ledger_files(path: str | Path) -> list[Path]:
    """A ledger's files, from its `.keys` path: the keys, their temp file, the lock."""
    path = Path(path)
    stem = path.name[: -len(".keys")]
    return [path, path.with_name(f".{stem}.keys.tmp"), path.with_name(f"{stem}.lock")]


class DeviceLedger:
    """The actor's side: `hold(keys)` before each engine call. One per actor process; `path` (the `.keys` file)
    is what the driver needs to take it after a crash."""

    def __init__(self, run: str, label: str):
        folder = ledger_dir()
        folder.mkdir(parents=True, exist_ok=True)
        sweep_stale(folder)
        self.path = folder / f"{ledger_stem(run, label)}.keys"
        self._files = ledger_files(self.path)
        # held for the life of this process (the kernel lets go when it dies): a sweep leaves a held ledger alone
        self._lock = os.open(self._files[2], os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a dying predecessor still holds it: the lock only guards against sweeps
            pass

    def hold(self, keys: list[tuple[int, ...]]) -> None:
        """Record `keys` (WorkItem.key: tuples of ints) as what is on the device from now on. If that fails, no
        earlier record is left behind to be charged for this call's crash. Once the run's ledgers were removed (the
        run is over; an actor still finishing a call as it is ended), nothing is left behind either: the driver
        removes the lock file first and the record last, and this checks the lock file after writing the record."""
        data = json.dumps([[int(x) for x in key] for key in keys]).encode()
        try:
            fd = os.open(self._files[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(self._files[1], self.path)
        except OSError:
            self.path.unlink(missing_ok=True)
            raise
        if not os.path.exists(self._files[2]):
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """This actor is done for good (not a crash): its ledger goes."""
        remove_ledgers([self.path])
        os.close(self._lock)


def take_held(path: str | Path) -> list[tuple[int, ...]]:
    """The keys the ledger at `path` last recorded (the device may have finished them since), removing the record
    so that a second crash is not charged to the first one's rows. Run on the actor's node. [] when none."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    path.unlink(missing_ok=True)
    try:
        return [tuple(int(x) for x in key) for key in json.loads(data)]
    except (ValueError, TypeError):  # cannot happen with the rename; a crash is then the device's alone
        return []


def remove_ledgers(paths: list[str | Path]) -> int:
    """Remove ledgers (by `.keys` path) whose actors are done; how many files there were. Run on their node. The
    lock file goes first (see DeviceLedger.hold)."""
    n = 0
    for path in paths:
        for f in reversed(ledger_files(path)):
            if f.exists():
                n += 1
            f.unlink(missing_ok=True)
    return n


def sweep_stale(folder: Path, stale_s: float = STALE_S) -> list[str]:
    """Remove ledgers no live actor holds and nothing wrote to for `stale_s` (their run's driver is gone), and
    records without a lock file as old (an actor ended while writing one); the stems removed."""
    removed, cutoff = [], time.time() - stale_s
    for pattern in (f"{_prefix()}*.keys", f".{_prefix()}*.keys.tmp"):
        for orphan in folder.glob(pattern):
            stem = orphan.name.lstrip(".").removesuffix(".tmp").removesuffix(".keys")
            try:
                if not (folder / f"{stem}.lock").exists() and orphan.stat().st_mtime <= cutoff:
                    orphan.unlink(missing_ok=True)
                    removed.append(stem)
            except OSError:
                continue
    for lock in folder.glob(f"{_prefix()}*.lock"):
        files = ledger_files(lock.with_suffix(".keys"))
        try:
            if max((p.stat().st_mtime for p in files if p.exists()), default=0.0) > cutoff:
                continue
            fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live actor holds it
            os.close(fd)
            continue
        for path in reversed(files):
            path.unlink(missing_ok=True)
        os.close(fd)
        removed.append(lock.name[: -len(".lock")])
    return removed
