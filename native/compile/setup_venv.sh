#!/usr/bin/env bash
# Build the tpu-mlir compile environment: a Python 3.10 venv with tpu-mlir (the
# wheel bundles model_transform.py, model_deploy.py, model_tool and llm_convert.py),
# torch, transformers and the few extras the converters import.
# Usage: native/compile/setup_venv.sh [DIR]   (default ~/.cache/transcribe-batch/tpu-mlir-venv)
# On success DIR/READY exists; rerunning on a READY venv is a no-op.
set -euo pipefail

DIR="${1:-${HOME}/.cache/transcribe-batch/tpu-mlir-venv}"
TPU_MLIR_VERSION="${TPU_MLIR_VERSION:-1.30.2}"

if [[ -f "$DIR/READY" ]]; then
    echo "tpu-mlir venv ready: $DIR"
    exit 0
fi

find_python310() {
    local c
    for c in "${PYTHON310:-}" python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10 \
             "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
        [[ -n "$c" ]] || continue
        if command -v "$c" >/dev/null 2>&1 && \
           "$c" -c 'import sys, venv; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

PY="$(find_python310)" || {
    echo "error: tpu-mlir ${TPU_MLIR_VERSION} wheels need CPython 3.10; none found (set PYTHON310=/path/to/python3.10)" >&2
    exit 1
}
echo "using $PY"

# GNU parallel: tpu-mlir's model_deploy/llm_convert run per-net compiles through it.
if ! command -v parallel >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq parallel
    else
        echo "warning: GNU parallel not installed; install it before compiling" >&2
    fi
fi

"$PY" -m venv "$DIR"
PIP=("$DIR/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip wheel
# The [torch,onnx] extras pin the torch/onnx/onnxruntime/onnxsim versions this tpu-mlir
# release was built against; protobuf must stay at the wheel's 3.20.3 and setuptools
# below 70 (tpu_mlir/__init__.py imports pkg_resources, which newer setuptools dropped).
"${PIP[@]}" install "tpu-mlir[torch,onnx]==${TPU_MLIR_VERSION}" "setuptools<70"
# psutil is imported by tpu-mlir's tools but not declared; soundfile/soxr read and
# resample audio for the fixture's reference clips.
"${PIP[@]}" install psutil soundfile soxr safetensors "protobuf==3.20.3" "setuptools<70"

SITE="$("$DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# The wheel ships its own glibc pieces in lib/third_party; on hosts with a newer glibc
# they are loaded first and crash every tool ("GLIBC_PRIVATE" / symbol lookup errors).
TP="$SITE/tpu_mlir/lib/third_party"
if [[ -d "$TP" ]]; then
    mkdir -p "$TP/moved-aside"
    for f in libc.so.6 libm.so.6 libpthread.so.0; do
        if [[ -e "$TP/$f" ]]; then mv "$TP/$f" "$TP/moved-aside/$f"; fi
    done
fi

# Smoke test: the tools must start.
usage="$("$DIR/bin/model_tool" 2>&1 || true)"  # prints its usage and exits 1 when given no arguments
[[ "$usage" == *"--combine"* ]] || { echo "error: model_tool does not start: $usage" >&2; exit 1; }
"$DIR/bin/python" -c 'import tpu_mlir, torch, transformers; print("tpu_mlir", tpu_mlir.__file__); print("torch", torch.__version__, "transformers", transformers.__version__)'
"$DIR/bin/python" -c 'import tpu_mlir, llm.LlmConverter; print("llm converters import")'
touch "$DIR/READY"
echo "tpu-mlir venv ready: $DIR"
