"""TrainState: where a run is and what it measured so far; saved in every checkpoint.

Totals (wall_s, train_s, steps_timed, bad_samples) cover every invocation of the run, so a
resumed run reports the whole run. `from_state_dict` accepts checkpoints written before a
field existed (it starts at its default).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:
    from .shape import Shape


@dataclass
class TrainState:
    step: int = 0                       # optimizer steps done
    epoch: int = 0                      # current epoch
    batch: int = 0                      # micro-batches of the current epoch done (the same on every rank)
    wall_s: float = 0.0
    train_s: float = 0.0                # time in training steps (checkpoints and evaluation excluded)
    steps_timed: int = 0
    bad_samples: int = 0                # training samples skipped, all ranks
    val_top1: Optional[float] = None
    val_bad_samples: int = 0
    best_val_top1: Optional[float] = None
    best_val_epoch: Optional[int] = None
    test_top1: Optional[float] = None
    test_bad_samples: int = 0
    world_sizes: List[int] = field(default_factory=list)   # every world size the run trained on, in order

    def state_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, raw: Dict[str, Any]) -> "TrainState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def reshape(self, old: "Shape", new: "Shape") -> None:
        """The position within the epoch for another shape (engine/shape.py): the same number of
        samples of the epoch's permutation consumed, counted in the new micro-batches."""
        if (old.world_size, old.batch_size) == (new.world_size, new.batch_size):
            return
        samples = self.batch * old.world_size * old.batch_size
        per_micro = new.world_size * new.batch_size
        if samples % per_micro:
            raise ValueError(f"checkpoint at {samples} samples into the epoch: not a whole number of "
                             f"{per_micro}-sample micro-batches (saved inside an accumulation window?)")
        self.batch = samples // per_micro

    def note_world_size(self, world_size: int) -> None:
        if not self.world_sizes or self.world_sizes[-1] != world_size:
            self.world_sizes.append(world_size)

    def samples_per_s(self, global_batch: int) -> Optional[float]:
        """Training throughput over every invocation of the run."""
        return round(self.steps_timed * global_batch / self.train_s, 3) if self.train_s else None

    def record_val(self, top1: float, bad: int, epoch: int) -> None:
        self.val_top1, self.val_bad_samples = top1, bad
        if self.best_val_top1 is None or top1 > self.best_val_top1:
            self.best_val_top1, self.best_val_epoch = top1, epoch
