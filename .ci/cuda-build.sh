#!/usr/bin/env bash
# Compiles ctnode's CUDA operators (csrc/ops/cuda/*.cu) without a GPU, against a CUDA build of torch.
#
# A second venv holds torch==2.14.1 (CUDA) from local disk; the extension is
# built out of tree (nothing in the checkout changes), then loaded to check
# that CUDA kernels are registered for every ctnode operator. Nothing runs on
# a GPU. Usage: .ci/cuda-build.sh   (env: CUDA_VENV, CUDA_BUILD_DIR, MAX_JOBS)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${CUDA_VENV:-/tmp/cuda-venv}
out=${CUDA_BUILD_DIR:-/tmp/ctnode-cuda-build}

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, ninja" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.14.1 ninja setuptools wheel
fi

export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
export MAX_JOBS=${MAX_JOBS:-1}
test -x "$CUDA_HOME/bin/nvcc" || { echo "cuda-build: nvcc not found under CUDA_HOME=$CUDA_HOME" >&2; exit 1; }
CPATH=$(ls -d "$venv"/lib/python3.11/site-packages/nvidia/*/include | tr '\n' ':')
export CPATH

"$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'cuda-build: $venv has a CPU-only torch')"

start=$(date +%s)
cd "$repo"
"$venv/bin/python" setup.py -q build_ext --build-temp "$out/temp" --build-lib "$out/lib"
echo "cuda-build: compiled in $(( $(date +%s) - start )) s"

CTNODE_CUDA_LIB="$out/lib" "$venv/bin/python" - <<'PY'
import glob
import importlib.util
import os

import torch

path = glob.glob(os.path.join(os.environ["CTNODE_CUDA_LIB"], "detector", "ops", "_C*.so"))[0]
spec = importlib.util.spec_from_file_location("detector.ops._C", path)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
ops = ["deform_conv2d", "_deform_conv2d_backward", "nms"]
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"ctnode::{op}", "CUDA")]
if missing:
    raise SystemExit(f"cuda-build: no CUDA kernel registered for {missing}")
print(f"cuda-build: {path} registers CUDA kernels for {', '.join(ops)}")
PY
