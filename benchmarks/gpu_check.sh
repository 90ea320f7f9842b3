#!/usr/bin/env bash
# The GPU check, one command: CUDA + NCCL smoke runs of `spt train` on the demo, bf16 step
# throughput / MFU / peak memory of ViT-B/16, L/16, H/14 (VPT-deep p=50 vs full fine-tuning,
# the engine vs a plain PyTorch loop), the host-sync test under CUDA's sync debug mode, packed
# training, and the serving figures (the prompt bank on the GPU: T = 1, 5, 20 tasks mixed vs
# one task, bank memory vs T models). Under 8 minutes on one H200; everything lands as JSON in
# OUT_DIR (gpu_check.json, step.json, packed.json, serving.json, gpu_check.log).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [--cpu-smoke]
#
# OUT_DIR: the argument, else $OUT, else benchmarks/results/gpu. The GPU machine reaches no
# package registry: run benchmarks/gpu_prepare.sh first where pip works, and bring the two
# folders it fills (.gpu-wheels: the Python packages torch's image lacks; .gpu-data: the
# Fashion-MNIST files the demo's shards are built from). --cpu-smoke runs the same code on the
# CPU with tiny sizes and the packages already installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-benchmarks/results/gpu}
MODE=gpu
for arg in "$@"; do
  case $arg in
    --cpu-smoke) MODE=cpu ;;
    *) OUT_DIR=$arg ;;
  esac
done
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/spt_torch_extensions}
NEEDED="import deepspeed, webdataset, wids, omegaconf, submitit, hjson, pydantic"
if [ "$MODE" = gpu ]; then
  export DS_ACCELERATOR=cuda
  if ! "$PY" -c "$NEEDED" 2>/dev/null; then
    if ! ls .gpu-wheels/*.whl >/dev/null 2>&1; then
      echo "gpu_check: no wheels in .gpu-wheels; run benchmarks/gpu_prepare.sh where pip works and carry .gpu-wheels" >&2
      exit 2
    fi
    # --no-deps: torch and everything the image has stay as they are (no newer torch comes in).
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/spt_site \
      .gpu-wheels/*.whl || exit 2
    export PYTHONPATH=/tmp/spt_site${PYTHONPATH:+:$PYTHONPATH}
  fi
  FMNIST=.gpu-data/fashion-mnist
else
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} SPT_GPU_WORK=${SPT_GPU_WORK:-/tmp/spt_cpu_smoke}
  FMNIST=/usr/share/datasets/fashion-mnist
  [ -d .gpu-data/fashion-mnist ] && FMNIST=.gpu-data/fashion-mnist
fi
"$PY" -c "$NEEDED" || { echo "gpu_check: a package the run needs is missing" >&2; exit 2; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec "$PY" benchmarks/gpu_check.py --out "$OUT_DIR" --mode "$MODE" --fmnist-dir "$FMNIST"
