"""Backbone capacities by name. Plain data: importing this module loads neither torch nor timm,
so configs can be validated on a login node in milliseconds."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    img_size: int = 224
    in_chans: int = 3
    mlp_ratio: float = 4.0
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False
    mean: Tuple[float, float, float] = INCEPTION_MEAN
    std: Tuple[float, float, float] = INCEPTION_STD
    extra: Dict[str, object] = field(default_factory=dict)


def _specs(*specs: BackboneSpec) -> Dict[str, BackboneSpec]:
    return {s.name: s for s in specs}


BACKBONES: Dict[str, BackboneSpec] = _specs(
    # Small sizes for tests and CPU demos.
    BackboneSpec("vit_micro_p4_16", patch_size=4, embed_dim=32, depth=3, num_heads=2, img_size=16),
    BackboneSpec("vit_micro_reg_p4_16", patch_size=4, embed_dim=32, depth=3, num_heads=2, img_size=16,
                 reg_tokens=2),
    BackboneSpec("vit_micro_noembcls_p4_16", patch_size=4, embed_dim=32, depth=3, num_heads=2,
                 img_size=16, no_embed_class=True),
    BackboneSpec("vit_tiny_p7_28", patch_size=7, embed_dim=96, depth=4, num_heads=3, img_size=28),
    BackboneSpec("vit_mini_p7_28", patch_size=7, embed_dim=128, depth=6, num_heads=4, img_size=28),
    BackboneSpec("vit_small_p7_28", patch_size=7, embed_dim=192, depth=8, num_heads=6, img_size=28),
    BackboneSpec("vit_s16", patch_size=16, embed_dim=384, depth=12, num_heads=6),
    # The capacities of the papers.
    BackboneSpec("vit_b16", patch_size=16, embed_dim=768, depth=12, num_heads=12),
    BackboneSpec("vit_l16", patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    BackboneSpec("vit_h14", patch_size=14, embed_dim=1280, depth=32, num_heads=16),
)


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry of `name`; a ValueError lists the known names otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone '{name}'; known backbones: {', '.join(sorted(BACKBONES))}") from None


# MAE and MoCo v3 were pretrained on ImageNet-1k with torchvision's statistics, whatever the
# registry's default (Google's ImageNet-21k ViTs use 0.5 / 0.5).
_FORMAT_NORMALIZATION = {"mae": (IMAGENET_MEAN, IMAGENET_STD), "mocov3": (IMAGENET_MEAN, IMAGENET_STD)}


def normalization(name: str, checkpoint_format: Optional[str] = None
                  ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) of the input normalisation the backbone was pretrained with.

    `checkpoint_format` ("mae", "mocov3") overrides the registry's statistics with those
    the self-supervised recipes used; "timm", "npz", "auto" or None keep the registry's.
    """
    spec = backbone_spec(name)
    mean, std = _FORMAT_NORMALIZATION.get(checkpoint_format or "", (spec.mean, spec.std))
    return tuple(mean), tuple(std)
