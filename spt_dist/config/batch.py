"""The global batch over the world sizes a launch may get (torch-free: checked at validation).

A run's global batch G (samples per optimizer step over all ranks) is data.global_batch, or,
when that is 0, data.batch_size x optim.grad_accum x the world size of the run's first
allocation. An elastic SLURM job (launch.min_nodes) may start, and be requeued, on any node
count in the range, and a rank count W keeps G only when W divides it (engine/shape.py picks the
micro-batch and accumulation), so every world size of the range must divide every G the run
could start with.
"""
from __future__ import annotations

import math
from typing import List, Optional

from .schema import Config, LaunchConfig


def launch_world_sizes(la: LaunchConfig) -> List[int]:
    """Every world size a job of these launch settings may run on."""
    low = la.min_nodes if la.elastic and la.min_nodes else la.nodes
    return [n * la.tasks_per_node for n in range(low, la.nodes + 1)]


def _listed(values: List[int]) -> str:
    return ", ".join(map(str, values))


def global_batch_problem(cfg: Config) -> Optional[str]:
    """Why some world size of the launch cannot keep the run's global batch, or None."""
    la, d = cfg.launch, cfg.data
    sizes = launch_world_sizes(la)
    span = (f"launch.nodes {sizes[0] // la.tasks_per_node}-{la.nodes}" if len(sizes) > 1 else
            f"launch.nodes {la.nodes}") + f" x launch.tasks_per_node {la.tasks_per_node}"
    step = math.lcm(*sizes)
    if d.global_batch:
        bad = [w for w in sizes if d.global_batch % w]
        if bad:
            return (f"config key 'data.global_batch' = {d.global_batch} cannot be split over {_listed(bad)} rank(s) "
                    f"({span}: world sizes {_listed(sizes)}); allowed: a multiple of {step}, which every one of "
                    f"these world sizes divides, or launch settings whose world sizes divide {d.global_batch}")
        return None
    per_rank = d.batch_size * cfg.optim.grad_accum
    for first in sizes:
        bad = [w for w in sizes if per_rank * first % w]
        if bad:
            near = -(-per_rank * first // step) * step
            return (f"config key 'data.global_batch' = 0: the global batch is data.batch_size x optim.grad_accum = "
                    f"{per_rank} x the first allocation's world size, and a first allocation of {first} rank(s) "
                    f"gives {per_rank * first}, which {_listed(bad)} rank(s) cannot split ({span}: world sizes "
                    f"{_listed(sizes)}); set data.global_batch to a multiple of {step} (e.g. {near}), which every "
                    f"one of these world sizes divides")
    return None


def lr_scale(lr_scaling: str, global_batch: int) -> float:
    """The factor optim.lr and optim.min_lr are multiplied by: global batch / 256 under
    lr_scaling=linear (VPT's tune scripts), 1 under none. The one rule: the engine's effective
    lr and `spt config show --protocol` use it."""
    return global_batch / 256.0 if lr_scaling == "linear" else 1.0
