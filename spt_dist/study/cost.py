"""What a study will cost before it runs: samples to process per run, at a rate measured by
earlier runs of the same shape (their results.json), else estimated from FLOPs at this
machine's measured matmul rate; and what a run costs beyond its training steps: its
evaluation passes (val every run.eval_every epochs and at the end, test at the end, SPT's
prototype images), forward only, and its start-up (process, DeepSpeed, index, checkpoint
load), measured from earlier runs' wall_s where there are any.

A run's shape is what decides its speed: backbone, image size, prompt length and depth,
method (whether gradients flow through the backbone), per-rank batch, world size, precision.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

from spt_dist.config.registry import backbone_spec
from spt_dist.config.schema import Config


def shape(cfg: Config) -> Tuple:
    m = cfg.method
    return (cfg.model.name, cfg.model.img_size or backbone_spec(cfg.model.name).img_size, m.prompt_length,
            m.deep, m.name == "full" or m.prompt_length > 0, cfg.data.batch_size,
            cfg.launch.nodes * cfg.launch.tasks_per_node, cfg.precision.dtype)


def _shape_of_results(run_dir: Path) -> Optional[Tuple]:
    from spt_dist.config import load_config

    try:
        return shape(load_config(str(run_dir / "config.yaml")))
    except Exception:  # an unreadable or older folder: not a reference
        return None


def measured_rates(runs_dir: Path) -> Dict[Tuple, float]:
    """Training samples/s of finished runs under runs_dir, by shape (the fastest seen)."""
    rates: Dict[Tuple, float] = {}
    for path in Path(runs_dir).glob("*/results.json"):
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rate = res.get("samples_per_s")
        if res.get("status") == "finished" and isinstance(rate, (int, float)) and rate > 0:
            key = _shape_of_results(path.parent)
            if key is not None:
                rates[key] = max(rates.get(key, 0.0), float(rate))
    return rates


def flops_per_sample(cfg: Config) -> float:
    """Forward + backward FLOPs of one training sample (2 per multiply-add)."""
    s = backbone_spec(cfg.model.name)
    size = cfg.model.img_size or s.img_size
    tokens = (size // s.patch_size) ** 2 + int(s.class_token) + s.reg_tokens + cfg.method.prompt_length
    d = s.embed_dim
    per_block = tokens * (4 * d * d + 2 * s.mlp_ratio * d * d) * 2 + 2 * 2 * tokens * tokens * d
    forward = s.depth * per_block
    grads = cfg.method.name == "full" or cfg.method.prompt_length > 0
    return forward * (3.0 if grads else 1.0)


def machine_flops(seconds: float = 0.3) -> float:
    """float32 matmul FLOP/s of this machine, one thread of numpy's BLAS (an order of magnitude)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        n += 1
    return n * 2 * 512 ** 3 / (time.perf_counter() - start)


STARTUP_S = 20.0  # a CPU rank's start-up on the development machine, where no earlier run measured it


def forward_samples(cfg: Config) -> int:
    """Samples a run passes forward only: val passes, the test pass and SPT's prototype images."""
    from spt_dist.engine.preflight import load_index, training_samples

    size = {name: split.num_samples for name, split in load_index(cfg.data.root).splits.items()}
    epochs, every = cfg.optim.epochs, cfg.run.eval_every
    n = 0
    if cfg.data.val_split:
        n += size.get(cfg.data.val_split, 0) * (epochs // every + (epochs % every != 0))
    if cfg.data.test_split:
        n += size.get(cfg.data.test_split, 0)
    if cfg.method.name == "spt" and cfg.method.init != "vpt":
        train = training_samples(cfg)
        n += min(cfg.method.init_images, train) if cfg.method.init_images else train
    return n


def _grad_factor(cfg: Config) -> float:
    return 3.0 if cfg.method.name == "full" or cfg.method.prompt_length > 0 else 1.0


def measured_startup(runs_dir: Path, rates: Dict[Tuple, float], flops_rate: float) -> Optional[float]:
    """Median seconds a finished run under runs_dir spent outside training and evaluation."""
    from spt_dist.config import load_config

    extra = []
    for path in Path(runs_dir).glob("*/results.json"):
        try:
            res = json.loads(path.read_text())
            if res.get("status") != "finished" or not res.get("wall_s") or res.get("train_s") is None:
                continue
            cfg = load_config(str(path.parent / "config.yaml"))
            eval_s = forward_samples(cfg) / _forward_rate(cfg, rates, flops_rate)
        except Exception:  # an unreadable or older folder: not a reference
            continue
        extra.append(max(0.0, float(res["wall_s"]) - float(res["train_s"]) - eval_s))
    return statistics.median(extra) if extra else None


def _train_rate(cfg: Config, rates: Dict[Tuple, float], flops_rate: float) -> Tuple[float, bool]:
    rate = rates.get(shape(cfg))
    if rate:
        return rate, True
    world = cfg.launch.nodes * cfg.launch.tasks_per_node
    return flops_rate * world / flops_per_sample(cfg), False


def _forward_rate(cfg: Config, rates: Dict[Tuple, float], flops_rate: float) -> float:
    """Forward-only samples/s: a training rate without its backward passes."""
    rate, measured = _train_rate(cfg, rates, flops_rate)
    if measured and cfg.method.name == "linear":
        # a measured linear probe may train on cached features: price its forwards by FLOPs
        world = cfg.launch.nodes * cfg.launch.tasks_per_node
        return flops_rate * world / flops_per_sample(cfg)
    return rate * _grad_factor(cfg)


def estimate(runs: Iterable[Any], samples_of, rates: Dict[Tuple, float], flops_rate: Optional[float],
             startup_s: Optional[float] = None) -> Dict:
    """Seconds over `runs` (PlannedRun): of training, of evaluation passes, of start-up; and how
    each training rate was found. `startup_s`: per run (measured_startup), else STARTUP_S."""
    flops_rate = flops_rate or machine_flops()
    train, evals, n_runs, measured, estimated = 0.0, 0.0, 0, 0, 0
    for r in runs:
        rate, was_measured = _train_rate(r.cfg, rates, flops_rate)
        measured += was_measured
        estimated += not was_measured
        n_runs += 1
        train += r.cfg.optim.epochs * samples_of(r.cfg) / rate
        evals += forward_samples(r.cfg) / _forward_rate(r.cfg, rates, flops_rate)
    per_run = STARTUP_S if startup_s is None else startup_s
    return {"seconds": train, "eval_seconds": evals, "startup_seconds": per_run * n_runs,
            "startup_per_run": per_run, "startup_measured": startup_s is not None,
            "total_seconds": train + evals + per_run * n_runs, "runs_measured": measured, "runs_estimated": estimated}
