"""The training engine: process groups, DeepSpeed, optimisation, checkpoints, evaluation, export.

The entry point is `spt_dist.engine.train.train(cfg, run_dir=None)`; submodules are imported
on use (DeepSpeed loads slowly).
"""
