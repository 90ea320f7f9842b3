#!/usr/bin/env bash
# What benchmarks/gpu_check.sh needs on a GPU machine that reaches no package registry, built
# here (where pip works) into two folders that git ignores and a GPU session carries along:
#   .gpu-wheels/  the packages the GPU image lacks, at this environment's versions, no
#                 dependencies (torch, timm, numpy, ... are the image's own); pydantic_core is
#                 compiled, so its wheel is fetched for the image's Python (3.12, x86-64)
#   .gpu-data/fashion-mnist/  the four IDX files `spt shards build fmnist` reads (30 MB)
#
#   bash benchmarks/gpu_prepare.sh [PYTHON]      (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
TARGET_PY=${GPU_PYTHON_VERSION:-3.12}
# What `spt train`, `spt shards build`, the engine and the check's pytest sections import that
# the GPU image does not have (deepspeed needs psutil, msgpack and py-cpuinfo; submitit needs
# cloudpickle; pytest runs the host-sync and device tests).
PURE="deepspeed hjson pydantic annotated-types typing-inspection typing_extensions braceexpand webdataset wids omegaconf
      submitit cloudpickle py-cpuinfo packaging pytest pluggy iniconfig pytest-timeout"
COMPILED="pydantic_core psutil msgpack"
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .gpu-wheels && mkdir -p .gpu-wheels .gpu-data
for name in $PURE; do
  "$PY" -m pip wheel -q --no-deps -w .gpu-wheels "$name==$(version "$name")"
done
for name in $COMPILED; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET_PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu-wheels "$name==$(version "$name")"
done
rm -rf .gpu-data/fashion-mnist
cp -r "${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}" .gpu-data/fashion-mnist
du -sh .gpu-wheels .gpu-data
