"""The nets tpu-mlir 1.30.2's Qwen3AsrConverter makes of the tiny Qwen3-ASR (recorded by native/compile/
qwen3_asr_probe.py: tests/fixtures/tiny-qwen3-asr/probe-bmodel-nets.json) agree with the checkpoint's config.json and
with what the model family computes — the facts a runtime for Qwen3-ASR would check at load."""

from __future__ import annotations

import json

import pytest

from qwen3_fixture import FIXTURE
from transcribe_batch.workers.models import load_family


@pytest.fixture(scope="module")
def probe():
    return json.loads((FIXTURE / "probe-bmodel-nets.json").read_text())


def _io(net, kind, k):
    entry = net[kind][k]
    return entry["shape"], entry["dtype"]


def test_audio_net_is_one_chunk_and_gives_the_familys_rows(probe):
    family = load_family(FIXTURE)
    thinker = json.loads((FIXTURE / "config.json").read_text())["thinker_config"]
    hidden, chunk = thinker["text_config"]["hidden_size"], 2 * thinker["audio_config"]["n_window"]
    audio = probe["nets"]["audio"]
    assert len(audio["inputs"]) == 1  # no padding-mask input (see native/compile/README.md §7)
    assert _io(audio, "inputs", 0) == ([1, 1, family.features.feature_size, chunk], "float32")
    assert _io(audio, "outputs", 0) == ([1, family.audio_tokens(chunk), hidden], "float16")


def test_text_nets_have_the_qwen2_audio_layout(probe):
    text = json.loads((FIXTURE / "config.json").read_text())["thinker_config"]["text_config"]
    seq, hidden = probe["seqlen"], text["hidden_size"]
    kv, head_dim, layers = text["num_key_value_heads"], text["head_dim"], text["num_hidden_layers"]
    nets = probe["nets"]
    assert set(nets) == {"audio", "embedding", "embedding_cache", "lm_head",
                         *(f"block_{i}" for i in range(layers)), *(f"block_cache_{i}" for i in range(layers))}
    assert _io(nets["embedding"], "inputs", 0) == ([1, seq], "int32")
    assert _io(nets["embedding"], "outputs", 0) == ([1, seq, hidden], "float16")
    for i in range(layers):
        block, cache = nets[f"block_{i}"], nets[f"block_cache_{i}"]
        assert [e["shape"] for e in block["inputs"]] == [[1, seq, hidden], [1, seq], [1, 1, seq, seq]]
        assert [e["shape"] for e in block["outputs"]] == [[1, seq, hidden], [1, seq, kv, head_dim], [1, seq, kv, head_dim]]
        assert _io(block, "inputs", 1) == ([1, seq], "int32")  # plain 1-D positions: the MRoPE rows are equal
        assert [e["shape"] for e in cache["inputs"]] == [[1, 1, hidden], [1, 1], [1, 1, 1, seq + 1],
                                                        [1, seq, kv, head_dim], [1, seq, kv, head_dim]]
    assert _io(nets["lm_head"], "inputs", 0) == ([1, hidden], "float16")
    assert _io(nets["lm_head"], "outputs", 0) == ([1, 1], "int32")  # greedy head: the token id
