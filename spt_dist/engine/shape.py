"""The shape a run trains with: world size, per-rank micro-batch, gradient accumulation.

The global batch G = W x B x A is part of a run's identity. A run starts on the world size it
finds with the config's B and A, or, with data.global_batch set, with the shape of that G chosen
by the rule below (so one config trains one G whatever the first allocation); every checkpoint
records the shape. A resumed run on another world size W' (launch.elastic=true) keeps G by
choosing B' and A' with W' x B' x A' = G, B and A being the config's: the same B if
G / (W' x B) is whole (more or fewer accumulation steps), else the same A if that micro-batch is
no larger than B, else the largest B' below B that divides (a micro-batch never grows past the
config's B, so a step needs no more memory than the config's). Its optimizer steps then see the same samples (data/order.py: step s is the same
slice of the epoch's permutation for every shape), so the result equals an uninterrupted run's
up to the order of floating-point sums. With ZeRO stage 0 the optimizer state is the same on
every rank and loads on any world size; ZeRO 1-3 partition it by rank (ZeRO 3 the parameters
too) and DeepSpeed refuses another data-parallel size, so elastic runs also save it whole and
re-partition it (engine/zero_state.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from spt_dist.config import Config, ConfigError

from .errors import CheckpointMismatchError


@dataclass(frozen=True)
class Shape:
    world_size: int
    batch_size: int
    grad_accum: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size * self.grad_accum

    def as_dict(self) -> Dict[str, int]:
        return {"world_size": self.world_size, "batch_size": self.batch_size, "grad_accum": self.grad_accum}

    @classmethod
    def of(cls, raw: Dict[str, Any]) -> "Shape":
        return cls(int(raw["world_size"]), int(raw["batch_size"]), int(raw["grad_accum"]))


def _splits(g: int, world: int, batch: int, accum: int) -> Optional[Shape]:
    if g % world:
        return None
    per_rank = g // world
    if per_rank % batch == 0:
        return Shape(world, batch, per_rank // batch)
    if per_rank % accum == 0 and per_rank // accum <= batch:
        return Shape(world, per_rank // accum, accum)
    b = next(b for b in range(min(batch, per_rank), 0, -1) if per_rank % b == 0)
    return Shape(world, b, per_rank // b)


def workable_world_sizes(g: int) -> List[int]:
    """Every world size that splits the global batch `g` evenly (its divisors)."""
    return [w for w in range(1, g + 1) if g % w == 0]


def first_shape(cfg: Config, world_size: int) -> Shape:
    """The shape a new run starts with on `world_size` ranks (torch-free: the login node checks it)."""
    g = cfg.data.global_batch
    if not g:
        return Shape(world_size, cfg.data.batch_size, cfg.optim.grad_accum)
    shape = _splits(g, world_size, cfg.data.batch_size, cfg.optim.grad_accum)
    if shape is None:
        raise ConfigError(f"config key 'data.global_batch' = {g} cannot be split over {world_size} rank(s); "
                          f"world sizes that keep it: {', '.join(map(str, workable_world_sizes(g)))}")
    return shape


def run_shape(cfg: Config, world_size: int, held: Optional[Dict[str, Any]]) -> Shape:
    """The shape to train with now; `held` is the newest checkpoint's recorded shape (None:
    a new run, or one saved before shapes were recorded)."""

    if held is None:
        return first_shape(cfg, world_size)
    old = Shape.of(held)
    if old.world_size == world_size:
        return old
    if not cfg.launch.elastic:
        partitioned = cfg.distributed.zero_stage > 0 and not held.get("full_optimizer")
        how = (f"set launch.elastic=true to continue it on {world_size} (the global batch of {old.global_batch} is "
               f"kept; e.g. `spt train RUN_DIR launch.elastic=true`)") if not partitioned else (
               f"its ZeRO-{cfg.distributed.zero_stage} optimizer state is saved only in {old.world_size} per-rank "
               f"partitions: continue it on {old.world_size} rank(s) with launch.elastic=true once (`spt train RUN_DIR "
               f"launch.elastic=true`; its next checkpoint holds the state whole), then it moves to any world size")
        raise CheckpointMismatchError(
            f"the run's checkpoints were written by {old.world_size} rank(s) and this job has {world_size}; {how}, "
            f"or run it on {old.world_size} rank(s)")
    if cfg.distributed.zero_stage > 0 and not held.get("full_optimizer"):
        raise CheckpointMismatchError(
            f"config key 'distributed.zero_stage' = {cfg.distributed.zero_stage}: the checkpoint holds the optimizer "
            f"state only in {old.world_size} per-rank partitions (it was saved with launch.elastic=false); continue "
            f"this run on {old.world_size} rank(s). Runs started with launch.elastic=true save the state whole too "
            f"and continue on any world size")
    if cfg.data.shuffle != "exact":
        raise CheckpointMismatchError("config key 'data.shuffle' = 'stream': a run continues on another world size "
                                      "only with data.shuffle=exact, whose order does not depend on the ranks")
    # the config's micro-batch and accumulation are the preference (and B's cap), not the last
    # shape's: a run moved 2 x 64 -> 4 x 32 -> 1 rank trains 64 x 2 again, not 32 x 4
    shape = _splits(old.global_batch, world_size, cfg.data.batch_size, cfg.optim.grad_accum)
    if shape is None:
        raise CheckpointMismatchError(
            f"the run's global batch of {old.global_batch} ({old.world_size} ranks x {old.batch_size} x "
            f"{old.grad_accum} accumulation steps) cannot be split over {world_size} rank(s); world sizes that keep "
            f"it: {', '.join(map(str, workable_world_sizes(old.global_batch)))}")
    return shape


def shaped(cfg: Config, shape: Shape) -> Config:
    """`cfg` with the shape's micro-batch and accumulation (the run's identity stays cfg's)."""
    import dataclasses

    if (cfg.data.batch_size, cfg.optim.grad_accum) == (shape.batch_size, shape.grad_accum):
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=shape.batch_size),
                               optim=dataclasses.replace(cfg.optim, grad_accum=shape.grad_accum))
