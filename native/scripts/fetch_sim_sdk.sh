#!/usr/bin/env bash
# Fetch the BM1684X cmodel simulator runtime (libbmrt + simulator libbmlib + libcmodel) from the tpu-mlir
# wheel on PyPI, without installing tpu-mlir. Result: DEST/lib/*.so*, DEST/include/bmlib_runtime.h.
# Idempotent: returns at once when DEST is complete; the downloaded wheel is cached next to DEST.
set -euo pipefail

VERSION="${TPU_MLIR_VERSION:-1.30.2}"
DEST="${1:-$HOME/.cache/transcribe-batch/sim-sdk-$VERSION}"
CACHE="${TRANSCRIBE_BATCH_WHEEL_CACHE:-$(dirname "$DEST")/wheels}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# a Python with pip, for `pip download` only (the project venv if there is one; Debian's python3 may lack pip)
if [ -z "${PYTHON:-}" ]; then
  for p in "$REPO/.venv/bin/python" python3 python; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -m pip --version >/dev/null 2>&1; then PYTHON="$p"; break; fi
  done
fi
if [ -z "${PYTHON:-}" ]; then
  echo "fetch_sim_sdk: no Python with pip found (set PYTHON=/path/to/python)" >&2
  exit 1
fi
STAMP="$DEST/.complete-$VERSION"

if [ -f "$STAMP" ]; then
  echo "simulator SDK ready: $DEST"
  exit 0
fi

if [ "$(uname -m)" != "x86_64" ]; then
  echo "fetch_sim_sdk: the cmodel simulator in the tpu-mlir wheel is x86_64-only (this is $(uname -m))." >&2
  echo "On a BM1684X SoC or an aarch64 host with a card, build against libsophon instead:" >&2
  echo "  LIBSOPHON_ROOT=/opt/sophon/libsophon-current pip install ./native" >&2
  exit 1
fi

mkdir -p "$CACHE"
WHEEL="$(ls "$CACHE"/tpu_mlir-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$WHEEL" ]; then
  echo "downloading tpu-mlir==$VERSION wheel (~312 MB) into $CACHE"
  "$PYTHON" -m pip download -q --no-deps --python-version 3.10 --only-binary=:all: \
    --dest "$CACHE" "tpu-mlir==$VERSION"
  WHEEL="$(ls "$CACHE"/tpu_mlir-"$VERSION"-*.whl | head -n1)"
fi

TMP="$(mktemp -d "${DEST%/}.tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# Libraries needed to run bmodels on the simulator. libbmrt/libbmlib need only libc/libstdc++ beyond these
# (checked with readelf -d); libcmodel_bm1684x needs nothing from the wheel either.
LIBS=(libbmrt.so.1.0 libbmlib.so.0 libcmodel_bm1684x.so)
HEADER=tpu_mlir/cross_toolchains/ppl_compile/deps/runtime/bmlib/include/bmlib_runtime.h

"$PYTHON" - "$WHEEL" "$TMP" "$HEADER" "${LIBS[@]}" <<'PY'
import sys, zipfile, os, shutil
wheel, out, header, *libs = sys.argv[1:]
os.makedirs(f"{out}/lib"); os.makedirs(f"{out}/include")
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    wanted = {f"tpu_mlir/lib/{l}": f"{out}/lib/{l}" for l in libs}
    wanted[header] = f"{out}/include/bmlib_runtime.h"
    for src, dst in wanted.items():
        if src not in names:
            sys.exit(f"fetch_sim_sdk: {src} not found in {wheel}")
        with z.open(src) as f, open(dst, "wb") as g:
            shutil.copyfileobj(f, g)
PY

cd "$TMP/lib"
ln -sf libbmrt.so.1.0 libbmrt.so.1
ln -sf libbmrt.so.1 libbmrt.so
ln -sf libbmlib.so.0 libbmlib.so
# the simulator libbmlib dlopens "libcmodel.so"
cp libcmodel_bm1684x.so libcmodel.so
cd - >/dev/null

# any DT_NEEDED library that is neither shipped here nor found on the system is a broken SDK
if command -v ldd >/dev/null; then
  missing="$(LD_LIBRARY_PATH="$TMP/lib" ldd "$TMP"/lib/*.so* 2>/dev/null | grep 'not found' | sort -u || true)"
  if [ -n "$missing" ]; then
    echo "fetch_sim_sdk: unresolved libraries:" >&2; echo "$missing" >&2; exit 1
  fi
fi

rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
touch "$STAMP"
echo "simulator SDK ready: $DEST"
