"""One streaming, un-prompted forward pass of the frozen backbone into bounded candidate pools."""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from spt_dist.data.order import draw_name

from .candidates import CandidatePool, window_tokens
from .pass_plan import InitPlan
from .priority import token_priorities

Batch = Tuple[torch.Tensor, torch.Tensor, Sequence[str]]
Pools = Dict[str, List[CandidatePool]]  # kind -> one pool per layer


def _copies(keys: List[str], draws: Optional[Mapping[str, int]]) -> Tuple[List[int], List[str]]:
    """Rows of the batch to repeat and the key naming each copy's priorities: an image drawn
    k times contributes its tokens k times, each copy with its own priorities (copy 0 keeps
    the plain key, so one draw each is exactly the draw-free result)."""
    if draws is None:
        return list(range(len(keys))), keys
    rows = [i for i, k in enumerate(keys) for _ in range(draws[k])]
    names = [draw_name(k, c) for k in keys for c in range(draws[k])]
    return rows, names


def stream_candidates(model: torch.nn.Module, batches: Iterable[Batch], plan: InitPlan,
                      device: torch.device | str, progress: bool = False,
                      total: Optional[int] = None,
                      draws: Optional[Mapping[str, int]] = None) -> Tuple[Pools, int]:
    """Feed every (images, labels, keys) batch through `model.layer_tokens` once (no grad,
    eval mode) and keep per layer and kind the `plan.capacity` lowest-priority candidates.
    `draws` (key -> times drawn, for images drawn with replacement) repeats an image's tokens.
    Returns the pools and the number of images seen by this rank."""
    width = int(model.embed_dim)
    pools: Pools = {k: [CandidatePool(plan.capacity, width, device) for _ in range(plan.layers)]
                    for k in plan.kinds}
    layers = list(range(plan.layers))
    dtype = next(model.backbone.parameters()).dtype  # a bf16 backbone wants bf16 inputs
    was_training = model.training
    model.eval()
    images_seen = 0
    bar = tqdm(total=total, desc="prototype init", unit="batch", disable=not progress, dynamic_ncols=True)
    try:
        with torch.no_grad():
            for images, _, keys in batches:
                keys = list(keys)
                rows, names = _copies(keys, draws)
                tokens = model.layer_tokens(images.to(device=device, dtype=dtype), layers=layers)
                for layer, tok in enumerate(tokens):
                    tok = tok.float()[rows] if draws is not None else tok.float()
                    for kind, per_layer in pools.items():
                        feats = window_tokens(tok, plan.prompt_length, kind, plan.window_layout)
                        prio = token_priorities(plan.seed, f"{kind}/{layer}", names, feats.shape[1])
                        per_layer[layer].add(prio.flatten(), feats.flatten(0, 1))
                images_seen += len(keys)
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return pools, images_seen
