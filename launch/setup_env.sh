#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install spt_dist with its
# test extras. Idempotent: a second run only checks. Usage: source-free, `bash launch/setup_env.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# The registry's newest torch and torchvision are a matching pair; do not pin torch (README).
stamp=.venv/.spt_installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  .venv/bin/pip install -q -e ".[dev]"
  touch "$stamp"
fi

# Real image data that installs offline (Fashion-MNIST, Debian package).
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST is missing; as root run: apt-get install dataset-fashion-mnist" >&2
  fi
fi
