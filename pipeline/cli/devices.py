"""`transcribe-batch devices`: the BM1684X cards, GPUs and Ray cluster resources this host (or cluster) offers."""

from __future__ import annotations

import json
from typing import Optional

import typer

HELP = """Show the devices a run can use: BM1684X cards (/dev/bm-sophon*), GPUs (nvidia-smi), and, with --address or --ray, the resources of the Ray cluster per node (custom resource 'bm1684x', GPU, CPU).

For BM1684X cards it also shows what the driver says (/proc/bmsophon, /sys/class/bm-sophon/*/device/npu_usage): cards, chips per card (one /dev/bm-sophon<N> each), board type, memory, TPU clock, temperature and NPU use. Set TRANSCRIBE_BATCH_DRIVER_ROOT where the host's /proc and /sys are mounted elsewhere (containers).

On a multi-node cluster, start every card host with  ray start --address HEAD:6379 --resources='{"bm1684x": N}' (N = its number of cards) and run jobs with  --address auto.
"""


def devices(
    address: Optional[str] = typer.Option(None, "--address", help="Also list the nodes of this Ray cluster "
                                          "(auto | ray://host:10001)."),
    ray_local: bool = typer.Option(False, "--ray", help="Start a local Ray cluster (as `run` would) and list it."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    from rich.console import Console
    from rich.table import Table

    from transcribe_batch.pipeline.devices import BM1684X_RESOURCE, SOPHON_GLOB, describe_local
    from transcribe_batch.workers.engines import ENGINES
    from transcribe_batch.workers.platforms import PLATFORMS

    info: dict = {"local": describe_local(),
                  "device_kinds": {k: {"description": p.description, "ray_resource": p.resource,
                                       "engines": [e for e, spec in ENGINES.items() if k in spec.device_kinds]}
                                   for k, p in PLATFORMS.items()}}
    if address or ray_local:
        import ray

        from transcribe_batch.pipeline.ray_address import probe

        resources = {}
        if not address and info["local"]["bm1684x"]:
            resources[BM1684X_RESOURCE] = len(info["local"]["bm1684x"])
        try:
            if address:
                probe(address)
            ray.init(address=address or None, include_dashboard=False, logging_level="ERROR",
                     **({} if address else {"resources": resources or None}))
        except (ConnectionError, RuntimeError) as e:  # ray.init: ConnectionError, or RuntimeError (GCS gone)
            typer.echo(f"error: --address {address}: {e}" if address else f"error: could not start Ray: {e}",
                       err=True)
            raise typer.Exit(2) from None
        try:
            info["ray_nodes"] = [
                {"node_id": n["NodeID"], "address": n.get("NodeManagerAddress"), "alive": n.get("Alive"),
                 "resources": {k: v for k, v in n.get("Resources", {}).items() if not k.startswith("node:")}}
                for n in ray.nodes()
            ]
        finally:
            ray.shutdown()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    console = Console()
    local = info["local"]
    cards = local["bm1684x"]
    console.print(f"[bold]BM1684X cards[/bold] ({SOPHON_GLOB}): "
                  + (", ".join(str(c) for c in cards) if cards else "none"))
    _print_driver(console, local["bm1684x_driver"], bool(cards))
    if local["gpus"]:
        table = Table("GPU", "name", "memory", title="GPUs", title_justify="left")
        for g in local["gpus"]:
            table.add_row(str(g["index"]), g["name"], f"{g['memory_mib'] / 1024:.0f} GiB")
        console.print(table)
    else:
        console.print("[bold]GPUs[/bold]: none")
    console.print(f"[bold]CPUs[/bold]: {local['cpus']}")
    if "ray_nodes" in info:
        table = Table("node", "address", "alive", BM1684X_RESOURCE, "GPU", "CPU", title="Ray cluster",
                      title_justify="left")
        for n in info["ray_nodes"]:
            r = n["resources"]
            table.add_row(n["node_id"][:12], str(n["address"]), str(n["alive"]), f"{r.get(BM1684X_RESOURCE, 0):g}",
                          f"{r.get('GPU', 0):g}", f"{r.get('CPU', 0):g}")
        console.print(table)
    kinds = Table("device kind", "what", "Ray resource", "engines", title="Device kinds", title_justify="left")
    for k, d in info["device_kinds"].items():
        kinds.add_row(k, d["description"], d["ray_resource"] or "-", ", ".join(d["engines"]))
    console.print(kinds)
    if not cards and not local["gpus"]:
        console.print("No accelerator here: use --engine hf (CPU, slow) or --engine simulated --devices N.")


def _print_driver(console, view: dict, have_cards: bool) -> None:
    """The driver's view of the cards: one row per chip; what could not be read underneath."""
    from rich.table import Table

    if not view["present"]:
        if have_cards:
            console.print(f"[yellow]no /proc/bmsophon under {view['root']}: the driver's card details are unknown[/]")
        return

    def known(value, unit: str = "") -> str:
        return "?" if value is None else f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"

    title = (f"BM1684X cards as the driver sees them: {known(view['card_num'])} card(s), {known(view['chip_num'])} "
             f"chip(s); driver {known(view['driver_version'])}")
    table = Table("card", "board", "chips on card", "device", "status", "TPU MHz", "memory", "heaps", "temp",
                  "NPU use (avg)", title=title, title_justify="left")
    for card in view["cards"]:
        chips = card["chips"] or [None]
        for chip in chips:
            if chip is None:
                table.add_row(str(card["card"]), known(card["board_type"]), known(card["chips_on_card"]), "-", "", "",
                              "", "", "", "")
                continue
            npu = chip["npu_usage"]
            use = ("?" if npu is None else "off" if not npu["enabled"] else f"{npu['usage']}% ({npu['avusage']}%)")
            table.add_row(str(card["card"]), known(card["board_type"]), known(card["chips_on_card"]),
                          f"bm-sophon{chip['device']}", known(chip["status"]),
                          f"{known(chip['tpu_freq_mhz'])} / {known(card['tpu_max_mhz'])}",
                          known(chip["memory_gib"], " GiB"),
                          "?" if chip["heap_mib"] is None else f"{chip['heap_mib']:,.0f} MiB",
                          known(chip["chip_temp_c"], " C"), use)
    console.print(table)
    for problem in view["problems"]:
        console.print(f"[yellow]driver file {problem}[/]", markup=True, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("devices", help=HELP)(devices)
