"""A real two-node Ray cluster on one host (two raylets, each advertising one BM1684X card): one card actor lands on
each node, pinned there, and the results say which node ran each row (the nodes share a host name); crashes on
either node are charged to the row on its device (each node keeps its device ledgers in a folder of its own)."""

import json
import os

import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from manifest_helpers import write_manifest
from transcribe_batch.pipeline.config import build_config
from transcribe_batch.pipeline.runner import run_job
from transcribe_batch.workers.engines.simulated import FaultSpec
from transcribe_batch.workers.ledger import DIR_ENV, ledger_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node2_ledgers(tmp_path_factory):
    return tmp_path_factory.mktemp("node2-ledgers")


@pytest.fixture(scope="module")
def two_nodes(node2_ledgers):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"bm1684x": 1},
                                                            "include_dashboard": False})
    before = os.environ.get(DIR_ENV)
    os.environ[DIR_ENV] = str(node2_ledgers)  # the second raylet's processes keep their ledgers apart
    try:
        cluster.add_node(num_cpus=1, resources={"bm1684x": 1})
    finally:
        if before is None:
            del os.environ[DIR_ENV]
        else:
            os.environ[DIR_ENV] = before
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_one_card_actor_per_node_and_results_name_the_node(tmp_path, audio_dir, two_nodes):
    rows = write_manifest(tmp_path / "m.jsonl", audio_dir, max_duration=30)
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    # the simulated engine on the bm1684x device kind: card resource, node pinning, card ids: as the real engine
    summary = run_job(build_config(tmp_path / "m.jsonl", tmp_path / "out", engine="simulated", sim_speedup=2000,
                                   devices="all", shard_size=1, quiet=True,
                                   device_kind="bm1684x"))
    assert summary.status == "complete" and summary.n_ok == len(rows)
    infos = summary.devices
    assert sorted(i.kind for i in infos) == ["bm1684x", "bm1684x"]
    assert {i.node_id for i in infos} == nodes  # one actor on each node
    assert len({i.label for i in infos}) == 2 and len({i.node for i in infos}) == 1  # same host, two labels
    out = pq.read_table(summary.results).to_pylist()
    assert {r["node_id"] for r in out} == nodes  # both nodes did work, and the rows say which
    assert all(r["device"] == 0 and r["node"] == infos[0].node for r in out)


def test_work_for_a_node_runs_on_that_node(two_nodes):
    """How the driver reads a dead actor's ledger: in its own process for its own node, else pinned to the node."""
    from transcribe_batch.pipeline.scheduler import Scheduler

    def where():
        return ray.get_runtime_context().get_node_id(), os.environ.get(DIR_ENV)

    s = Scheduler.__new__(Scheduler)
    s.driver_node = ray.get_runtime_context().get_node_id()
    for node in {n["NodeID"] for n in ray.nodes() if n["Alive"]}:
        ran_on, ledger_dir = s._on_node(node, where, timeout=60)
        assert ran_on == node and (ledger_dir is None) == (node == s.driver_node)


def test_crashes_on_either_node_charge_only_the_row_on_the_device(tmp_path, audio_dir, two_nodes, node2_ledgers):
    rows = write_manifest(tmp_path / "m.jsonl", audio_dir, max_duration=30)
    faults = "crash=0.25,seed=3"
    summary = run_job(build_config(tmp_path / "m.jsonl", tmp_path / "out", engine="simulated", sim_speedup=2000,
                                   devices="all", shard_size=1, quiet=True, sim_faults=faults, max_attempts=3,
                                   escalate_min_s=1000.0, device_max_failures=1000, segment_max_s=30.0,
                                   device_kind="bm1684x"))  # rows ≤ 30 s: one piece, one fault draw an attempt
    assert summary.status == "complete" and summary.stats["actor_crashes"] >= 3
    spec = FaultSpec.parse(faults)
    out = {r["id"]: r for r in pq.read_table(summary.results).to_pylist()}
    for row in rows:
        crashes = [spec.draw(row["id"], k) == "crash" for k in (1, 2, 3)]
        rec = out[row["id"]]
        if all(crashes):
            assert rec["status"] == "failed" and rec["error_class"] == "ActorDied" and rec["attempts"] == 3
        else:
            assert rec["status"] == "ok" and rec["attempts"] == crashes.index(False) + 1, (row["id"], crashes, rec)
    ledgers = [i.ledger for i in summary.devices]
    assert sorted(str(os.path.dirname(p)) == str(node2_ledgers) for p in ledgers) == [False, True]
    assert not [f for p in ledgers for f in ledger_files(p) if f.exists()]  # the run's ledgers went with it
    events = [json.loads(line) for line in (tmp_path / "out" / "progress.jsonl").read_text().splitlines()]
    assert not [e for e in events if e.get("event") == "ledger_unreadable"]
