"""Device kinds, one class each (after vLLM's platforms): what a device of that kind is to Ray (the resource an
actor asks for, whether it is pinned to its node), how an actor addresses it, how its devices are named, and how
to find the local ones. The driver (pipeline/devices.py, pipeline/scheduler.py) and the actor use these and
nothing else; engines declare which kinds they run on in workers/engines/__init__.py.

- `bm1684x`: a Sophgo card, /dev/bm-sophon<N>. Ray knows nothing of them, so every card host advertises the
  custom resource `bm1684x: N`; each actor asks for 1 of it, is pinned to its node and told its card id. What the
  driver says of the cards (/proc/bmsophon, npu_usage) is read by workers/sophon_driver.py.
- `gpu`: Ray's own `num_gpus=1`; Ray sets CUDA_VISIBLE_DEVICES for the actor, so the engine uses cuda:0 and the
  results record the real GPU id.
- `cpu`: no accelerator; the number only names the slot.
- `sim`: a virtual device for the simulated engine (tests, benchmarks): no resource, placed anywhere.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

from .sophon_driver import DriverView, device_summary, read_driver_view, read_npu_usage

SOPHON_GLOB = "/dev/bm-sophon*"


class Platform:
    kind: str  # name in labels and the results' device kind
    resource: str | None = None  # Ray resource one device of this kind is (one actor asks for 1)
    pinned: bool = False  # actors are pinned to the node their device was found on
    virtual: bool = False  # devices exist only as numbers (`--devices N` makes N of them)
    description: str = ""

    def actor_options(self, node_id: str | None = None) -> dict:
        """Ray actor options that put an actor on one device of this kind."""
        opts: dict = {}
        if self.resource == "GPU":
            opts["num_gpus"] = 1
        elif self.resource:
            opts["resources"] = {self.resource: 1}
        if self.pinned and node_id:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        return opts

    def local_devices(self) -> list[int]:
        """Device ids on this host (empty for virtual kinds)."""
        return []

    def ray_resources(self, devices_spec: str | None) -> dict:
        """Custom resources a local Ray cluster started for this kind must advertise."""
        return {}

    def visibility_env(self, devices_spec: str | None) -> dict:
        """Environment a locally started Ray cluster needs so that it sees exactly the devices asked for."""
        return {}

    def in_actor(self, device: int) -> tuple[int, int | None]:
        """Inside the actor: (device id recorded in the results, device id handed to the engine)."""
        return device, device

    def label(self, device: int, node_ip: str | None = None) -> str:
        return f"{self.kind}:{device}" + (f"@{node_ip}" if node_ip else "")

    def device_info(self, device: int) -> dict | None:
        """What this host's driver says of the device (run.json's devices carry it); None where it says nothing."""
        return None

    def usage(self) -> dict[int, int | None]:
        """Busy % per local device from the driver, where it reports one (the progress log records it)."""
        return {}


class Bm1684xPlatform(Platform):
    kind = "bm1684x"
    resource = "bm1684x"
    pinned = True
    description = "Sophgo BM1684X card (/dev/bm-sophon<N>)"

    def local_devices(self) -> list[int]:
        return local_sophon_cards()

    def ray_resources(self, devices_spec: str | None) -> dict:
        cards = local_sophon_cards()
        if cards:
            return {self.resource: len(cards)}
        if devices_spec and "," in str(devices_spec):
            # No /dev/bm-sophon* (e.g. the cmodel simulator): trust card ids given explicitly with --devices.
            ids = [int(p) for p in str(devices_spec).split(",") if p.strip().isdigit()]
            if ids:
                return {self.resource: max(ids) + 1}
        return {}

    def driver_view(self, root: str | os.PathLike | None = None) -> DriverView:
        """Cards, chips per card, board type, memory, TPU clock and NPU use as /proc/bmsophon and sysfs say."""
        return read_driver_view(root)

    def device_info(self, device: int, root: str | os.PathLike | None = None) -> dict | None:
        return device_summary(device, read_driver_view(root))

    def usage(self, root: str | os.PathLike | None = None) -> dict[int, int | None]:
        """npu_usage's last-window % per chip (None where the driver's statistics are off)."""
        return {d: (u.usage if u.enabled else None) for d, u in read_npu_usage(root).items()}


class GpuPlatform(Platform):
    kind = "gpu"
    resource = "GPU"
    description = "NVIDIA GPU"

    def local_devices(self) -> list[int]:
        return [g["index"] for g in local_gpus()]

    def visibility_env(self, devices_spec: str | None) -> dict:
        if devices_spec and "," in str(devices_spec) and local_gpus():
            return {"CUDA_VISIBLE_DEVICES": str(devices_spec)}  # Ray then sees exactly these GPUs
        return {}

    def in_actor(self, device: int) -> tuple[int, int | None]:
        import ray

        ids = ray.get_gpu_ids()  # Ray gave this actor one GPU and made it the only visible one: cuda:0 here
        return (int(ids[0]) if ids else device), 0


class CpuPlatform(Platform):
    kind = "cpu"
    virtual = True
    description = "the CPU"

    def in_actor(self, device: int) -> tuple[int, int | None]:
        return device, None


class SimPlatform(Platform):
    kind = "sim"
    virtual = True
    description = "virtual (tests, benchmarks)"


PLATFORMS: dict[str, Platform] = {p.kind: p for p in (Bm1684xPlatform(), GpuPlatform(), CpuPlatform(), SimPlatform())}


class UnknownDeviceKind(ValueError):
    pass


def platform(kind: str) -> Platform:
    try:
        return PLATFORMS[kind]
    except KeyError:
        raise UnknownDeviceKind(f"unknown device kind {kind!r}; known: {', '.join(PLATFORMS)}") from None


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
