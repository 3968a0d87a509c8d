#!/usr/bin/env python3
"""Compile a Hugging Face audio-LLM checkpoint folder (Qwen2-Audio or Qwen3-ASR, picked by config.json
`model_type`) into ONE BM1684X/BM1688 .bmodel plus its JSON sidecar.

Run with the compile venv's Python (native/compile/setup_venv.sh makes it):
    ~/.cache/transcribe-batch/tpu-mlir-venv/bin/python native/compile/convert.py \\
        /models/Qwen2-Audio-7B-Instruct -o qwen2-audio-7b_w4bf16_seq1024.bmodel -q w4bf16 --seqlen 1024
    ~/.cache/transcribe-batch/tpu-mlir-venv/bin/python native/compile/convert.py \\
        /models/Qwen3-ASR-1.7B -o qwen3-asr-1.7b_w4bf16_seq1024.bmodel -q w4bf16 --seqlen 1024

Nets: embedding [1,SEQ], embedding_cache [1,1], block_i / block_cache_i per text layer, lm_head (greedy argmax
fused, or logits + a static greedy_head with --lm-head logits), and audio (the family's encoder: Qwen2-Audio's
30 s window + pool + projector, or one Qwen3-ASR attention window of chunks). All static. With --batch B the decode
nets take B rows (see audio_llm_converter.py). See native/compile/README.md for the I/O of each net.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUANTIZATIONS = ("bf16", "f16", "w8bf16", "w8f16", "w4bf16", "w4f16")
CHIPS = ("bm1684x", "bm1688")
_ENV_MARK = "TRANSCRIBE_BATCH_TPU_ENV"
_WORK_MARK = ".convert-work"
PROMPT_RESERVE = 128  # chat template + instruction (~50 tokens for the real tokenizer) + answer room
FAMILIES = {  # config.json model_type -> (converter module, class, audio tokens per second)
    "qwen2_audio": ("qwen2_audio_converter", "Qwen2AudioConverter", 25),
    "qwen3_asr": ("qwen3_asr_converter", "Qwen3AsrConverter", 13),
}


class UsageError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert.py",
        description="Compile a Qwen2-Audio or Qwen3-ASR checkpoint folder into one .bmodel (+ <name>.bmodel.json "
                    "sidecar). "
                    "Run it with the compile venv's python (native/compile/setup_venv.sh).")
    p.add_argument("model_dir", type=Path, help="HF checkpoint folder (config.json + *.safetensors)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .bmodel path")
    p.add_argument("-q", "--quantize", default="w4bf16", choices=QUANTIZATIONS,
                   help="weights of the text layers (default w4bf16); embeddings, lm_head and the audio net stay in the half-precision type")
    p.add_argument("-g", "--q-group-size", type=int, default=64,
                   help="group size for w4/w8 weights (default 64; 0 = per channel); ignored for bf16/f16")
    p.add_argument("-s", "--seqlen", type=int, default=1024,
                   help="KV slots = prompt + audio tokens + answer (default 1024: fits a 30 s window of 750 audio tokens; the existing port used 599)")
    p.add_argument("-b", "--batch", type=int, default=1,
                   help="decode rows B (default 1): the decode nets (embedding_cache, block_cache_i, lm_head) run B "
                        "sequences per launch, each with its own position, mask and K/V history; the audio net and "
                        "the prefill stay one sequence. The runtime keeps B requests in flight")
    p.add_argument("-c", "--chip", default="bm1684x", choices=CHIPS, help="target chip (default bm1684x)")
    p.add_argument("--lm-head", choices=("greedy", "logits"), default="greedy",
                   help="greedy (default): lm_head returns the argmax id; logits: lm_head returns f32 scores and a greedy_head net argmaxes them")
    p.add_argument("--do_sample", dest="lm_head", action="store_const", const="logits",
                   help="same as --lm-head logits (llm_convert's spelling)")
    p.add_argument("--symmetric", action="store_true", help="symmetric w4/w8 quantization")
    p.add_argument("--num-core", type=int, default=0, help="cores per net (bm1688: 1 or 2; 0 = chip default)")
    p.add_argument("--kernel-remove", action="store_true",
                   help="strip the kernel module from the bmodel (static nets run without it; saves ~5 MB)")
    p.add_argument("--model-id", default=None, help="model id recorded in the sidecar (default: folder name)")
    p.add_argument("--work", type=Path, default=None, help="build folder (default <output>.work; a temp folder if that is inside the checkpoint)")
    p.add_argument("--keep-work", action="store_true", help="keep the build folder (mlir, per-net bmodels, logs)")
    p.add_argument("--debug", action="store_true", help="tpu-mlir debug mode (keeps intermediates)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except UsageError as e:
        parser.error(str(e))
    return args


def check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.batch <= 256:
        raise UsageError(f"--batch {args.batch} must be between 1 and 256")
    if args.seqlen < 16:
        raise UsageError(f"--seqlen {args.seqlen} is too small (at least 16; 1024 fits a 30 s window)")
    if args.quantize.startswith("w"):
        g = args.q_group_size
        if g < 0 or (g and (g & (g - 1) or g < 32)):
            raise UsageError(f"--q-group-size {g} must be 0 (per channel) or a power of two >= 32")
    if args.chip == "bm1684x" and args.num_core not in (0, 1):
        raise UsageError("--num-core: bm1684x has one core")
    if args.output.suffix != ".bmodel":
        raise UsageError(f"--output {args.output} must end in .bmodel")


def check_model_dir(model_dir: Path, seqlen: int) -> dict:
    """Read config.json and check it is a model family we compile, with weights, that fits seqlen. Qwen2-Audio's
    config gets transformers' defaults filled in; Qwen3-ASR's is read as plain JSON (the compile venv's transformers
    does not know `qwen3_asr`, and qwen-asr's layout names every field the converter reads)."""
    import json

    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise UsageError(f"{model_dir}: no config.json (expected a Hugging Face Qwen2-Audio or Qwen3-ASR checkpoint "
                         "folder)")
    if not any(model_dir.glob("*.safetensors")):
        raise UsageError(f"{model_dir}: no *.safetensors weights")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{cfg_path}: not valid JSON ({e})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in FAMILIES:
        raise UsageError(f"{cfg_path}: model_type is {model_type!r}, expected one of {', '.join(FAMILIES)}")
    if model_type == "qwen3_asr":
        if not isinstance(raw.get("thinker_config"), dict) or "audio_config" not in raw["thinker_config"]:
            raise UsageError(f"{cfg_path}: no thinker_config.audio_config (expected qwen-asr's Qwen3-ASR layout)")
        config = raw
        rows = 0  # no audio window: a request's audio is bounded by SEQLEN only
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir).to_dict()
        rows = config["audio_config"]["max_source_positions"] // 2
    per_s = FAMILIES[model_type][2]
    if seqlen < rows + PROMPT_RESERVE or not rows:
        seconds = max(0, seqlen - PROMPT_RESERVE) / per_s
        if rows:
            print(f"warning: --seqlen {seqlen} holds less than one full audio window ({rows} audio tokens + a "
                  f"prompt and answer): requests will be limited to about {seconds:.0f} s of audio and longer clips "
                  "split", file=sys.stderr)
        else:
            print(f"note: --seqlen {seqlen} holds about {seconds:.0f} s of audio per request ({per_s} audio tokens "
                  f"per second + {PROMPT_RESERVE} for the prompt and answer); longer clips are split at pauses",
                  file=sys.stderr)
    return config


def _inside(path: Path, model_dir: Path) -> bool:
    """True when tpu-mlir would refuse to build in `path`: it tests the build folder with a plain string prefix
    (`config_dir.startswith(model_path)`), so a sibling such as <model>-b4/ counts as inside <model>/."""
    return path == model_dir or model_dir in path.parents or str(path).startswith(str(model_dir))


def build_dir(work: Path | None, output: Path, model_dir: Path) -> Path:
    """--work, else <output>.work, else (when that lies inside the checkpoint folder, or its path merely starts with
    the checkpoint folder's) a temporary folder: tpu-mlir refuses to build inside the model folder."""
    model_dir = model_dir.resolve()
    if work is not None:
        work = work.resolve()
        if _inside(work, model_dir):
            raise UsageError(f"--work {work} lies inside the checkpoint folder {model_dir} (or its path starts with "
                             "the checkpoint folder's, which tpu-mlir refuses too)")
        return work
    work = output.resolve().with_suffix(".work")
    if _inside(work, model_dir):
        import tempfile

        return Path(tempfile.mkdtemp(prefix=output.stem + ".", suffix=".work"))
    return work


def tpu_env_ready() -> bool:
    return os.environ.get(_ENV_MARK) == "1"


def reexec_in_tpu_env(argv: list[str]) -> None:
    """`import tpu_mlir` sets PATH/PYTHONPATH/LD_LIBRARY_PATH for child processes only; restart ourselves in it."""
    try:
        import tpu_mlir  # noqa: F401
    except ImportError:
        sys.exit("error: tpu_mlir is not importable by this Python. Run convert.py with the compile venv's python "
                 "(native/compile/setup_venv.sh makes it: ~/.cache/transcribe-batch/tpu-mlir-venv/bin/python)")
    os.environ[_ENV_MARK] = "1"
    # tpu-mlir's tools are `#!/usr/bin/env python3` scripts: they must find this venv's python first.
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *argv])


def converter_args(args: argparse.Namespace, out_dir: Path) -> argparse.Namespace:
    """The attribute set tpu-mlir's LlmConverter reads (mirrors llm_convert.py's parser defaults)."""
    return argparse.Namespace(
        model_path=str(args.model_dir.resolve()), seq_length=args.seqlen, quantize=args.quantize,
        q_group_size=args.q_group_size if args.quantize.startswith("w") else 0, chip=args.chip, num_device=1,
        distribute_strategy="tp", num_core=args.num_core, batch=args.batch, lora_max_rank=0,
        symmetric=args.symmetric,
        embedding_disk=False, do_sample=args.lm_head == "logits", use_history_kv=False, max_input_length=0,
        chunk_length=0, max_pixels=None, max_shape=None, audio_length=0, dynamic=False, debug=args.debug,
        gen_test_input=False, only_mlir=False, rvti=False, again=False, out_dir=str(out_dir), mmproj=None)


def net_names(info_text: str) -> list[str]:
    """Net names from `model_tool --info` output."""
    names = re.findall(r"^net\s+\d+:\s*\[([^\]]+)\]", info_text, flags=re.M)
    if not names:
        raise RuntimeError("could not read net names from model_tool --info output:\n" + info_text[:2000])
    return names


def dynamic_nets(info_text: str) -> list[str]:
    return re.findall(r"^net\s+\d+:\s*\[([^\]]+)\]\s+dynamic", info_text, flags=re.M)


def tool_versions() -> dict:
    import importlib.metadata as md

    out = {"converter": "native/compile/convert.py"}
    for dist, key in (("tpu_mlir", "tpu_mlir"), ("transformers", "transformers"), ("torch", "torch")):
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            out[key] = None
    return out


def compile_bmodel(args: argparse.Namespace) -> dict:
    """Run the conversion; returns the sidecar dict. Assumes the tpu-mlir environment is active."""
    import sidecar
    from llm.transformers_compat import Config
    import importlib

    from audio_llm_converter import AUDIO_MASK_VALUE
    from llm.ModelHandle import SafetensorsModelHandle

    config = check_model_dir(args.model_dir, args.seqlen)
    output = args.output.resolve()
    work = build_dir(args.work, output, args.model_dir)
    if work.exists() and any(work.iterdir()):
        if not (work / _WORK_MARK).exists():
            raise UsageError(f"build folder {work} exists and is not one of ours: pass an empty or new --work")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / _WORK_MARK).write_text("made by native/compile/convert.py; deleted and rebuilt on the next run\n")
    t0 = time.monotonic()
    module, cls, _ = FAMILIES[config["model_type"]]
    converter = getattr(importlib.import_module(module), cls)
    conv = converter(converter_args(args, work), Config(config),
                     loader=SafetensorsModelHandle(str(args.model_dir.resolve())))
    conv.run()
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(conv.out_bmodel, output)
    info = subprocess.run(["model_tool", "--info", str(output)], check=True, capture_output=True, text=True).stdout
    dynamic = dynamic_nets(info)
    if args.kernel_remove and dynamic:
        # e.g. tpu-mlir compiles the logits head's greedy_head (TopK) as a dynamic net
        print(f"warning: keeping the kernel module: dynamic net(s) {', '.join(dynamic)} need it", file=sys.stderr)
    elif args.kernel_remove:
        subprocess.run(["model_tool", "--kernel_remove", str(output)], check=True, stdout=subprocess.DEVNULL)
        info = subprocess.run(["model_tool", "--info", str(output)], check=True, capture_output=True,
                              text=True).stdout
    data = sidecar.build_sidecar(
        output, config, model_id=args.model_id or args.model_dir.resolve().name, seqlen=args.seqlen,
        max_input_length=conv.max_input_length, quantization=args.quantize,
        q_group_size=args.q_group_size if args.quantize.startswith("w") else None, lm_head=args.lm_head,
        chip=args.chip, nets=net_names(info), tools=tool_versions(), audio_mask_value=AUDIO_MASK_VALUE,
        batch=args.batch, token_logprob="head")
    sidecar.write_sidecar(output, data)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print(info)
    print(f"wrote {output} ({output.stat().st_size} bytes) and {sidecar.sidecar_path(output).name} "
          f"in {time.monotonic() - t0:.1f} s")
    return data


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not tpu_env_ready():
        reexec_in_tpu_env(argv)  # does not return
    sys.path.insert(0, str(HERE))
    import tpu_mlir  # noqa: F401  (adds tpu-mlir's python folders to sys.path)
    try:
        compile_bmodel(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
