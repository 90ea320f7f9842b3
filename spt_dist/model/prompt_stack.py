"""Per-sample prompts: one pass of a shared backbone over a batch whose samples each carry an
index into a stack of prompt sets and heads.

Invariant: for every sample b with set t = index[b], `MultiPromptViT(x, index)[b, :C_t]` is
what PromptedViT with set t's prompts, depth, pool and head computes for x[b] (token layout
[prefix, prompts, patches]; deep sets overwrite their prompt slots before each block i >= 1;
the backbone's norm, the pool, fc_norm, then an nn.Linear head), up to the rounding of matrix
products whose batch shape differs. Columns past a set's own class count are -inf, so argmax,
softmax and cross-entropy over a row see only that set's classes.

Sets of different prompt lengths: lengths="group" (default) runs one pass per distinct length
in the batch, with no padding at all; lengths="pad" runs one pass with every sample's prompts
padded to the longest and the padded keys masked out of attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .prompted_vit import POOLS, PromptedViT, embed_tokens, pool_tokens

LENGTHS = ("group", "pad")


@dataclass
class PromptSet:
    """One task's tuned tensors: prompts (depth | 1, p, d) or None, and its linear head."""
    prompts: Optional[torch.Tensor]
    head_weight: torch.Tensor  # (C, d)
    head_bias: torch.Tensor  # (C,)
    deep: bool = False
    pool: str = "token"

    @property
    def prompt_length(self) -> int:
        return 0 if self.prompts is None else int(self.prompts.shape[1])

    @classmethod
    def from_model(cls, model: PromptedViT) -> "PromptSet":
        prompts = None if model.prompts is None else model.prompts.detach()
        return cls(prompts, model.head.weight.detach(), model.head.bias.detach(), model.deep, model.pool)


def check_prompt_set(s: PromptSet, depth: int, embed_dim: int) -> Optional[str]:
    """Why `s` cannot run on a backbone of this depth and width (None when it can)."""
    if s.pool not in POOLS:
        return f"pool '{s.pool}' is not one of {', '.join(POOLS)}"
    want = (depth if s.deep else 1, s.prompt_length, embed_dim)
    if s.prompts is not None and tuple(s.prompts.shape) != want:
        return f"prompts of shape {tuple(s.prompts.shape)}, the backbone needs {want}"
    if (s.deep or s.pool == "mean_with_prompts") and s.prompt_length == 0:
        return "deep prompts and pool 'mean_with_prompts' need prompts"
    if s.head_weight.ndim != 2 or s.head_weight.shape[1] != embed_dim or s.head_bias.shape != s.head_weight.shape[:1]:
        return f"a head of shape {tuple(s.head_weight.shape)} / {tuple(s.head_bias.shape)} for width {embed_dim}"
    return None


class PromptStack(nn.Module):
    """T prompt sets stacked, zero-padded to the longest prompts and the most classes.

    prompts (T, D, P, d): D = depth when any set is deep, else 1; a shallow set fills layer 0.
    head_weight (T, C, d), head_bias (T, C); buffers lengths, deep, num_classes, pool (codes
    into POOLS), all (T,). Parameters, so that gradients reach every set (padding gets none).
    """

    def __init__(self, sets: Sequence[PromptSet], depth: int, embed_dim: int) -> None:
        super().__init__()
        if not sets:
            raise ValueError("a PromptStack needs at least one prompt set")
        for i, s in enumerate(sets):
            why = check_prompt_set(s, depth, embed_dim)
            if why:
                raise ValueError(f"prompt set {i}: {why}")
        n_layers = depth if any(s.deep for s in sets) else 1
        n_tokens = max(s.prompt_length for s in sets)
        n_classes = max(s.head_weight.shape[0] for s in sets)
        dtype = sets[0].head_weight.dtype
        prompts = torch.zeros(len(sets), n_layers, n_tokens, embed_dim, dtype=dtype)
        weight = torch.zeros(len(sets), n_classes, embed_dim, dtype=dtype)
        bias = torch.zeros(len(sets), n_classes, dtype=dtype)
        for t, s in enumerate(sets):
            if s.prompts is not None:
                prompts[t, :s.prompts.shape[0], :s.prompt_length] = s.prompts
            weight[t, :s.head_weight.shape[0]] = s.head_weight
            bias[t, :s.head_bias.shape[0]] = s.head_bias
        self.depth, self.embed_dim = depth, embed_dim
        self.prompts = nn.Parameter(prompts)
        self.head_weight = nn.Parameter(weight)
        self.head_bias = nn.Parameter(bias)
        self.register_buffer("lengths", torch.tensor([s.prompt_length for s in sets]), persistent=False)
        self.register_buffer("deep", torch.tensor([s.deep for s in sets]), persistent=False)
        self.register_buffer("num_classes", torch.tensor([s.head_weight.shape[0] for s in sets]), persistent=False)
        self.register_buffer("pool", torch.tensor([POOLS.index(s.pool) for s in sets]), persistent=False)

    def __len__(self) -> int:
        return int(self.lengths.numel())


def _groups(values: torch.Tensor) -> Iterator[Tuple[int, Optional[torch.Tensor]]]:
    """(value, rows) per distinct value; rows None when every row has it (no gather needed)."""
    distinct = torch.unique(values).tolist()
    if len(distinct) == 1:
        yield distinct[0], None
        return
    for v in distinct:
        yield v, (values == v).nonzero().squeeze(1)


class MultiPromptViT(nn.Module):
    """A frozen backbone applying, per sample, the prompt set and head its index names."""

    def __init__(self, backbone: nn.Module, stack: PromptStack, lengths: str = "group") -> None:
        super().__init__()
        if lengths not in LENGTHS:
            raise ValueError(f"lengths='{lengths}' is not allowed; allowed: {', '.join(LENGTHS)}")
        if (stack.depth, stack.embed_dim) != (len(backbone.blocks), backbone.embed_dim):
            raise ValueError(f"the stack is for depth {stack.depth}, width {stack.embed_dim}; the backbone "
                             f"has {len(backbone.blocks)}, {backbone.embed_dim}")
        if not backbone.has_class_token and bool((stack.pool == POOLS.index("token")).any()):
            raise ValueError("pool 'token' needs a backbone with a class token")
        self.backbone, self.stack, self.lengths = backbone, stack, lengths
        self.num_prefix_tokens: int = backbone.num_prefix_tokens

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B, C_max) logits; row b uses set index[b], columns past its class count are -inf."""
        index = index.to(device=x.device, dtype=torch.long)
        pooled = x.new_empty(x.shape[0], self.backbone.embed_dim)
        if self.lengths == "pad":
            pooled = self._pooled(x, index, int(self.stack.lengths[index].max()))
        else:
            for length, rows in _groups(self.stack.lengths[index]):
                if rows is None:
                    pooled = self._pooled(x, index, length)
                else:
                    pooled = pooled.index_put((rows,), self._pooled(x[rows], index[rows], length))
        return self._heads(self.backbone.fc_norm(pooled), index)

    def _pooled(self, x: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
        """(B, d) pooled final tokens of one pass with `length` prompt slots per sample."""
        b, k, p = self.backbone, self.num_prefix_tokens, length
        tokens = embed_tokens(b, x)
        valid = mask = None
        if p and bool((self.stack.lengths[index] < p).any()):  # "pad": padded slots are no keys
            valid = torch.arange(p, device=x.device)[None] < self.stack.lengths[index][:, None]
            ones = valid.new_ones(x.shape[0], tokens.shape[1])
            mask = torch.cat([ones[:, :k], valid, ones[:, k:]], dim=1)[:, None, None, :]
        deep = self.stack.deep[index]
        if p:
            tokens = torch.cat([tokens[:, :k], self._layer_prompts(0, p, index, tokens.dtype), tokens[:, k:]], dim=1)
        any_deep, all_deep = bool(deep.any()), bool(deep.all())
        for i, blk in enumerate(b.blocks):
            if i and p and any_deep:
                new = self._layer_prompts(i, p, index, tokens.dtype)
                if not all_deep:  # shallow samples keep their previous block's prompt outputs
                    new = torch.where(deep[:, None, None], new, tokens[:, k:k + p])
                tokens = torch.cat([tokens[:, :k], new, tokens[:, k + p:]], dim=1)
            tokens = blk(tokens) if mask is None else blk(tokens, attn_mask=mask)
        tokens = b.norm(tokens)
        out = tokens.new_empty(tokens.shape[0], tokens.shape[2])
        for code, rows in _groups(self.stack.pool[index]):
            pool = POOLS[code]
            part = tokens if rows is None else tokens[rows]
            if valid is not None and pool == "mean_with_prompts":
                v = valid if rows is None else valid[rows]
                summed = (part[:, k:k + p] * v[..., None]).sum(1) + part[:, k + p:].sum(1)
                vec = summed / (v.sum(1, keepdim=True) + part.shape[1] - k - p)
            else:
                vec = pool_tokens(part, pool, k, p)
            out = vec if rows is None else out.index_put((rows,), vec)
        return out

    def _layer_prompts(self, layer: int, length: int, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # One layer gathered at a time: the (B, depth, P, d) gather would be ~100 MB at ViT-B, p=50.
        return self.stack.prompts[:, layer, :length][index].to(dtype)

    def _heads(self, pooled: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        s = self.stack
        out = pooled.new_full((pooled.shape[0], s.head_weight.shape[1]), float("-inf"))
        for t, rows in _groups(index):
            c = int(s.num_classes[t])
            part = pooled if rows is None else pooled[rows]
            logits = F.linear(part, s.head_weight[t, :c], s.head_bias[t, :c])  # what nn.Linear computes
            if rows is None:
                out = torch.cat([logits, out[:, c:]], dim=1) if c < out.shape[1] else logits
            else:
                out = out.index_put((rows[:, None], torch.arange(c, device=out.device)[None]), logits)
        return out
