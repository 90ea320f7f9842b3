"""Everything a run needs before its first step: data, model (+ prompt init), optimizer, engine.

The weight file is read once, here; its format decides the input normalisation and the
pooling, and its weights hash (computed once) keys the prototype cache and the prompt pack.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional

import torch

from spt_dist.config import Config
from spt_dist.distributed import DistInfo, seed_everything
from spt_dist.rundir import config_hash

from .ds_engine import build_engine, deepspeed_config, engine_precision
from .optim import build_optimizer, build_scheduler, effective_lr, param_groups

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from timm.models.vision_transformer import VisionTransformer

    from .feature_data import FeatureCache

    from .shape import Shape

    from spt_dist.data import EvalData, ShardIndex, TrainData
    from spt_dist.model import InputSpec, PromptedViT
    from spt_dist.model.weights import Checkpoint
    from spt_dist.prompt_init import InitResult


@dataclass
class RunParts:
    index: "ShardIndex"
    train_data: "TrainData"
    val_data: Optional["EvalData"]          # None without a validation split
    test_data: Optional["EvalData"]         # None in a tuning stage (data.test_split=null)
    model: "PromptedViT"
    engine: "DeepSpeedEngine"
    identity: Dict[str, Any]                # what a checkpoint must match to be resumed here
    counts: Dict[str, int]                  # PromptedViT.param_counts(), before ZeRO-3 partitions
    peak_lr: float
    global_batch: int
    dtype: torch.dtype                      # the engine's model dtype (inputs are cast to it)
    zero_stage: int                         # the engine's ZeRO stage
    inputs: "InputSpec"
    prompt_init: Optional["InitResult"] = None
    weights_read: Optional["Checkpoint"] = None  # the weight file as read (tensors dropped): the weights check
    features: Optional["FeatureCache"] = None  # a linear probe's feature cache, set by train.py


def _prompt_init(model: "PromptedViT", cfg: Config, shared: "SharedParts", dist: DistInfo, resuming: bool,
                 backbone_hash: str) -> Optional["InitResult"]:
    """SPT's prototype init and/or the alignment reference (spt_dist.prompt_init).

    On resume the prompts come from the checkpoint, so it only runs for the reference (its
    cache makes that cheap).
    """
    from spt_dist.prompt_init import has_prototype_pass, initialize_prompts

    m = cfg.method
    if not has_prototype_pass(m) or (resuming and not m.track_alignment):
        return None
    return initialize_prompts(model, cfg, shared.index, dist.comm, dist.device, backbone_hash=backbone_hash,
                              inputs=shared.inputs, train_keys=shared.train_data.selected_keys)


def load_data(cfg: Config, index: "ShardIndex", inputs: "InputSpec", dist: DistInfo):
    """(train, val, test) readers of this rank; evaluation splits disjoint from training."""
    from spt_dist.data import EvalData, TrainData
    from spt_dist.data.overlap import check_eval_splits

    d = cfg.data
    check_eval_splits(index, d.train_split, d.val_split, d.test_split, d.duplicate_images)
    args = (*inputs, dist.rank, dist.world_size)
    train = TrainData(d, index, *args, seed=cfg.run.seed, grad_accum=cfg.optim.grad_accum)
    val = EvalData(d, index, d.val_split, *args) if d.val_split else None
    test = EvalData(d, index, d.test_split, *args) if d.test_split else None
    return train, val, test


@dataclass
class SharedParts:
    """What every run over one backbone and one data stream shares (a pack's members share it)."""
    index: "ShardIndex"
    train_data: "TrainData"
    val_data: Optional["EvalData"]
    test_data: Optional["EvalData"]
    inputs: "InputSpec"
    backbone: "VisionTransformer"           # the timm backbone, weights loaded, on the device
    weights_fmt: Optional[str]              # the weight file's format (decides model.pool=auto)
    weights_hash: str
    rng_after_backbone: Dict[str, Any]      # RNG states a lone run has when it wraps the backbone
    weights_read: Optional["Checkpoint"] = None  # the weight file as read (tensors dropped): the weights check


def build_shared(cfg: Config, dist: DistInfo, shape: "Shape") -> SharedParts:
    """Index, weights, data readers and the backbone of a run (`cfg` already shaped)."""
    from spt_dist.data import ShardIndex
    from spt_dist.model import build_run_backbone, input_spec, read_weights, weights_hash

    from .checkpoint import rng_state

    index = ShardIndex.load(os.path.expanduser(cfg.data.root))
    weights = read_weights(cfg)
    inputs = input_spec(cfg, weights.fmt if weights else None)
    train_data, val_data, test_data = load_data(cfg, index, inputs, dist)
    seed_everything(cfg.run.seed)  # same head / prompt init on every rank
    backbone = build_run_backbone(cfg, weights)
    after = rng_state()
    read = dataclasses.replace(weights, state={}) if weights else None
    del weights  # the tensors live in the backbone now
    backbone = backbone.to(dist.device)
    return SharedParts(index, train_data, val_data, test_data, inputs, backbone, read.fmt if read else None,
                       weights_hash(backbone), after, read)


def build_parts(cfg: Config, dist: DistInfo, resuming: bool, shape: Optional["Shape"] = None) -> RunParts:
    """`shape`: the micro-batch and accumulation to train with (engine/shape.py); the config's
    on this world size by default. The run's identity is always `cfg`'s."""
    from .shape import Shape, shaped

    shape = shape or Shape(dist.world_size, cfg.data.batch_size, cfg.optim.grad_accum)
    return build_member(cfg, build_shared(shaped(cfg, shape), dist, shape), dist, resuming, shape)


def build_member(cfg: Config, shared: SharedParts, dist: DistInfo, resuming: bool, shape: "Shape") -> RunParts:
    """Prompts, head, optimizer and engine of one run around the shared backbone; the head and
    prompts start from the RNG state a lone run has at that point, so a pack's member starts
    exactly as it would alone."""
    from spt_dist.model import wrap_backbone

    from .checkpoint import set_rng_state
    from .shape import shaped

    identity_hash, cfg = config_hash(cfg), shaped(cfg, shape)
    set_rng_state(shared.rng_after_backbone)
    model = wrap_backbone(cfg, shared.backbone, shared.index.num_classes, shared.weights_fmt).to(dist.device)
    identity = {"config_hash": identity_hash, "backbone": cfg.model.name, "weights_hash": shared.weights_hash,
                "prompt_shape": list(model.prompts.shape) if model.prompts is not None else None,
                "num_classes": shared.index.num_classes, "method": cfg.method.name,
                "global_batch": shape.global_batch}
    init = _prompt_init(model, cfg, shared, dist, resuming, identity["weights_hash"])
    seed_everything(cfg.run.seed + 1000003 * (dist.rank + 1))  # per-rank streams (prompt dropout)

    global_batch = cfg.data.batch_size * cfg.optim.grad_accum * dist.world_size
    peak_lr, final_lr = effective_lr(cfg.optim, global_batch)
    optimizer = build_optimizer(param_groups(model.named_parameters(), cfg.optim), cfg.optim, peak_lr)
    # whole: an epoch is whole accumulation windows (data/order.py; drop_last=false: kept_last_problem)
    steps_per_epoch = shared.train_data.batches_per_epoch / cfg.optim.grad_accum
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch, peak_lr, final_lr)
    counts = model.param_counts()  # before ZeRO-3 partitions the tensors (numel 0 afterwards)
    engine, _, _ = build_engine(model, optimizer, scheduler, deepspeed_config(cfg, dist.world_size))
    zero_stage, dtype = engine_precision(engine)
    return RunParts(shared.index, shared.train_data, shared.val_data, shared.test_data, model, engine, identity,
                    counts, peak_lr, global_batch, dtype, zero_stage, shared.inputs, init,
                    weights_read=shared.weights_read)


def full_trainable_state(model: "PromptedViT") -> Dict[str, torch.Tensor]:
    """fp32 values of every trainable tensor (the optimizer's master copy under bf16 / ZeRO).

    Collective under ZeRO: every rank must call it.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    out = {}
    for name, p in model.named_trainable_parameters():
        full = safe_get_full_fp32_param(p)
        out[name] = (p.detach() if full is None else full).float().cpu().clone()
    return out


def full_prompts(model: "PromptedViT") -> Optional[torch.Tensor]:
    """fp32 prompts (collective under ZeRO, like full_trainable_state)."""
    from deepspeed.utils import safe_get_full_fp32_param

    p = model.prompts
    if p is None:
        return None
    full = safe_get_full_fp32_param(p)
    return (p.detach() if full is None else full).float().cpu()
