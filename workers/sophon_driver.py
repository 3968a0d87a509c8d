"""BM1684X PCIe cards as the host's driver shows them: /proc/bmsophon (cards, chips per card, board type, memory, TPU
frequency) and /sys/class/bm-sophon/bm-sophon<N>/device/npu_usage (how busy each chip is).

The format is libsophon's driver (github.com/sophgo/libsophon: driver/bm_debug.c writes /proc/bmsophon, driver/
bm_attr.c npu_usage; doc/guide_en/3_2_proc_description.rst and 3_3_sysfs_interface_description.rst describe them):
  /proc/bmsophon/card_num, chip_num, driver_version
  /proc/bmsophon/card<i>/{chipid, mode, chip_num_on_card, board_type, tpu_maxclk, ...}     one folder per card
  /proc/bmsophon/card<i>/bmsophon<N>/{tpuid, status, tpu_freq, ddr_capacity, heap, chip_temp, ...}   one per chip
  /sys/class/bm-sophon/bm-sophon<N>/device/npu_usage    "usage:U avusage:A" (U: % busy in the last window of
      npu_usage_interval ms, A: since the driver loaded); the guide prints it as '"usage": U, "avusage": A'; with
      statistics off: "Please, set [Usage enable] to 1"
A chip's N is its device id: /dev/bm-sophon<N>, the id runs use. SoC boxes (/dev/bm-tpu0) have no /proc/bmsophon.

Every reader takes the root the tree hangs from (default: $TRANSCRIBE_BATCH_DRIVER_ROOT, else /; a container that
mounts the host's /proc and /sys elsewhere sets it) and parses defensively: a missing, unreadable or odd file makes
that field None and adds a line to `problems` — never an exception.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

DRIVER_ROOT_ENV = "TRANSCRIBE_BATCH_DRIVER_ROOT"
PROC = "proc/bmsophon"
SYS_CLASS = "sys/class/bm-sophon"
_MAX_BYTES = 65536  # driver files are a few lines; never read more than this
_NOT_AVAILABLE = "N/A"  # the driver's answer where a board cannot tell (e.g. no temperature sensor)


def driver_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root if root is not None else (os.environ.get(DRIVER_ROOT_ENV) or "/"))


@dataclass(frozen=True)
class NpuUsage:
    """One chip's /sys/class/bm-sophon/bm-sophon<N>/device/npu_usage."""

    enabled: bool  # False: the driver's usage statistics are off (npu_usage_enable 0)
    usage: int | None = None  # % of the last window the chip was busy
    avusage: int | None = None  # % since the driver loaded


@dataclass(frozen=True)
class ChipInfo:
    """One chip (/proc/bmsophon/card<i>/bmsophon<N>)."""

    device: int  # N: /dev/bm-sophon<N>, the device id of runs
    card: int  # i
    status: str | None  # "Active" | "Fault"
    tpu_freq_mhz: int | None  # current TPU clock
    memory_gib: int | None  # DDR on the chip (ddr_capacity's total)
    heap_mib: float | None  # device-memory heaps the runtime allocates from (sum of `heap`)
    chip_temp_c: int | None
    npu_usage: NpuUsage | None


@dataclass(frozen=True)
class CardInfo:
    """One card (/proc/bmsophon/card<i>)."""

    card: int
    board_type: str | None  # e.g. SC7+ (3 chips), SC7-224T (8), SC7-FP150 (6): the driver's own names
    chip_id: str | None  # "0x1684x" for BM1684X
    chips_on_card: int | None  # what the driver says (the chip folders found are in `chips`)
    tpu_max_mhz: int | None
    chips: tuple[ChipInfo, ...]


@dataclass(frozen=True)
class DriverView:
    """Everything /proc/bmsophon says, and what could not be read."""

    root: str
    present: bool  # /proc/bmsophon exists under root
    card_num: int | None
    chip_num: int | None
    driver_version: str | None
    cards: tuple[CardInfo, ...]
    problems: tuple[str, ...]  # "<file path>: <why>" for each field left unknown

    def find(self, device: int) -> tuple[CardInfo, ChipInfo] | None:
        for card in self.cards:
            for chip in card.chips:
                if chip.device == device:
                    return card, chip
        return None

    def to_json(self) -> dict:
        return asdict(self)


class _Reader:
    """Reads small text files under one root, collecting a problem line for each one that is missing or odd."""

    def __init__(self, root: Path):
        self.root = root
        self.problems: list[str] = []

    def problem(self, rel: str, why: str) -> None:
        self.problems.append(f"{self.root / rel}: {why}")

    def text(self, rel: str, *, required: bool = True) -> str | None:
        path = self.root / rel
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_BYTES)
        except FileNotFoundError:
            if required:
                self.problem(rel, "missing")
            return None
        except IsADirectoryError:
            self.problem(rel, "is a folder, expected a file")
            return None
        except OSError as e:
            self.problem(rel, f"unreadable ({e.strerror or e})")
            return None
        try:
            return data.decode("ascii").strip()
        except UnicodeDecodeError:
            self.problem(rel, "not text")
            return None

    def parse(self, rel: str, pattern: str, *, required: bool = True) -> re.Match | None:
        """The file's text matched against `pattern` (None, and a problem line, if it does not match)."""
        value = self.text(rel, required=required)
        if value is None or value == _NOT_AVAILABLE:
            return None
        m = re.fullmatch(pattern, value)
        if m is None:
            self.problem(rel, f"unexpected content {value[:60]!r}")
        return m

    def integer(self, rel: str, pattern: str = r"(\d+)", *, required: bool = True) -> int | None:
        m = self.parse(rel, pattern, required=required)
        return int(m.group(1)) if m else None


def _numbered(folder: Path, prefix: str) -> list[tuple[int, Path]]:
    """Subfolders named <prefix><N>, by N."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    out = []
    for p in entries:
        m = re.fullmatch(re.escape(prefix) + r"(\d+)", p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _ddr_gib(r: _Reader, rel: str) -> int | None:
    """ddr_capacity: "%lldg, %lldg, %lldg, %lldg, %lldg" — four DDR regions and their total (GiB)."""
    m = r.parse(rel, r"\d+g(?:\s*,\s*\d+g)*")
    return int(re.findall(r"(\d+)g", m.group(0))[-1]) if m else None


def _heap_mib(r: _Reader, rel: str) -> float | None:
    """heap: one line per heap, "heap<k>, size = 0x<hex>, start_addr =0x<hex>"; a line that is not is a problem."""
    text = r.text(rel)
    if text is None:
        return None
    pattern = re.compile(r"heap\d+\s*,\s*size\s*=\s*0x([0-9a-fA-F]+)\s*,\s*start_addr\s*=\s*0x[0-9a-fA-F]+")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    matches = [pattern.fullmatch(line) for line in lines]
    if not lines or not all(matches):
        bad = next((line for line, m in zip(lines, matches) if not m), text)
        r.problem(rel, f"unexpected content {bad[:60]!r}")
        return None
    return sum(int(m.group(1), 16) for m in matches) / 2 ** 20


def parse_npu_usage(text: str) -> NpuUsage | None:
    """npu_usage as the driver writes it ("usage:37 avusage:12") or as its guide prints it ('"usage": 37,
    "avusage": 12'), or statistics switched off; None for anything else."""
    if "Usage enable" in text:
        return NpuUsage(enabled=False)
    m = re.fullmatch(r'\s*"?usage"?\s*:\s*(\d+)\s*,?\s*"?avusage"?\s*:\s*(\d+)\s*', text)
    return NpuUsage(True, int(m.group(1)), int(m.group(2))) if m else None


def _npu(r: _Reader, device: int) -> NpuUsage | None:
    rel = f"{SYS_CLASS}/bm-sophon{device}/device/npu_usage"
    text = r.text(rel, required=False)
    if text is None:
        return None
    usage = parse_npu_usage(text)
    if usage is None:
        r.problem(rel, f"unexpected content {text[:60]!r}")
    return usage


def read_npu_usage(root: str | os.PathLike | None = None) -> dict[int, NpuUsage]:
    """Every chip's npu_usage under /sys/class/bm-sophon (chips whose file is missing or odd are left out)."""
    r = _Reader(driver_root(root))
    out = {}
    for device, _ in _numbered(r.root / SYS_CLASS, "bm-sophon"):
        usage = _npu(r, device)
        if usage is not None:
            out[device] = usage
    return out


def read_driver_view(root: str | os.PathLike | None = None) -> DriverView:
    """What /proc/bmsophon (and each chip's npu_usage) says about this host's cards."""
    base = driver_root(root)
    r = _Reader(base)
    if not (base / PROC).is_dir():
        return DriverView(str(base), False, None, None, None, (), ())
    card_num = r.integer(f"{PROC}/card_num")
    chip_num = r.integer(f"{PROC}/chip_num")
    version = r.text(f"{PROC}/driver_version")
    cards = []
    for index, folder in _numbered(base / PROC, "card"):
        rel = f"{PROC}/{folder.name}"
        chips = []
        for device, chip_dir in _numbered(folder, "bmsophon"):
            crel = f"{rel}/{chip_dir.name}"
            tpuid = r.integer(f"{crel}/tpuid", required=False)
            if tpuid is not None and tpuid != device:
                r.problem(f"{crel}/tpuid", f"says {tpuid}, the folder's name says {device}")
            status = r.text(f"{crel}/status")
            chips.append(ChipInfo(
                device=device, card=index, status=status or None,
                tpu_freq_mhz=r.integer(f"{crel}/tpu_freq", r"(\d+)\s*MHz"),
                memory_gib=_ddr_gib(r, f"{crel}/ddr_capacity"),
                heap_mib=_heap_mib(r, f"{crel}/heap"),
                chip_temp_c=r.integer(f"{crel}/chip_temp", r"(-?\d+)\s*C", required=False),
                npu_usage=_npu(r, device)))
        on_card = r.integer(f"{rel}/chip_num_on_card")
        if on_card is not None and on_card != len(chips):
            r.problem(rel, f"chip_num_on_card says {on_card}, {len(chips)} chip folder(s) found")
        cards.append(CardInfo(card=index, board_type=r.text(f"{rel}/board_type") or None,
                              chip_id=r.text(f"{rel}/chipid") or None, chips_on_card=on_card,
                              tpu_max_mhz=r.integer(f"{rel}/tpu_maxclk", r"(\d+)\s*MHz"), chips=tuple(chips)))
    if card_num is not None and card_num != len(cards):
        r.problem(f"{PROC}/card_num", f"says {card_num}, {len(cards)} card folder(s) found")
    n_chips = sum(len(c.chips) for c in cards)
    if chip_num is not None and chip_num != n_chips:
        r.problem(f"{PROC}/chip_num", f"says {chip_num}, {n_chips} chip folder(s) found")
    return DriverView(str(base), True, card_num, chip_num, version or None, tuple(cards), tuple(r.problems))


def device_summary(device: int, view: DriverView | None = None) -> dict | None:
    """What run.json's devices carry for one chip: its card and what the driver says of both (None: no driver
    view of this chip on this host)."""
    view = view if view is not None else read_driver_view()
    found = view.find(device)
    if found is None:
        return None
    card, chip = found
    out = {"card": card.card, "board_type": card.board_type, "chip_id": card.chip_id,
           "chips_on_card": card.chips_on_card,
           **{k: v for k, v in asdict(chip).items() if k not in ("device", "card")}}
    problems = [p for p in view.problems if _concerns(p, view.root, card.card, device)]
    if problems:
        out["problems"] = problems
    return out


def _concerns(problem: str, root: str, card: int, device: int) -> bool:
    """Whether a problem line is about this chip, its card's own files, or its npu_usage."""
    path = problem.split(": ", 1)[0]
    path = "/" + path[len(root):].lstrip("/") if path.startswith(root) else path
    if path.startswith(f"/{SYS_CLASS}/bm-sophon{device}/"):
        return True
    prefix = f"/{PROC}/card{card}"
    if path == prefix:
        return True
    if path.startswith(prefix + "/"):
        rest = path[len(prefix) + 1:]
        return "/" not in rest or rest.startswith(f"bmsophon{device}/")
    return False
