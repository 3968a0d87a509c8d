"""Which devices a run may use: BM1684X cards (/dev/bm-sophon*), GPUs, CPU, simulated devices, and Ray's view of them.
What each device kind is to Ray lives in workers/platforms.py; this module turns the connected cluster into slots.

Ray knows nothing of Sophgo cards, so every node advertises a custom resource `bm1684x: N` (the local cluster this
tool starts does it from /dev/bm-sophon*; on a multi-node cluster start each node with
`ray start --resources='{"bm1684x": N}'`). The driver asks each such node which card ids it has and pins one actor
per card to that node, telling it the card id explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from transcribe_batch.workers.platforms import (PLATFORMS, SOPHON_GLOB, Platform, local_gpus, local_sophon_cards,
                                                 platform)

BM1684X_RESOURCE = PLATFORMS["bm1684x"].resource


class DeviceError(RuntimeError):
    pass


@dataclass(frozen=True)
class DeviceSlot:
    """One device one actor will own."""

    kind: str  # a device kind of workers/platforms.py: "bm1684x" | "gpu" | "cpu" | "sim"
    device: int  # device index on its node
    node_id: str | None = None  # Ray node id to pin to (None: anywhere)
    node_ip: str | None = None
    node_tag: str | None = None  # short node id, where several nodes share an address (one host, several raylets)

    def __post_init__(self):
        platform(self.kind)  # an unknown kind is an error, not a virtual device

    @property
    def platform(self) -> Platform:
        return platform(self.kind)

    @property
    def label(self) -> str:
        """Unique within a run: kind:device, @node address, #node tag when addresses repeat."""
        return self.platform.label(self.device, self.node_ip) + (f"#{self.node_tag}" if self.node_tag else "")


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


def _node_devices(kind: str) -> dict:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "devices": platform(kind).local_devices()}


def cluster_slots(kind: str, spec: str | None) -> list[DeviceSlot]:
    """The device slots of the connected Ray cluster for device kind `kind`, filtered by --devices `spec`."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    plat = platform(kind)
    if plat.pinned:  # devices Ray counts as a custom resource per node: one actor per device, pinned to its node
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(plat.resource, 0) > 0]
        if not nodes:
            raise DeviceError(f"no BM1684X cards: no node of the Ray cluster advertises the '{plat.resource}' "
                              f"resource (none of {SOPHON_GLOB} here; on a cluster start nodes with "
                              f"ray start --resources='{{\"{plat.resource}\": N}}'). "
                              "Use --engine hf (GPU/CPU) or --engine simulated to run without cards.")
        probe = ray.remote(num_cpus=0)(_node_devices)
        shared_ip = {ip for ip in (n.get("NodeManagerAddress") for n in nodes)
                     if sum(m.get("NodeManagerAddress") == ip for m in nodes) > 1}
        slots = []
        for node in sorted(nodes, key=lambda n: (n.get("NodeManagerAddress") or "", n["NodeID"])):
            strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            found = ray.get(probe.options(scheduling_strategy=strategy).remote(kind))["devices"]
            advertised = int(node["Resources"][plat.resource])
            cards = found or list(range(advertised))  # a node may advertise cards it names differently
            ip = node.get("NodeManagerAddress")
            tag = node["NodeID"][:8] if ip in shared_ip else None
            for d in parse_devices(spec, cards[:advertised] if len(cards) > advertised else cards, what="BM1684X cards"):
                slots.append(DeviceSlot(kind, d, node["NodeID"], ip, tag))
        return slots
    if plat.resource == "GPU":
        total = int(ray.cluster_resources().get("GPU", 0))
        if total < 1:
            raise DeviceError("no GPUs in the Ray cluster")
        return [DeviceSlot(kind, d) for d in parse_devices(spec, list(range(total)), what="GPUs")]
    # virtual devices (simulated, CPU): placed anywhere; `all` means one
    ids = parse_devices("1" if spec in (None, "", "all") else spec, [], what="devices")
    return [DeviceSlot(kind, d) for d in ids]


def describe_local() -> dict:
    """What this host has, without starting Ray; `bm1684x_driver` is what the Sophgo driver says of its cards
    (workers/sophon_driver.py: `present` false where /proc/bmsophon does not exist)."""
    return {"bm1684x": local_sophon_cards(), "bm1684x_driver": PLATFORMS["bm1684x"].driver_view().to_json(),
            "gpus": local_gpus(), "cpus": os.cpu_count()}
