"""Backbone capacities by name. Plain data: importing this module loads neither torch nor timm,
so configs can be validated on a login node in milliseconds."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

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
    BackboneSpec("vit_s16", patch_size=16, embed_dim=384, depth=12, num_heads=6),
    # The capacities of the papers.
    BackboneSpec("vit_b16", patch_size=16, embed_dim=768, depth=12, num_heads=12),
    BackboneSpec("vit_l16", patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    BackboneSpec("vit_h14", patch_size=14, embed_dim=1280, depth=32, num_heads=16),
)
