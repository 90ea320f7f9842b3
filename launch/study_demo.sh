#!/usr/bin/env bash
# A miniature scaling study, end to end: linear probe, VPT-deep and SPT-deep on the demo backbone
# x 4 training-data fractions (configs/study/methods_x_fraction.sweep.yaml), submitted as ONE job
# array, then a table and plots from the runs' results.json files.
#   bash launch/study_demo.sh              # on the SLURM cluster if `sbatch` answers, else locally
#   CLUSTER=local bash launch/study_demo.sh
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

.venv/bin/spt sweep configs/study/methods_x_fraction.sweep.yaml --cluster "$CLUSTER" \
  --tasks-per-node 1 --cpus-per-task 1 --array-parallelism 2 --folder jobs/study --wait
.venv/bin/spt report runs/study --by method,data_fraction -o runs/study/report
cat runs/study/report/report.md
echo "plots: runs/study/report/scaling.png"
