"""A linear probe's feature cache: the frozen backbone runs once per sample, not every epoch.

Valid when nothing between the pixels and the head changes during training: only head tensors
train (no prompts; PromptedViT keeps a frozen backbone in eval mode, so neither dropout nor
drop-path draws) and the training transform draws nothing (ImageTransform.random is false:
presets vtab, spt_vtab, small). Then a sample's pooled features (forward_head(pre_logits=True):
after fc_norm, in the engine's dtype) are the same at every step, and:

- training: every selected training sample's features are computed once, each rank a
  contiguous share read through the training transform (DrawnData, one draw per sample), and
  gathered onto every rank's device, keyed by sample key. `FeatureTrain.epoch` follows
  TrainData's plan (the same keys per batch, bad samples padded and counted the same way), so
  the head sees the same samples in the same order as on the plain path.
- validation: each rank keeps the features of its own share of the split (EvalData's batches).
- test: evaluated once, through the backbone, as on the plain path.

The numbers differ from the plain path only by float summation order: a feature row is
computed inside a batch of eval_batch_size other samples instead of its training batch, and a
matmul kernel's row results may depend on the batch shape. Nothing here depends on the number
of heads: any head of the backbone's width can consume the same features.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional, Tuple

import torch

from spt_dist.config import Config
from spt_dist.distributed import DistInfo

from .feature_data import FeatureCache, FeatureEval, FeatureTrain

if TYPE_CHECKING:
    from .assemble import RunParts

POOLED = {"pooled": True}  # the model call on cached features: only the head runs


def data_problem(cfg: Config) -> Optional[str]:
    """What in the data settings keeps the feature cache from serving a linear probe, or None."""
    from spt_dist.data.transforms import draws_randomly

    if draws_randomly(cfg.data.preset, train=True):
        return f"data.preset={cfg.data.preset} draws random crops and flips for training"
    if cfg.data.shuffle != "exact":
        return "data.shuffle=stream: the batch plan is known only when the shards are read"
    return None


def feature_cache_problem(cfg: Config, parts: "RunParts") -> Optional[str]:
    """Why the feature cache cannot serve this run, or None when it can."""
    if cfg.method.feature_cache == "never":
        return "method.feature_cache=never"
    trainable = [n for n, _ in parts.model.named_trainable_parameters() if not n.startswith("head.")]
    if trainable:
        return f"more than the head trains (first: {trainable[0]})"
    problem = data_problem(cfg)
    if problem:
        return problem
    if parts.zero_stage == 3:
        return "ZeRO-3 partitions the frozen backbone"
    rows = parts.train_data.num_samples + (len(parts.val_data.locations()) if parts.val_data else 0)
    need = rows * parts.model.embed_dim * torch.finfo(parts.dtype).bits // 8
    if need > cfg.data.cache_mb * 2 ** 20:
        return f"the features need {need / 2 ** 20:.1f} MiB per rank, more than data.cache_mb={cfg.data.cache_mb}"
    return None


@torch.no_grad()
def _pooled(parts: "RunParts", images: torch.Tensor) -> torch.Tensor:
    model = parts.engine.module
    x = images.to(parts.engine.device, parts.dtype, non_blocking=True)
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _local_train(cfg: Config, parts: "RunParts", dist: DistInfo) -> Tuple[torch.Tensor, torch.Tensor]:
    """This rank's share: features (n, d) as float32 and (position, label) rows (n, 2)."""
    from spt_dist.data import DrawnData

    train = parts.train_data
    position = {k: i for i, k in enumerate(train.selected_keys)}
    drawn = DrawnData(cfg.data, parts.index, cfg.data.train_split, *parts.inputs, dist.rank, dist.world_size,
                      draws=dict.fromkeys(train.selected_keys, 1), seed=cfg.run.seed)
    feats, meta = [torch.zeros(0, parts.model.embed_dim)], [torch.zeros(0, 2, dtype=torch.int64)]
    for images, labels, keys in drawn:
        feats.append(_pooled(parts, images).float().cpu())
        meta.append(torch.stack([torch.tensor([position[k] for k in keys]), labels], dim=1))
    return torch.cat(feats), torch.cat(meta)


def _local_val(parts: "RunParts") -> FeatureEval:
    val = FeatureEval()
    for images, labels, keys in parts.val_data:
        val.append((_pooled(parts, images), labels.to(parts.engine.device), keys))
    val.bad_samples = parts.val_data.bad_samples
    return val


def build_feature_cache(cfg: Config, parts: "RunParts", dist: DistInfo) -> Tuple[Optional[FeatureCache], str]:
    """(the cache, or None, and why not). Collective: every rank calls it; a read error on any
    rank is raised on all of them before the gather."""
    problem = feature_cache_problem(cfg, parts)
    if problem is not None:
        return None, problem
    t0 = time.perf_counter()
    feats, meta = dist.comm.agreed(_local_train, cfg, parts, dist)
    val = dist.comm.agreed(_local_val, parts) if parts.val_data is not None else None
    feats, meta = torch.cat(dist.comm.all_gather_rows(feats)), torch.cat(dist.comm.all_gather_rows(meta))
    keys = parts.train_data.selected_keys
    rows = {keys[p]: i for i, p in enumerate(meta[:, 0].tolist())}  # bad samples have no row
    device = parts.engine.device
    train = FeatureTrain(parts.train_data, feats.to(device, parts.dtype), meta[:, 1].to(device), rows)
    held = train.features.numel() * train.features.element_size() + sum(
        x.numel() * x.element_size() for x, _, _ in (val or []))
    return FeatureCache(train, val, {"samples": len(rows), "bytes": held,
                                     "seconds": round(time.perf_counter() - t0, 3)}), ""
