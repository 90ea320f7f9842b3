"""What a study will cost before it runs: samples to process per run, at a rate measured by
earlier runs of the same shape (their results.json), else estimated from FLOPs at this
machine's measured matmul rate.

A run's shape is what decides its speed: backbone, image size, prompt length and depth,
method (whether gradients flow through the backbone), per-rank batch, world size, precision.
"""
from __future__ import annotations

import json
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


def estimate(runs: Iterable[Any], samples_of, rates: Dict[Tuple, float], flops_rate: Optional[float]) -> Dict:
    """Seconds of training over `runs` (PlannedRun) and how each rate was found."""
    total, measured, estimated = 0.0, 0, 0
    for r in runs:
        samples = r.cfg.optim.epochs * samples_of(r.cfg)
        rate = rates.get(shape(r.cfg))
        if rate:
            measured += 1
        else:
            estimated += 1
            world = r.cfg.launch.nodes * r.cfg.launch.tasks_per_node
            rate = (flops_rate or machine_flops()) * world / flops_per_sample(r.cfg)
        total += samples / rate
    return {"seconds": total, "runs_measured": measured, "runs_estimated": estimated}
