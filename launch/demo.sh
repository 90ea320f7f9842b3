#!/usr/bin/env bash
# The main job in miniature: SPT-deep prompt tuning of the committed tiny backbone
# (pretrained on Fashion-MNIST classes 0-4) on classes 5-9, 2 CPU ranks under torchrun.
# Installs what is missing, builds the shards, trains, prints the result. Extra arguments
# are config overrides, e.g. `bash launch/demo.sh optim.epochs=8 distributed.zero_stage=2`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash launch/setup_env.sh   # .venv + pip install -e . + apt-get install dataset-fashion-mnist
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
NPROC=${NPROC:-2}

if [ ! -f data/fmnist_tune/index.json ]; then
  .venv/bin/spt shards build fmnist --classes 5,6,7,8,9 --out data/fmnist_tune --workers "$NPROC"
fi

.venv/bin/python -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
  -m spt_dist.cli train configs/demo.yaml "$@"
