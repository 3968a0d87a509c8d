"""A real two-node Ray cluster on one host (two raylets, each advertising one BM1684X card): one card actor lands on
each node, pinned there, and the results say which node ran each row (the nodes share a host name)."""

import pyarrow.parquet as pq
import pytest
import ray
from ray.cluster_utils import Cluster

from manifest_helpers import write_manifest
from transcribe_batch.pipeline.config import build_config
from transcribe_batch.pipeline.runner import run_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"bm1684x": 1},
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"bm1684x": 1})
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
                                   engine_options={"device_kind": "bm1684x"}))
    assert summary.status == "complete" and summary.n_ok == len(rows)
    infos = summary.devices
    assert sorted(i["kind"] for i in infos) == ["bm1684x", "bm1684x"]
    assert {i["node_id"] for i in infos} == nodes  # one actor on each node
    assert len({i["label"] for i in infos}) == 2 and len({i["node"] for i in infos}) == 1  # same host, two labels
    out = pq.read_table(summary.results).to_pylist()
    assert {r["node_id"] for r in out} == nodes  # both nodes did work, and the rows say which
    assert all(r["device"] == 0 and r["node"] == infos[0]["node"] for r in out)
