"""Which devices a run may use: BM1684X cards (/dev/bm-sophon*), GPUs, simulated devices, and Ray's view of them.

Ray knows nothing of Sophgo cards, so every node advertises a custom resource `bm1684x: N` (the local cluster this
tool starts does it from /dev/bm-sophon*; on a multi-node cluster start each node with
`ray start --resources='{"bm1684x": N}'`). The driver asks each such node which card ids it has and pins one actor
per card to that node, telling it the card id explicitly.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

SOPHON_GLOB = "/dev/bm-sophon*"
BM1684X_RESOURCE = "bm1684x"


class DeviceError(RuntimeError):
    pass


@dataclass(frozen=True)
class DeviceSlot:
    """One device one actor will own."""

    kind: str  # "bm1684x" | "gpu" | "sim" | "cpu"
    device: int  # device index on its node
    node_id: str | None = None  # Ray node id to pin to (None: anywhere)
    node_ip: str | None = None

    @property
    def label(self) -> str:
        where = f"@{self.node_ip}" if self.node_ip else ""
        return f"{self.kind}:{self.device}{where}"


def device_kind(engine: str, gpus_available: bool) -> str:
    if engine == "bm1684x":
        return "bm1684x"
    if engine == "hf":
        return "gpu" if gpus_available else "cpu"
    return "sim"


def local_sophon_cards(pattern: str = SOPHON_GLOB) -> list[int]:
    """Card ids from /dev/bm-sophon<N> (bm-sophon-ctl and friends are not cards)."""
    ids = []
    for path in glob.glob(pattern):
        m = re.fullmatch(r".*bm-sophon(\d+)", path)
        if m:
            ids.append(int(m.group(1)))
    return sorted(ids)


def local_gpus() -> list[dict]:
    """GPUs nvidia-smi reports (index, name, memory MiB); honours CUDA_VISIBLE_DEVICES like CUDA does."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            gpus.append({"index": int(parts[0]), "name": parts[1], "memory_mib": int(float(parts[2]))})
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        keep = {int(v) for v in visible.split(",") if v.strip().isdigit()}
        gpus = [g for g in gpus if g["index"] in keep]
    return gpus


def parse_devices(spec: str | int | None, available: list[int], *, what: str = "devices") -> list[int]:
    """`all` → every available id; `0,2` → exactly those ids (each must exist); `N` → the first N.
    A single id is written with a trailing comma (`2,`). With nothing available, `N` means N ids 0..N-1
    (simulated devices)."""
    spec = "all" if spec is None else str(spec).strip()
    if spec in ("", "all"):
        return list(available)
    if "," in spec:
        try:
            wanted = sorted({int(p) for p in spec.split(",") if p.strip()})
        except ValueError:
            raise DeviceError(f"--devices {spec!r}: expected all, a count N, or ids like 0,2") from None
        if available:
            missing = [d for d in wanted if d not in available]
            if missing:
                raise DeviceError(f"--devices {spec}: no {what} {', '.join(map(str, missing))} "
                                  f"(available: {', '.join(map(str, available)) or 'none'})")
        return wanted
    try:
        n = int(spec)
    except ValueError:
        raise DeviceError(f"--devices {spec!r}: expected all, a count N, or ids like 0,2") from None
    if n < 1:
        raise DeviceError(f"--devices {spec}: need at least one device")
    if not available:
        return list(range(n))
    if n > len(available):
        raise DeviceError(f"--devices {n}: only {len(available)} {what} available ({', '.join(map(str, available))})")
    return list(available[:n])


def _node_cards() -> dict:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "cards": local_sophon_cards()}


def cluster_slots(kind: str, spec: str | None) -> list[DeviceSlot]:
    """The device slots of the connected Ray cluster for `kind`, filtered by --devices `spec`."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if kind == "bm1684x":
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(BM1684X_RESOURCE, 0) > 0]
        if not nodes:
            raise DeviceError(f"no BM1684X cards: no node of the Ray cluster advertises the '{BM1684X_RESOURCE}' "
                              f"resource (none of {SOPHON_GLOB} here; on a cluster start nodes with "
                              f"ray start --resources='{{\"{BM1684X_RESOURCE}\": N}}'). "
                              "Use --engine hf (GPU/CPU) or --engine simulated to run without cards.")
        probe = ray.remote(num_cpus=0)(_node_cards)
        slots = []
        for node in nodes:
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            found = ray.get(probe.options(scheduling_strategy=strategy).remote())["cards"]
            advertised = int(node["Resources"][BM1684X_RESOURCE])
            cards = found or list(range(advertised))  # a node may advertise cards it names differently
            for d in parse_devices(spec, cards[:advertised] if len(cards) > advertised else cards, what="BM1684X cards"):
                slots.append(DeviceSlot("bm1684x", d, node["NodeID"], node.get("NodeManagerAddress")))
        return slots
    if kind == "gpu":
        total = int(ray.cluster_resources().get("GPU", 0))
        if total < 1:
            raise DeviceError("no GPUs in the Ray cluster")
        return [DeviceSlot("gpu", d) for d in parse_devices(spec, list(range(total)), what="GPUs")]
    # simulated devices (and hf on CPU): virtual, placed anywhere; `all` means one
    ids = parse_devices("1" if spec in (None, "", "all") else spec, [], what="devices")
    return [DeviceSlot(kind, d) for d in ids]


def describe_local() -> dict:
    """What this host has, without starting Ray."""
    return {"bm1684x": local_sophon_cards(), "gpus": local_gpus(), "cpus": os.cpu_count()}
