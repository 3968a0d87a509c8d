#!/usr/bin/env python3
"""Run tpu-mlir's OWN `llm_convert.py` on a Qwen3-ASR checkpoint: the layout of Sophgo's prebuilt
`qwen3-asr-*_bf16_seq512_bm1684x_1dev` bmodels (LLM-TPU models/Qwen3_ASR), reproduced with tpu-mlir 1.30.2.

Sophgo built its bmodel with `llm_convert.py -m Qwen3-ASR-1.7B -s 512 --max_input_length 256 --quantize bf16
-c bm1684x --qwen_asr` (a v1.27 beta). In 1.30.2 the model type picks the converter (`--qwen_asr` is gone) and two
things stop `llm_convert.py` from building Qwen3-ASR at all; this wrapper works around exactly those and changes
nothing else (the converter, its nets, their options and the compile are tpu-mlir's):

- `llm_convert.py` passes `loader=SafetensorsModelHandle(path)` to every converter, but `Qwen3AsrConverter.__init__`
  takes `(args, config)` only: `TypeError: ... unexpected keyword argument 'loader'`. The wrapper drops the
  argument; `LlmConverter.load_pretrained` then builds the same `SafetensorsModelHandle(model_path)` itself.
- for a model path containing both "qwen" and "asr" it runs `import qwen_asr` (to register qwen-asr's config with
  transformers' AutoConfig, which 1.30.2's JSON config reader no longer uses). qwen-asr is not needed in the
  compile venv: an empty module stands in for that import.

Usage (the compile venv; the arguments are llm_convert.py's own, passed through unchanged):

    ~/.cache/transcribe-batch/tpu-mlir-venv/bin/python native/compile/llm_convert_qwen3_asr.py \\
        -m /models/Qwen3-ASR-1.7B -s 512 --max_input_length 256 -q bf16 -c bm1684x -o out/

Writes what llm_convert.py writes: `out/<name>_<q>_seq<S>_bm1684x_1dev_static_<timestamp>.bmodel` and `out/config/`.
native/compile/README.md §8 describes the nets; the runner's `bm1684x` engine runs them (layout "tpu-mlir").
"""

from __future__ import annotations

import os
import runpy
import sys
import types


def main() -> None:
    try:
        import tpu_mlir
    except ImportError:
        sys.exit("error: tpu_mlir is not importable by this Python. Use the compile venv's python "
                 "(native/compile/setup_venv.sh: ~/.cache/transcribe-batch/tpu-mlir-venv/bin/python)")
    root = os.path.dirname(tpu_mlir.__file__)
    sys.path.insert(0, os.path.join(root, "python"))
    # tpu-mlir's tools are `#!/usr/bin/env python3` scripts started by llm_convert: this venv's python first
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    sys.modules.setdefault("qwen_asr", types.ModuleType("qwen_asr"))
    from llm.Qwen3AsrConverter import Qwen3AsrConverter

    init = Qwen3AsrConverter.__init__

    def init_without_loader(self, args, config, loader=None):
        init(self, args, config)

    Qwen3AsrConverter.__init__ = init_without_loader
    tool = os.path.join(root, "python", "tools", "llm_convert.py")
    sys.argv = [tool, *sys.argv[1:]]
    runpy.run_path(tool, run_name="__main__")


if __name__ == "__main__":
    main()
