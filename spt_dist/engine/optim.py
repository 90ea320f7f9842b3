"""The two optimisation protocols: VPT's SGD and SPT's AdamW; warmup + cosine.

- sgd (VPT): momentum SGD, one weight decay (optim.weight_decay) on every trainable tensor
  except, with optim.sgd_no_decay=head_bias, the head's bias (VPT's code).
- adamw (SPT): prompts decay with optim.prompt_weight_decay, weight matrices (head, and the
  backbone under method=full) with optim.weight_decay, biases and other 1-d tensors not at all.
- lr_scaling=linear: lr = optim.lr * global_batch / 256 (VPT); optim.min_lr is scaled alike,
  so the schedule's shape does not depend on the batch.
- Schedule: linear warmup over optim.warmup_epochs, then cosine to optim.min_lr; the factor
  changes every optimizer step (per_iteration, SPT) or once per epoch (per_epoch, VPT).
  optim.warmup_from_zero starts the warmup at lr 0 (both official codes), otherwise at
  1 / warmup length, so that the first step already trains.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Tuple

import torch
from torch import nn

from spt_dist.config.batch import lr_scale
from spt_dist.config.schema import OptimConfig


def effective_lr(cfg: OptimConfig, global_batch: int) -> Tuple[float, float]:
    """(peak lr, final lr) after VPT's linear batch scaling when enabled."""
    scale = lr_scale(cfg.lr_scaling, global_batch)
    return cfg.lr * scale, cfg.min_lr * scale


HEAD_BIAS = "head.bias"  # PromptedViT's classifier bias: VPT's `last_layer.bias`


def _is_prompt(name: str) -> bool:
    return name == "prompts" or name.startswith("prompts.") or ".prompts" in name


def param_groups(named: Iterable[Tuple[str, nn.Parameter]], cfg: OptimConfig) -> List[Dict]:
    """Split trainable parameters into weight-decay groups; frozen ones never enter."""
    named = [(n, p) for n, p in named if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    if cfg.name == "sgd":
        spared = [p for n, p in named if cfg.sgd_no_decay == "head_bias" and n == HEAD_BIAS]
        rest = [p for n, p in named if not (cfg.sgd_no_decay == "head_bias" and n == HEAD_BIAS)]
        groups = [{"params": rest, "weight_decay": cfg.weight_decay, "group": "all"},
                  {"params": spared, "weight_decay": 0.0, "group": "head_bias"}]
        return [g for g in groups if g["params"]]
    groups = {"prompts": [], "decay": [], "no_decay": []}
    for name, p in named:
        if _is_prompt(name):
            groups["prompts"].append(p)
        elif p.ndim <= 1 or name.endswith(".bias"):
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    decay = {"prompts": cfg.prompt_weight_decay, "decay": cfg.weight_decay, "no_decay": 0.0}
    return [{"params": ps, "weight_decay": decay[g], "group": g} for g, ps in groups.items() if ps]


def build_optimizer(groups: List[Dict], cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    # A torch optimizer handed to DeepSpeed: no fused-Adam build, same maths on CPU and GPU.
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float,
              from_zero: bool = False) -> float:
    """Linear warmup to 1 over warmup_steps (from 0 when `from_zero`, else from 1/warmup_steps),
    then cosine to min_ratio at total_steps. A "step" is an optimizer step or, per epoch, an epoch."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step if from_zero else step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule(cfg: OptimConfig, steps_per_epoch: float, min_ratio: float) -> Callable[[int], float]:
    """Optimizer step -> lr factor, per cfg.lr_schedule."""
    if cfg.lr_schedule == "per_epoch":
        warmup = int(cfg.warmup_epochs)
        return lambda s: lr_factor(int(s / steps_per_epoch), cfg.epochs, warmup, min_ratio, cfg.warmup_from_zero)
    total = max(1, int(cfg.epochs * steps_per_epoch))
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    return lambda s: lr_factor(s, total, warmup, min_ratio, cfg.warmup_from_zero)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: float,
                    peak_lr: float, final_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """DeepSpeed steps it once per optimizer step; per_epoch holds the factor within an epoch."""
    ratio = final_lr / peak_lr if peak_lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(cfg, steps_per_epoch, ratio))


def expected_state_bytes(cfg: OptimConfig, trainable: int) -> int:
    """Optimizer moments the protocol needs: AdamW 2 fp32 per parameter, SGD momentum 1."""
    per_param = 2 if cfg.name == "adamw" else (1 if cfg.momentum > 0 else 0)
    return per_param * 4 * trainable
