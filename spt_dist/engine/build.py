"""Everything a run needs before its first step: data, model (+ prompt init), optimizer, engine."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from spt_dist.config import Config

from .distributed import DistInfo
from .ds_engine import build_engine, deepspeed_config, engine_precision
from .optim import build_optimizer, build_scheduler, effective_lr, param_groups


@dataclass
class Parts:
    index: Any
    train_data: Any
    val_data: Optional[Any]
    test_data: Optional[Any]          # None in a tuning stage (data.test_split=null)
    model: Any
    engine: Any
    identity: Dict[str, Any]          # what a checkpoint must match to be resumed here
    counts: Dict[str, int]
    peak_lr: float
    global_batch: int
    dtype: torch.dtype                # the engine's model dtype (inputs are cast to it)
    zero_stage: int                   # the engine's ZeRO stage (deepspeed_json may change it)
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    img_size: int
    prompt_init: Optional[Any] = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _prompt_init(model: Any, cfg: Config, index: Any, dist: DistInfo, resuming: bool,
                 backbone_hash: str) -> Optional[Any]:
    """SPT's prototype init and/or the alignment reference (spt_dist.prompt_init).

    On resume the prompts come from the checkpoint, so it only runs for the reference (its
    cache makes that cheap).
    """
    from spt_dist.prompt_init import initialize_prompts

    m = cfg.method
    if not m.prompt_length or not (m.name == "spt" or m.track_alignment) or (resuming and not m.track_alignment):
        return None
    return initialize_prompts(model, cfg, index, dist, dist.device, backbone_hash=backbone_hash)


def build_parts(cfg: Config, dist: DistInfo, resuming: bool) -> Parts:
    from spt_dist.data import EvalData, ShardIndex, TrainData
    from spt_dist.data.overlap import check_eval_splits
    from spt_dist.model import build_model, input_spec, weights_hash

    index = ShardIndex.load(os.path.expanduser(cfg.data.root))
    img_size, mean, std = input_spec(cfg)
    data_args = (img_size, mean, std, dist.rank, dist.world_size)
    check_eval_splits(index, cfg.data.train_split, cfg.data.val_split, cfg.data.test_split)
    train_data = TrainData(cfg.data, index, *data_args, seed=cfg.run.seed)
    val_data = EvalData(cfg.data, index, cfg.data.val_split, *data_args) if cfg.data.val_split else None
    test_data = EvalData(cfg.data, index, cfg.data.test_split, *data_args) if cfg.data.test_split else None

    seed_everything(cfg.run.seed)  # same head / prompt init on every rank
    model = build_model(cfg, index.num_classes).to(dist.device)
    identity = {"backbone": cfg.model.name, "weights_hash": weights_hash(model.backbone),
                "prompt_shape": list(model.prompts.shape) if model.prompts is not None else None,
                "num_classes": index.num_classes, "method": cfg.method.name, "world_size": dist.world_size}
    init = _prompt_init(model, cfg, index, dist, resuming, identity["weights_hash"])
    seed_everything(cfg.run.seed + 1000003 * (dist.rank + 1))  # per-rank streams (prompt dropout)

    global_batch = cfg.data.batch_size * cfg.optim.grad_accum * dist.world_size
    peak_lr, final_lr = effective_lr(cfg.optim, global_batch)
    optimizer = build_optimizer(param_groups(model.named_parameters(), cfg.optim), cfg.optim, peak_lr)
    steps_per_epoch = train_data.batches_per_epoch / cfg.optim.grad_accum
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch, peak_lr, final_lr)
    counts = model.param_counts()  # before ZeRO-3 partitions the tensors (numel 0 afterwards)
    engine, _, _ = build_engine(model, optimizer, scheduler, deepspeed_config(cfg, dist.world_size))
    zero_stage, dtype = engine_precision(engine)
    return Parts(index, train_data, val_data, test_data, model, engine, identity, counts, peak_lr,
                 global_batch, dtype, zero_stage, tuple(mean), tuple(std), img_size, init)


def full_trainable_state(parts: Parts) -> Dict[str, torch.Tensor]:
    """fp32 values of every trainable tensor (the optimizer's master copy under bf16 / ZeRO).

    Collective under ZeRO: every rank must call it.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for name, p in parts.model.named_trainable_parameters():
        full = safe_get_full_fp32_param(p)
        out[name] = (p.detach() if full is None else full).float().cpu().clone()
    return out


def full_prompts(parts: Parts) -> Optional[torch.Tensor]:
    """fp32 prompts (collective under ZeRO, like full_trainable_state)."""
    from deepspeed.utils import safe_get_full_fp32_param

    p = parts.model.prompts
    if p is None:
        return None
    full = safe_get_full_fp32_param(p)
    return (p.detach() if full is None else full).float().cpu()
