"""One training step of a pack: G members' prompts over ONE pass of their shared frozen backbone.

Invariant: member g's logits, loss and gradients are those its own PromptedViT computes for the
batch in a lone run (`train_step`), up to the rounding of matrix products over G x B rows
instead of B. The patch embedding (no prompts yet) is computed once on the B images and
repeated; from the first block on the G x B rows carry each member's prompts (deep: overwritten
before every block, as PromptedViT does); each member's pool, fc_norm and head see its own B
rows. Prompt dropout draws from each member's own stream (TrainRng), layer after layer, so the
masks are the lone run's.

The summed loss (each member's a mean over its own B, so each gets its lone gradient) is
backpropagated once; then every member's DeepSpeed engine reduces its own gradients across
ranks (ZeRO 0) and steps its own optimizer and lr schedule (clipping, accumulation boundary).
"""
from __future__ import annotations

import contextlib
from typing import Any, List, Sequence

import torch
from torch.nn import functional as F

from spt_dist.model.prompted_vit import PromptedViT, embed_tokens, pool_tokens

from .checkpoint import TrainRng


def _member_prompts(models: Sequence[PromptedViT], rngs: Sequence[TrainRng], layer: int, batch: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """(G x B, p, d): every member's (dropped-out) prompts of `layer`, member after member."""
    out = []
    for model, rng in zip(models, rngs):
        draws = rng.active() if model.prompt_dropout.p > 0 else contextlib.nullcontext()
        with draws:
            out.append(model._layer_prompts(layer, batch).to(dtype))
    return torch.cat(out, dim=0)


def pack_logits(models: Sequence[PromptedViT], rngs: Sequence[TrainRng], images: torch.Tensor) -> List[torch.Tensor]:
    """Per member, its (B, C) logits of `images`; one backbone pass over G x B rows."""
    lead = models[0]
    k, p, g, batch = lead.num_prefix_tokens, lead.prompt_length, len(models), images.shape[0]
    base = embed_tokens(lead.backbone, images)  # the prefix every member shares
    x = base.repeat(g, 1, 1)
    x = torch.cat([x[:, :k], _member_prompts(models, rngs, 0, batch, x.dtype), x[:, k:]], dim=1)
    for i in range(lead.depth):
        if i > 0 and lead.deep:
            x = torch.cat([x[:, :k], _member_prompts(models, rngs, i, batch, x.dtype), x[:, k + p:]], dim=1)
        x = lead._block(i, x)
    pooled = lead.backbone.fc_norm(pool_tokens(lead.backbone.norm(x), lead.pool, k, p)).view(g, batch, -1)
    return [model.head(pooled[j]) for j, model in enumerate(models)]


def pack_train_step(engines: Sequence[Any], images: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype,
                    rngs: Sequence[TrainRng], label_smoothing: Sequence[float]) -> torch.Tensor:
    """Forward, one backward, every member's step; the (G,) losses, detached, on the device."""
    device = engines[0].device
    models = [e.module for e in engines]
    logits = pack_logits(models, rngs, images.to(device, dtype, non_blocking=True))
    labels = labels.to(device, non_blocking=True)
    losses = torch.stack([F.cross_entropy(z.float(), labels, label_smoothing=s)
                          for z, s in zip(logits, label_smoothing)])
    (losses.sum() / engines[0].gradient_accumulation_steps()).backward()
    for engine in engines:
        if engine.enable_backward_allreduce:  # several ranks: what engine.backward would reduce
            engine.allreduce_gradients()
        engine.step()
    return losses.detach()
