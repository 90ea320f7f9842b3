#!/usr/bin/env python
"""Login-node entry point, the same as `spt submit` (and `spt sweep` with --grid/--configs).

    python launch/submit.py configs/demo.yaml optim.lr=0.01 --nodes 2 --gpus-per-node 8
"""
import sys

from spt_dist.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    command = "sweep" if any(a in ("--grid", "--configs") for a in args) else "submit"
    sys.exit(main([command, *args]))
