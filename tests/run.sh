#!/usr/bin/env bash
# The test command: sets up the environment, brings up the single-node SLURM cluster for the
# launcher tests, runs the whole suite, and tears the cluster down again.
set -euo pipefail
cd "$(dirname "$0")/.."

bash launch/setup_env.sh
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}

started_slurm=0
if [ -x launch/slurm_up.sh ] && [ "${SPT_SKIP_SLURM:-0}" != 1 ]; then
  if bash launch/slurm_up.sh; then
    started_slurm=1
  elif [ "${SPT_REQUIRE_SLURM:-0}" = 1 ]; then
    echo "the SLURM cluster did not come up" >&2
    exit 1
  fi
fi
cleanup() { if [ "$started_slurm" = 1 ]; then bash launch/slurm_down.sh || true; fi; }
trap cleanup EXIT

# Two test processes (SPT_TEST_WORKERS=0: one): many tests wait on subprocesses, sleeps and the
# SLURM scheduler, so two share the 2 cores well. Each test file runs in one process, so a
# module's expensive fixture (a reference run, a trained pack) is built once.
workers=${SPT_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then
  .venv/bin/python -m pytest tests "$@"
else
  .venv/bin/python -m pytest tests -n "$workers" --dist loadfile "$@"
fi
