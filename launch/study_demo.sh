#!/usr/bin/env bash
# A miniature scaling study, end to end, with one command: linear probe, VPT-deep and SPT-deep on
# the demo backbone x 3 training-data fractions (configs/study/mini_fmnist.yaml), each cell with
# its own lr search on the validation split, the choice carried to a 2-seed final stage, then the
# table, plots and fitted curves.
#   bash launch/study_demo.sh              # on the SLURM cluster if `sbatch` answers, else locally
#   CLUSTER=local bash launch/study_demo.sh   # (or CLUSTER=slurm): passed as `spt study run --cluster`
set -euo pipefail
cd "$(dirname "$0")/.."

bash launch/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ ! -f data/fmnist_tune/index.json ]; then
  .venv/bin/spt shards build fmnist --classes 5,6,7,8,9 --out data/fmnist_tune --workers 2
fi
if [ -z "${CLUSTER:-}" ]; then
  if command -v sbatch >/dev/null && sinfo -h >/dev/null 2>&1; then CLUSTER=slurm; else CLUSTER=local; fi
fi
SPEC=configs/study/mini_fmnist.yaml
.venv/bin/spt study plan "$SPEC" --cluster "$CLUSTER"
.venv/bin/spt study run "$SPEC" --cluster "$CLUSTER" --poll 5  # writes the report when the study finishes
cat runs/studies/mini_fmnist/report/study.md
