"""What a study will cost before it runs, in hours of the runs' wall time one after another.

Per run: its training samples at a rate measured by earlier lone runs of the same shape
(their results.json), else estimated from FLOPs at this machine's measured matmul rate; its
forward-only passes (val every run.eval_every epochs and at the end, test at the end, the
prototype images of SPT's init and of the alignment reference, each prototype set once while
the prototype cache holds it; a linear probe on the feature cache: one pass over train and
val, then none); and its set-up inside the run (index, weights, DeepSpeed, data readers),
measured from earlier runs' wall_s where there are any. A pack (protocol.pack_search) pays
one set-up for all its members; its training is priced as the members' lone runs (an upper
bound: packing saves part of it). The process's own start (interpreter, imports) is not in
wall_s and not counted.

A run's shape is what decides its speed: backbone, image size, prompt length and depth,
method (whether gradients flow through the backbone; a linear probe on cached features), per-rank
batch, world size, precision.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from spt_dist.config.registry import backbone_spec
from spt_dist.config.schema import Config

STARTUP_S = 20.0  # a CPU rank's set-up on the development machine, where no earlier run measured it


def feature_cached(cfg: Config) -> bool:
    """Whether a linear probe trains on the feature cache (engine/features.py's conditions that the
    config decides; the memory bound aside)."""
    from spt_dist.engine.features import data_problem

    return (cfg.method.name == "linear" and cfg.method.feature_cache != "never" and data_problem(cfg) is None
            and cfg.distributed.zero_stage != 3)


def shape(cfg: Config) -> Tuple:
    m = cfg.method
    return (cfg.model.name, cfg.model.img_size or backbone_spec(cfg.model.name).img_size, m.prompt_length,
            m.deep, m.name == "full" or m.prompt_length > 0, feature_cached(cfg), cfg.data.batch_size,
            cfg.launch.nodes * cfg.launch.tasks_per_node, cfg.precision.dtype)


def _number(x: Any) -> Optional[float]:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def reference_runs(runs_dir: Path) -> List[Tuple[Dict[str, Any], Config]]:
    """(results, config) of every finished lone run under runs_dir, read once for every figure
    below; odd or older folders are skipped."""
    return list(_lone_results(runs_dir))


def _lone_results(runs_dir: Path) -> Iterable[Tuple[Dict[str, Any], Config]]:
    from spt_dist.config import load_config

    for path in Path(runs_dir).glob("*/results.json"):
        try:
            res = json.loads(path.read_text())
            if not isinstance(res, dict) or res.get("status") != "finished" or (res.get("pack_size") or 1) != 1:
                continue  # a pack member's times are the whole pack's
            cfg = load_config(str(path.parent / "config.yaml"))
        except Exception:  # unreadable, or a config this version cannot load: not a reference
            continue
        yield res, cfg


def measured_rates(refs: Sequence[Tuple[Dict[str, Any], Config]]) -> Dict[Tuple, float]:
    """Training samples/s of the reference runs, by shape (the fastest seen)."""
    rates: Dict[Tuple, float] = {}
    for res, cfg in refs:
        rate = _number(res.get("samples_per_s"))
        if rate and rate > 0:
            key = shape(cfg)
            rates[key] = max(rates.get(key, 0.0), rate)
    return rates


def flops_per_sample(cfg: Config, backward: bool = True) -> float:
    """FLOPs of one training sample (2 per multiply-add): the forward, plus with `backward` the
    backward to the activations (prompt methods: about 1 forward more) and to the weights (full
    fine-tuning: 1 more)."""
    s = backbone_spec(cfg.model.name)
    size = cfg.model.img_size or s.img_size
    tokens = (size // s.patch_size) ** 2 + int(s.class_token) + s.reg_tokens + cfg.method.prompt_length
    d = s.embed_dim
    per_block = tokens * (4 * d * d + 2 * s.mlp_ratio * d * d) * 2 + 2 * 2 * tokens * tokens * d
    forward = s.depth * per_block
    if not backward:
        return forward
    return forward * _grad_factor(cfg)


def _grad_factor(cfg: Config) -> float:
    if cfg.method.name == "full":
        return 3.0
    return 2.0 if cfg.method.prompt_length > 0 else 1.0


def machine_flops(seconds: float = 0.3) -> float:
    """float32 matmul FLOP/s of this machine, one thread of numpy's BLAS (an order of magnitude)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        n += 1
    return n * 2 * 512 ** 3 / (time.perf_counter() - start)


def _sizes(cfg: Config) -> Dict[str, int]:
    from spt_dist.engine.preflight import load_index

    return {name: split.num_samples for name, split in load_index(cfg.data.root).splits.items()}


def prototype_key(cfg: Config) -> Optional[Tuple]:
    """What a run's prototype pass depends on (a run with the same key under the same cache
    reads it from the prototype cache), or None when the run has no prototype pass."""
    from spt_dist.prompt_init import has_prototype_pass

    m = cfg.method
    if not has_prototype_pass(m):
        return None
    d = cfg.data
    return (cfg.model.name, cfg.model.checkpoint, d.root, d.train_split, d.fraction, d.fraction_seed, d.preset,
            m.init, m.init_images, m.init_transform, m.init_replacement, m.init_candidates, m.prompt_length,
            m.deep, cfg.run.seed, m.cache_dir)


def prototype_images(cfg: Config) -> int:
    """Images the prototype pass sends forward (SPT's init; VPT's alignment reference)."""
    from spt_dist.engine.preflight import training_samples

    m = cfg.method
    train = training_samples(cfg)
    if not m.init_images:
        return train
    if m.init_replacement and m.init_transform == "train":
        return m.init_images  # each draw its own augmented view
    return min(m.init_images, train)


def forward_samples(cfg: Config, prototypes: bool = True) -> int:
    """Samples a run passes forward only: evaluation, a cached linear probe's one pass over its
    splits, and (with `prototypes`) its prototype images."""
    size, d = _sizes(cfg), cfg.data
    epochs, every = cfg.optim.epochs, cfg.run.eval_every
    val = size.get(d.val_split, 0) if d.val_split else 0
    n = size.get(d.test_split, 0) if d.test_split else 0
    if feature_cached(cfg):
        from spt_dist.engine.preflight import training_samples

        n += training_samples(cfg) + val  # once; every epoch then trains and validates on the features
    else:
        n += val * (epochs // every + (epochs % every != 0))  # every eval_every epochs and the last
    if prototypes and prototype_key(cfg) is not None:
        n += prototype_images(cfg)
    return n


def _train_rate(cfg: Config, rates: Dict[Tuple, float], flops_rate: float) -> Tuple[float, bool]:
    rate = rates.get(shape(cfg))
    if rate:
        return rate, True
    world = cfg.launch.nodes * cfg.launch.tasks_per_node
    if feature_cached(cfg):
        return math.inf, False  # the head's steps on cached features: the forward pass is priced apart
    return flops_rate * world / flops_per_sample(cfg), False


def _forward_rate(cfg: Config, flops_rate: float) -> float:
    world = cfg.launch.nodes * cfg.launch.tasks_per_node
    return flops_rate * world / flops_per_sample(cfg, backward=False)


def measured_startup(refs: Sequence[Tuple[Dict[str, Any], Config]], flops_rate: float) -> Optional[float]:
    """Median seconds the reference runs spent outside their training steps and forward passes
    (priced by FLOPs at `flops_rate`)."""
    extra = []
    for res, cfg in refs:
        wall, train = _number(res.get("wall_s")), _number(res.get("train_s"))
        if wall is None or train is None:
            continue
        try:
            forward_s = forward_samples(cfg) / _forward_rate(cfg, flops_rate)
        except Exception:  # its data is gone or changed: not a reference
            continue
        extra.append(max(0.0, wall - train - forward_s))
    return statistics.median(extra) if extra else None


def estimate(runs: Iterable[Any], samples_of, rates: Dict[Tuple, float], flops_rate: Optional[float],
             startup_s: Optional[float] = None, packed: Sequence[str] = ()) -> Dict:
    """Seconds over `runs` (PlannedRun): of training, of forward-only passes, of set-up; and how
    each training rate was found. `startup_s`: per run (measured_startup), else STARTUP_S;
    `packed`: cells whose search runs are one pack (one set-up)."""
    flops_rate = flops_rate or machine_flops()
    train = forward = 0.0
    measured = estimated = jobs = 0
    seen_prototypes, packs = set(), set()
    for r in runs:
        rate, was_measured = _train_rate(r.cfg, rates, flops_rate)
        measured += was_measured
        estimated += not was_measured
        if r.stage == "search" and r.cell.key in packed:
            jobs += r.cell.key not in packs
            packs.add(r.cell.key)
        else:
            jobs += 1
        if math.isfinite(rate):
            train += r.cfg.optim.epochs * samples_of(r.cfg) / rate
        key = prototype_key(r.cfg)
        fresh = key is not None and (key not in seen_prototypes or r.cfg.method.cache_dir is None)
        seen_prototypes.add(key)
        forward += forward_samples(r.cfg, prototypes=fresh) / _forward_rate(r.cfg, flops_rate)
    per_job = STARTUP_S if startup_s is None else startup_s
    return {"seconds": train, "forward_seconds": forward, "startup_seconds": per_job * jobs, "jobs": jobs,
            "startup_per_job": per_job, "startup_measured": startup_s is not None,
            "total_seconds": train + forward + per_job * jobs, "runs_measured": measured, "runs_estimated": estimated}
