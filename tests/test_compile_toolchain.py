"""The compile toolchain's parts that run without tpu-mlir: the bmodel sidecar format, the converter's argument
handling, and the committed tiny fixture's consistency (config, tokenizer, sidecar, HF reference)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
COMPILE = REPO / "native" / "compile"
FIXTURE = REPO / "tests" / "fixtures" / "tiny-qwen2-audio"
BMODEL = FIXTURE / "tiny-qwen2-audio.bmodel"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_compile_{name}", COMPILE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


sidecar = _load("sidecar")
convert = _load("convert")


def _json(name: str) -> dict:
    return json.loads((FIXTURE / name).read_text())


@pytest.fixture(scope="module")
def fixture_sidecar() -> dict:
    return sidecar.read_sidecar(BMODEL)


# ---------------------------------------------------------------- sidecar format


def test_fixture_sidecar_matches_its_bmodel(fixture_sidecar):
    assert fixture_sidecar["bmodel"] == BMODEL.name
    assert fixture_sidecar["bmodel_bytes"] == BMODEL.stat().st_size
    assert fixture_sidecar["bmodel_sha256"] == sidecar.sha256_file(BMODEL)
    assert BMODEL.stat().st_size < 1_000_000


def test_fixture_sidecar_matches_config_and_preprocessor(fixture_sidecar):
    cfg, pre = _json("config.json"), _json("preprocessor_config.json")
    text, audio = cfg["text_config"], cfg["audio_config"]
    s = fixture_sidecar
    assert (s["hidden_size"], s["vocab_size"], s["num_layers"]) == (
        text["hidden_size"], text["vocab_size"], text["num_hidden_layers"])
    assert s["num_key_value_heads"] == text["num_key_value_heads"]
    assert s["audio_token_index"] == cfg["audio_token_index"]
    assert s["n_mels"] == pre["feature_size"] == audio["num_mel_bins"]
    assert s["mel_frames"] == pre["chunk_length"] * pre["sampling_rate"] // pre["hop_length"] == pre["nb_max_frames"]
    assert s["max_audio_tokens"] == audio["max_source_positions"] // 2
    assert s["lm_head"] == "greedy" and s["chip"] == "bm1684x"
    assert s["token_logprob"] == "head"  # the head returns the chosen token's log-probability too
    assert set(s["nets"]) == {"audio", "embedding", "embedding_cache", "lm_head", "block_0", "block_1",
                              "block_cache_0", "block_cache_1"}


def _config() -> dict:
    # what AutoConfig(...).to_dict() gives for the real checkpoint: the fields the sidecar reads
    return {
        "architectures": ["Qwen2AudioForConditionalGeneration"],
        "audio_token_index": 151646,
        "audio_config": {"num_mel_bins": 128, "max_source_positions": 1500},
        "text_config": {"hidden_size": 4096, "vocab_size": 156032, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 32},
    }


def _nets(layers: int = 32, extra=()) -> list[str]:
    return (["audio", "embedding", "embedding_cache", "lm_head", *extra]
            + [f"block_{i}" for i in range(layers)] + [f"block_cache_{i}" for i in range(layers)])


def _build(tmp_path: Path, **over) -> tuple[Path, dict]:
    bm = tmp_path / "real.bmodel"
    bm.write_bytes(b"\0" * 4096)
    kw = dict(model_id="Qwen2-Audio-7B-Instruct", seqlen=1024, max_input_length=1024, quantization="w4bf16",
              q_group_size=64, lm_head="greedy", chip="bm1684x", nets=_nets(),
              tools={"tpu_mlir": "1.30.2", "transformers": "5.6.2"}, audio_mask_value=-10000.0)
    kw.update(over)
    return bm, sidecar.build_sidecar(bm, _config(), **kw)


def test_sidecar_round_trip_for_the_real_model_shape(tmp_path):
    bm, data = _build(tmp_path)
    path = sidecar.write_sidecar(bm, data)
    assert path == tmp_path / "real.bmodel.json"
    back = sidecar.read_sidecar(bm)
    assert back == data
    assert (back["mel_frames"], back["audio_positions"], back["max_audio_tokens"]) == (3000, 1500, 750)
    assert (back["head_dim"], back["half_precision"], back["q_group_size"]) == (128, "bf16", 64)


def test_sidecar_short_seqlen_is_valid(tmp_path):
    _, data = _build(tmp_path, seqlen=599, max_input_length=599)  # the existing port's SEQLEN
    assert data["seqlen"] == 599 and data["max_audio_tokens"] == 750


def test_sidecar_float_mode_has_no_group_size(tmp_path):
    _, data = _build(tmp_path, quantization="f16", q_group_size=64)
    assert data["q_group_size"] is None and data["half_precision"] == "f16"


@pytest.mark.parametrize("field, value, message", [
    ("seqlen", "1024", "'seqlen'"),
    ("quantization", "int8", "'quantization'"),
    ("half_precision", "f16", "'half_precision'"),
    ("lm_head", "topk", "'lm_head'"),
    ("mel_frames", 2999, "'mel_frames'"),
    ("q_group_size", None, "'q_group_size'"),
    ("format_version", 2, "format_version 2"),
    ("nets", _nets(31), "block_31"),
    ("max_audio_tokens", True, "'max_audio_tokens'"),
    ("token_logprob", "logits", "'token_logprob'"),
])
def test_sidecar_validation_names_the_bad_field(tmp_path, field, value, message):
    _, data = _build(tmp_path)
    data[field] = value
    with pytest.raises(sidecar.SidecarError, match=message):
        sidecar.validate_sidecar(data)


def test_sidecar_logits_head_needs_greedy_head_net(tmp_path):
    with pytest.raises(sidecar.SidecarError, match="greedy_head"):
        _build(tmp_path, lm_head="logits")
    _, data = _build(tmp_path, lm_head="logits", nets=_nets(extra=["greedy_head"]))
    assert data["lm_head"] == "logits"


def test_read_sidecar_errors_name_the_file(tmp_path):
    bm, data = _build(tmp_path)
    with pytest.raises(sidecar.SidecarError, match="no sidecar"):
        sidecar.read_sidecar(bm)
    sidecar.write_sidecar(bm, data)
    bm.write_bytes(b"\0" * 8192)  # bmodel replaced, sidecar left behind
    with pytest.raises(sidecar.SidecarError, match="4096-byte"):
        sidecar.read_sidecar(bm)
    del data["chip"]
    sidecar.sidecar_path(bm).write_text(json.dumps(data))
    with pytest.raises(sidecar.SidecarError, match="missing field.*chip"):
        sidecar.read_sidecar(bm, check_file=False)
    sidecar.sidecar_path(bm).write_text("{not json")
    with pytest.raises(sidecar.SidecarError, match="real.bmodel.json: not valid JSON"):
        sidecar.read_sidecar(bm)


# ---------------------------------------------------------------- converter arguments


def test_convert_defaults(tmp_path):
    args = convert.parse_args([str(tmp_path), "-o", str(tmp_path / "m.bmodel")])
    assert (args.quantize, args.q_group_size, args.seqlen, args.chip, args.lm_head) == (
        "w4bf16", 64, 1024, "bm1684x", "greedy")
    conv = convert.converter_args(args, tmp_path / "work")
    assert conv.seq_length == 1024 and conv.quantize == "w4bf16" and conv.q_group_size == 64
    assert conv.do_sample is False and conv.dynamic is False and conv.num_device == 1 and conv.batch == 1


def test_convert_batch_option_reaches_the_converter_and_the_sidecar(tmp_path):
    args = convert.parse_args([str(tmp_path), "-o", str(tmp_path / "m.bmodel"), "--batch", "8"])
    assert args.batch == 8 and convert.converter_args(args, tmp_path).batch == 8
    _, data = _build(tmp_path, batch=8)
    assert data["batch"] == 8 and sidecar.batch_of(data) == 8
    del data["batch"]  # sidecars written before the field: one decode row
    assert sidecar.batch_of(sidecar.validate_sidecar(data)) == 1
    for bad in (0, "4"):
        with pytest.raises(sidecar.SidecarError, match="'batch'"):
            sidecar.validate_sidecar({**data, "batch": bad})


def test_convert_logits_head_and_float_mode(tmp_path):
    args = convert.parse_args([str(tmp_path), "-o", str(tmp_path / "m.bmodel"), "-q", "bf16", "--do_sample",
                               "-c", "bm1688", "--num-core", "2", "-s", "599"])
    assert args.lm_head == "logits" and args.chip == "bm1688" and args.seqlen == 599
    conv = convert.converter_args(args, tmp_path)
    assert conv.do_sample is True and conv.q_group_size == 0 and conv.num_core == 2


@pytest.mark.parametrize("extra, message", [
    (["-q", "int8"], "invalid choice"),
    (["-c", "bm1690"], "invalid choice"),
    (["-q", "w4bf16", "-g", "48"], "--q-group-size 48"),
    (["-q", "w8f16", "-g", "-1"], "--q-group-size -1"),
    (["-s", "8"], "--seqlen 8"),
    (["--num-core", "2"], "bm1684x has one core"),
    (["--batch", "0"], "--batch 0"),
])
def test_convert_rejects_bad_arguments(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        convert.parse_args([str(tmp_path), "-o", str(tmp_path / "m.bmodel"), *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_convert_output_must_be_a_bmodel(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert.parse_args([str(tmp_path), "-o", str(tmp_path / "m.onnx")])
    assert "must end in .bmodel" in capsys.readouterr().err


def test_convert_checks_the_model_folder(tmp_path, model_dir, capsys):
    with pytest.raises(convert.UsageError, match="no config.json"):
        convert.check_model_dir(tmp_path, 1024)
    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(convert.UsageError, match="no \\*.safetensors"):
        convert.check_model_dir(tmp_path, 1024)
    (tmp_path / "model.safetensors").write_bytes(b"")
    cfg = convert.check_model_dir(tmp_path, 1024)  # the real Qwen2-Audio config, defaults filled in
    assert cfg["text_config"]["hidden_size"] == 4096 and cfg["audio_config"]["max_source_positions"] == 1500
    convert.check_model_dir(tmp_path, 599)  # the existing port's SEQLEN: allowed, with a warning
    assert "about 19 s of audio" in capsys.readouterr().err
    convert.check_model_dir(tmp_path, 1024)
    assert capsys.readouterr().err == ""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(convert.UsageError, match="model_type is 'qwen2'"):
        convert.check_model_dir(tmp_path, 1024)


def test_net_names_from_model_tool_info():
    info = (FIXTURE / "tiny-qwen2-audio.bmodel.json").read_text()  # not model_tool output: must be refused
    with pytest.raises(RuntimeError, match="could not read net names"):
        convert.net_names(info)
    text = ("bmodel version: B.2.2\nchip: BM1684X\n=====\nnet 0: [audio]  static\n------------\n"
            "stage 0, core num: 1\n=====\nnet 1: [block_cache_0]  static\naddr mode: 1\n")
    assert convert.net_names(text) == ["audio", "block_cache_0"]
    assert convert.dynamic_nets(text) == []
    assert convert.dynamic_nets(text + "net 2: [greedy_head]  dynamic\n") == ["greedy_head"]


# ---------------------------------------------------------------- the tiny fixture


def test_fixture_tokenizer_special_tokens_match_config():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    cfg, gen = _json("config.json"), _json("generation_config.json")
    ids = {t: tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>",
                                           "<|audio_bos|>", "<|audio_eos|>")}
    assert None not in ids.values()
    assert ids["<|AUDIO|>"] == cfg["audio_token_index"]
    assert set(gen["eos_token_id"]) == {ids["<|endoftext|>"], ids["<|im_end|>"]}
    assert gen["pad_token_id"] == ids["<|endoftext|>"]
    assert tok.get_vocab_size() <= cfg["text_config"]["vocab_size"] < 1000
    tcfg = _json("tokenizer_config.json")
    assert {v["content"] for v in tcfg["added_tokens_decoder"].values()} == set(ids)
    assert all(int(k) == ids[v["content"]] for k, v in tcfg["added_tokens_decoder"].items())


def test_fixture_reference_is_consistent():
    ref, cfg = _json("reference.json"), _json("config.json")
    audio_id = cfg["audio_token_index"]
    seqlen = sidecar.read_sidecar(BMODEL)["seqlen"]
    assert len(ref["clips"]) >= 2
    for clip in ref["clips"]:
        conv = (clip["n_valid_frames"] - 1) // 2 + 1
        assert clip["n_audio_tokens"] == (conv - 2) // 2 + 1 == clip["input_ids"].count(audio_id)
        assert len(clip["tokens"]) == len(clip["steps"]) == ref["max_new_tokens"] or clip["finish"] == "stop"
        assert [s["top1"] for s in clip["steps"]] == clip["tokens"]
        assert all(s["margin"] >= 0 for s in clip["steps"])
        assert len(clip["input_ids"]) + len(clip["tokens"]) <= seqlen
        assert clip["n_samples"] <= 2 * 16000


@pytest.fixture(scope="module")
def hf_tiny():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    processor = transformers.AutoProcessor.from_pretrained(FIXTURE)
    model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(FIXTURE, dtype=torch.float32).eval()
    return processor, model


def _clip_samples(audio_dir: Path, clip: dict) -> np.ndarray:
    import soundfile as sf

    data, sr = sf.read(str(audio_dir / clip["audio_filepath"]), dtype="float32", always_2d=True)
    assert sr == 16000
    start = int(round(clip["offset"] * sr))
    n = len(data) - start if clip["duration"] is None else int(round(clip["duration"] * sr))
    return data[start:start + n].mean(axis=1)


def test_fixture_processor_rebuilds_the_reference_prompt(hf_tiny, audio_dir):
    processor, _ = hf_tiny
    ref = _json("reference.json")
    for clip in ref["clips"]:
        samples = _clip_samples(audio_dir, clip)
        assert samples.size == clip["n_samples"]
        inputs = processor(text=ref["prompt"], audio=samples, sampling_rate=16000, return_tensors="np")
        assert inputs["input_ids"][0].tolist() == clip["input_ids"]
        assert int(inputs["feature_attention_mask"].sum()) == clip["n_valid_frames"]
        feats = inputs["input_features"].astype(np.float64)
        assert inputs["input_features"].shape == (1, 128, 200)
        assert feats.mean() == pytest.approx(clip["features"]["mean"], abs=1e-5)
        assert feats.std() == pytest.approx(clip["features"]["std"], abs=1e-5)


def test_fixture_reference_tokens_reproduce_with_this_transformers(hf_tiny, audio_dir):
    """The reference was recorded in the compile venv's transformers; this venv's must give the same greedy run."""
    import torch

    processor, model = hf_tiny
    ref = _json("reference.json")
    for clip in ref["clips"]:
        inputs = processor(text=ref["prompt"], audio=_clip_samples(audio_dir, clip), sampling_rate=16000,
                           return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=ref["max_new_tokens"], do_sample=False,
                                 eos_token_id=ref["stop_token_ids"], pad_token_id=ref["stop_token_ids"][-1],
                                 repetition_penalty=1.0, top_k=None, top_p=None, temperature=None,
                                 output_logits=True, return_dict_in_generate=True)
        tokens = out.sequences[0, len(clip["input_ids"]):].tolist()
        assert tokens == clip["tokens"], clip["audio_filepath"]
        for step, logits in zip(clip["steps"], out.logits):
            top = torch.topk(logits[0], 2).values
            assert float(top[0] - top[1]) == pytest.approx(step["margin"], abs=1e-3)


def test_fixture_tokenizer_is_what_the_script_builds(data_dir):
    """make_tiny_fixture.py's tokenizer (trained on the texts of tests/data/audio/manifest.jsonl) is the committed one."""
    make = _load("make_tiny_fixture")
    tok = make.build_tokenizer(data_dir)
    committed = json.loads((FIXTURE / "tokenizer.json").read_text())
    built = json.loads(tok.to_str())
    assert built["model"]["vocab"] == committed["model"]["vocab"]
    assert built["model"]["merges"] == committed["model"]["merges"]
    assert [t["content"] for t in built["added_tokens"]] == [t["content"] for t in committed["added_tokens"]]
    assert make.SPECIAL_TOKENS == [t["content"] for t in committed["added_tokens"]]


def test_convert_build_folder_stays_out_of_the_checkpoint(tmp_path):
    model = tmp_path / "ckpt"
    model.mkdir()
    assert convert.build_dir(None, tmp_path / "out" / "m.bmodel", model) == tmp_path / "out" / "m.work"
    inside = convert.build_dir(None, model / "m.bmodel", model)  # tpu-mlir refuses to build in the model folder
    try:
        assert model not in inside.parents and inside.is_dir()
    finally:
        inside.rmdir()
    with pytest.raises(convert.UsageError, match="inside the checkpoint folder"):
        convert.build_dir(model / "w", tmp_path / "m.bmodel", model)
    # tpu-mlir tests the build folder with a string prefix: ckpt-b4/ counts as inside ckpt/ for it
    sibling = convert.build_dir(None, tmp_path / "ckpt-b4" / "m.bmodel", model)
    try:
        assert not str(sibling).startswith(str(model)) and sibling.is_dir()
    finally:
        sibling.rmdir()
    with pytest.raises(convert.UsageError, match="starts with"):
        convert.build_dir(tmp_path / "ckpt-work", tmp_path / "m.bmodel", model)
    assert convert.build_dir(tmp_path / "w", tmp_path / "m.bmodel", model) == tmp_path / "w"


def test_port_layout_fixture_is_there_and_small():
    port = REPO / "tests" / "fixtures" / "tiny-qwen2-audio-port" / "tiny-qwen2-audio-port.bmodel"
    assert 0 < port.stat().st_size < 1_000_000
    assert not sidecar.sidecar_path(port).exists()  # like the port's own bmodels


def test_batched_fixture_is_the_same_model_with_four_decode_rows():
    b4 = REPO / "tests" / "fixtures" / "tiny-qwen2-audio-b4" / "tiny-qwen2-audio-b4.bmodel"
    data = sidecar.read_sidecar(b4)
    assert data["bmodel_sha256"] == sidecar.sha256_file(b4) and b4.stat().st_size < 1_000_000
    assert sidecar.batch_of(data) == 4 and sidecar.batch_of(sidecar.read_sidecar(BMODEL)) == 1
    one = sidecar.read_sidecar(BMODEL)
    same = ("model_id", "seqlen", "hidden_size", "vocab_size", "num_layers", "quantization", "lm_head", "nets",
            "audio_token_index", "mel_frames")
    assert {k: data[k] for k in same} == {k: one[k] for k in same}
