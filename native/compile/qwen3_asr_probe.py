#!/usr/bin/env python3
"""Compile a Qwen3-ASR checkpoint with tpu-mlir 1.30.2's own `Qwen3AsrConverter` and report the bmodel's nets.

A probe, not the supported path: `convert.py` compiles Qwen3-ASR with our own converter (qwen3_asr_converter.py:
a windowed, masked audio net the runtime drives window by window; README §7 says why tpu-mlir's is not token-exact).
This records what tpu-mlir's own converter makes of a Qwen3-ASR checkpoint (net names, shapes, dtypes), for
comparison. Run with the compile venv's python:

    ~/.cache/transcribe-batch/tpu-mlir-venv/bin/python native/compile/qwen3_asr_probe.py MODEL_DIR -o out.bmodel \\
        [-q f16] [--seqlen 256]

MODEL_DIR: a Qwen3-ASR folder (config.json with model_type qwen3_asr and thinker_config, *.safetensors), e.g. the
tiny fixture tests/fixtures/tiny-qwen3-asr. The config is read as plain JSON (tpu-mlir's `Config`
wrapper), so neither qwen-asr nor a transformers that knows qwen3_asr is needed in the compile venv. Writes the
bmodel and `<bmodel>.nets.json` (model_tool --info, parsed).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import convert  # noqa: E402  (argument set, tpu-mlir environment, model_tool parsing)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("-q", "--quantize", default="f16", choices=["bf16", "f16", "w8bf16", "w8f16", "w4bf16", "w4f16"])
    ap.add_argument("-g", "--q-group-size", type=int, default=64)
    ap.add_argument("-s", "--seqlen", type=int, default=256)
    ap.add_argument("-c", "--chip", default="bm1684x")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    # the attributes convert.converter_args reads
    args.num_core, args.symmetric, args.lm_head, args.debug = 0, False, "greedy", False
    return args


def io_table(info: str) -> dict:
    """{net: {"inputs": [{name, shape, dtype}], "outputs": [...]}} from `model_tool --info` (one stage per net)."""
    nets, current = {}, None
    for line in info.splitlines():
        m = re.match(r"^net\s+\d+:\s*\[([^\]]+)\]", line)
        if m:
            current = nets.setdefault(m.group(1), {"inputs": [], "outputs": []})
            continue
        m = re.match(r"^\s*(input|output):\s*([^,]+),\s*\[([\d,\s]+)\],\s*(\w+)", line)
        if m and current is not None:
            current[m.group(1) + "s"].append({"name": m.group(2).strip(), "dtype": m.group(4),
                                              "shape": [int(x) for x in m.group(3).split(",")]})
    return nets


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not convert.tpu_env_ready():
        convert.os.environ[convert._ENV_MARK] = "1"
        convert.os.environ["PATH"] = convert.os.pathsep.join([convert.os.path.dirname(sys.executable),
                                                              convert.os.environ.get("PATH", "")])
        import tpu_mlir  # noqa: F401
        convert.os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv])
    import tpu_mlir  # noqa: F401
    from llm.Qwen3AsrConverter import Qwen3AsrConverter
    from llm.transformers_compat import Config

    config = json.loads((args.model_dir / "config.json").read_text())
    if config.get("model_type") != "qwen3_asr" or "thinker_config" not in config:
        sys.exit(f"error: {args.model_dir / 'config.json'}: expected model_type qwen3_asr with a thinker_config")
    output = args.output.resolve()
    # not "<model>.work": tpu-mlir refuses a build folder whose path starts with the model folder's path
    work = (args.work or output.parent / f"build-{output.stem}").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.monotonic()
    conv = Qwen3AsrConverter(convert.converter_args(args, work), Config(config))
    conv.run()
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(conv.out_bmodel, output)
    info = subprocess.run(["model_tool", "--info", str(output)], check=True, capture_output=True, text=True).stdout
    nets = io_table(info)
    output.with_name(output.name + ".nets.json").write_text(json.dumps(
        {"bmodel": output.name, "bmodel_bytes": output.stat().st_size, "seqlen": args.seqlen,
         "quantization": args.quantize, "nets": nets,
         "tools": {**convert.tool_versions(), "converter": "native/compile/qwen3_asr_probe.py (tpu-mlir Qwen3AsrConverter)"}}, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(info)
    print(f"wrote {output} ({output.stat().st_size} bytes) in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
