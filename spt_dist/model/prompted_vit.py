"""One wrapper for every method: a (frozen) timm ViT with optional VPT prompts and a linear head.

Token layout inside the blocks: [prefix (cls, registers), prompts (p), patches (N)].
Prompts enter after the position embedding (they get none) and after the backbone's
`patch_drop` / `norm_pre`, i.e. they are exactly the first block's input at their slots.
Deep: before block i >= 1 the prompt slots are overwritten with layer i's prompts.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

POOLS = ("token", "mean", "mean_with_prompts")
HEAD_INITS = ("trunc_normal", "kaiming")
VPT_HEAD_BIAS = -math.log(99.0)  # VPT's MLP(special_bias=True): sigmoid prior of 0.01


def init_head(head: nn.Linear, kind: str = "trunc_normal", std: float = 0.02) -> None:
    """trunc_normal: timm's / SPT's head (N(0, std) cut to [-2, 2] as trunc_normal_ does, bias 0); kaiming:
    VPT's (kaiming-normal weights, fan_out, a=0; every bias -log(99)). Never zeros, so that
    the prompts receive a gradient from the first step."""
    if kind == "trunc_normal":
        nn.init.trunc_normal_(head.weight, std=std)
        nn.init.zeros_(head.bias)
    elif kind == "kaiming":
        nn.init.kaiming_normal_(head.weight, a=0, mode="fan_out")
        nn.init.constant_(head.bias, VPT_HEAD_BIAS)
    else:
        raise ValueError(f"head_init='{kind}' is not allowed; allowed: {', '.join(HEAD_INITS)}")


def vpt_uniform_bound(patch_size: Tuple[int, int], embed_dim: int) -> float:
    """VPT's prompt init range v: prompts ~ U(-v, v), v = sqrt(6 / (3 * ph * pw + d))."""
    ph, pw = patch_size
    return math.sqrt(6.0 / float(3 * ph * pw + embed_dim))


def embed_tokens(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images -> the first block's input without prompts: [prefix, patches] (B, k + N, d)."""
    x = backbone._pos_embed(backbone.patch_embed(x))  # prefix tokens joined, position embedding added
    return backbone.norm_pre(backbone.patch_drop(x))


def pool_tokens(tokens: torch.Tensor, pool: str, num_prefix: int, prompt_length: int) -> torch.Tensor:
    """(B, d) vector for the head from the final tokens [prefix (k), prompts (p), patches]."""
    k, p = num_prefix, prompt_length
    if pool == "token":
        return tokens[:, 0]
    if pool == "mean":
        return tokens[:, k + p:].mean(dim=1)
    return tokens[:, k:].mean(dim=1)


class PromptedViT(nn.Module):
    """VPT / SPT (shallow or deep), linear probe (p=0) and full fine-tuning (train_backbone).

    Pooling for the head: "token" = class token; "mean" = mean over patch tokens (prefix and
    prompts excluded); "mean_with_prompts" = mean over prompts and patches (VPT's MAE code).
    Norms follow timm: the backbone's `norm` is applied to every token in `forward_features`,
    its `fc_norm` (MAE's global-pool norm; Identity otherwise) to the pooled vector.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, prompt_length: int = 0, deep: bool = False,
                 prompt_dropout: float = 0.0, pool: str = "token", train_backbone: bool = False,
                 grad_checkpointing: bool = False, head_init: str = "trunc_normal",
                 head_init_std: float = 0.02) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool='{pool}' is not allowed; allowed: {', '.join(POOLS)}")
        if pool == "token" and not backbone.has_class_token:
            raise ValueError("pool='token' needs a backbone with a class token; use pool='mean'")
        if prompt_length < 0 or num_classes < 1:
            raise ValueError(f"need prompt_length >= 0 and num_classes >= 1 "
                             f"(got {prompt_length}, {num_classes})")
        if (deep or pool == "mean_with_prompts") and prompt_length == 0:
            raise ValueError("deep prompts and pool='mean_with_prompts' need prompt_length >= 1")
        self.backbone = backbone
        self.embed_dim: int = backbone.embed_dim
        self.depth: int = len(backbone.blocks)
        self.num_prefix_tokens: int = backbone.num_prefix_tokens
        self.prompt_length = prompt_length
        self.deep = deep
        self.pool = pool
        self.train_backbone = train_backbone
        self.grad_checkpointing = grad_checkpointing

        self.prompts: Optional[nn.Parameter] = None
        if prompt_length:
            self.prompts = nn.Parameter(torch.empty(self.depth if deep else 1, prompt_length, self.embed_dim))
            v = vpt_uniform_bound(tuple(backbone.patch_embed.patch_size), self.embed_dim)
            nn.init.uniform_(self.prompts, -v, v)
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        self.head = nn.Linear(self.embed_dim, num_classes)
        init_head(self.head, head_init, head_init_std)

        for p in self.backbone.parameters():
            p.requires_grad_(train_backbone)
        self.train(self.training)

    def train(self, mode: bool = True) -> "PromptedViT":
        # A frozen encoder stays in eval mode (no drop-path, no dropout): only prompt dropout trains.
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self

    # -- tokens -------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return embed_tokens(self.backbone, x)

    def _layer_prompts(self, layer: int, batch: int) -> torch.Tensor:
        return self.prompt_dropout(self.prompts[layer].expand(batch, -1, -1))

    def _insert_prompts(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        k, p = self.num_prefix_tokens, self.prompt_length
        prompts = self._layer_prompts(layer, x.shape[0]).to(x.dtype)
        rest = x[:, k:] if layer == 0 else x[:, k + p:]  # deep: drop the previous block's prompt outputs
        return torch.cat([x[:, :k], prompts, rest], dim=1)

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        blk = self.backbone.blocks[i]
        if self.grad_checkpointing and torch.is_grad_enabled():
            # Non-reentrant: reentrant checkpointing drops the prompts' gradients when a
            # segment's input comes from frozen layers.
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, prefix + p + N, d) tokens after the last block and the backbone's final norm."""
        x = self._embed(x)
        if self.prompts is not None:
            x = self._insert_prompts(x, 0)
        for i in range(self.depth):
            if i > 0 and self.deep:
                x = self._insert_prompts(x, i)
            x = self._block(i, x)
        return self.backbone.norm(x)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits; pre_logits: the (B, d) pooled features after fc_norm, what the head sees (timm's flag)."""
        pooled = self.backbone.fc_norm(pool_tokens(tokens, self.pool, self.num_prefix_tokens, self.prompt_length))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """Logits of images; pooled: `x` already is forward_head(..., pre_logits=True)'s output
        (a linear probe's cached features), so only the head runs."""
        return self.head(x) if pooled else self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def layer_tokens(self, x: torch.Tensor, layers: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
        """Patch tokens per layer from ONE un-prompted pass (SPT's prototype candidates).

        Layer 0 = patch-embedding output BEFORE the position embedding (SPT's choice);
        layer i >= 1 = output of block i-1. Prefix tokens are excluded, prompts never inserted.
        Returns tensors of shape (B, N_patches, d) for `layers` (default: all `depth` layers,
        in the order asked); blocks past the deepest requested layer are not run.
        """
        wanted = list(range(self.depth)) if layers is None else list(layers)
        bad = [i for i in wanted if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"layers {bad} out of range: the backbone has layers 0..{self.depth - 1}")
        b, k = self.backbone, self.num_prefix_tokens
        patches = b.patch_embed(x)
        found: Dict[int, torch.Tensor] = {0: patches.reshape(patches.shape[0], -1, patches.shape[-1])}
        h = b.norm_pre(b._pos_embed(patches))  # no patch_drop: every patch is a candidate
        for i in range(1, max(wanted, default=0) + 1):
            h = b.blocks[i - 1](h)
            found[i] = h[:, k:]
        return [found[i] for i in wanted]

    # -- parameters ---------------------------------------------------------------------------
    def named_trainable_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for _, p in self.named_trainable_parameters())

    def param_counts(self) -> Dict[str, int]:
        """Element counts: trainable, backbone (all of it, frozen or not), prompts, head."""
        return {
            "trainable": sum(p.numel() for _, p in self.named_trainable_parameters()),
            "backbone": sum(p.numel() for p in self.backbone.parameters()),
            "prompts": 0 if self.prompts is None else self.prompts.numel(),
            "head": sum(p.numel() for p in self.head.parameters()),
        }
