"""Parameter counts of the papers' capacities, from the ViT architecture formula.

The backbones are built at a small image size (few position embeddings) so the test is fast;
the formula then gives the 224-pixel counts the papers quote.
"""
import gc

import pytest

from spt_dist.model import PromptedViT, backbone_spec, build_backbone


def vit_params(patch: int, d: int, depth: int, num_patches: int, in_chans: int = 3, mlp: int = 4) -> int:
    """Standard ViT with a class token, qkv biases and a final LayerNorm."""
    embed = d * in_chans * patch * patch + d           # patch conv + bias
    tokens = d + (num_patches + 1) * d                 # class token + position embedding
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * mlp * d + mlp * d) + (mlp * d * d + d)
    return embed + tokens + depth * block + 2 * d


def test_vit_h14_at_224_is_630_8m():
    assert round(vit_params(14, 1280, 32, 16 * 16) / 1e6, 1) == 630.8
    assert vit_params(16, 768, 12, 14 * 14) == 85_798_656  # ViT-B/16, the "85.8M" of full fine-tuning


def test_vit_b16_prompt_counts():
    bb = build_backbone("vit_b16", img_size=32)
    assert bb.embed_dim == 768 and len(bb.blocks) == 12
    shallow = PromptedViT(bb, num_classes=100, prompt_length=50).param_counts()
    deep = PromptedViT(bb, num_classes=100, prompt_length=50, deep=True).param_counts()
    assert shallow["prompts"] == 38_400 and deep["prompts"] == 460_800
    assert shallow["head"] == deep["head"] == 768 * 100 + 100
    assert deep["trainable"] == 460_800 + 76_900
    assert shallow["backbone"] == vit_params(16, 768, 12, 2 * 2)
    linear = PromptedViT(bb, num_classes=100).param_counts()
    assert linear["trainable"] == 76_900 and linear["prompts"] == 0


@pytest.mark.parametrize("name, width, depth, img", [("vit_l16", 1024, 24, 32), ("vit_h14", 1280, 32, 28)])
def test_large_capacities_build(name, width, depth, img):
    spec = backbone_spec(name)
    bb = build_backbone(name, img_size=img)  # ViT-H: ~2.5 GB of weights, built once
    grid = img // spec.patch_size
    assert (bb.embed_dim, len(bb.blocks), bb.patch_embed.patch_size) == (width, depth, (spec.patch_size,) * 2)
    counts = PromptedViT(bb, num_classes=10, prompt_length=20, deep=True).param_counts()
    assert counts["backbone"] == vit_params(spec.patch_size, width, depth, grid * grid)
    assert counts["prompts"] == depth * 20 * width
    del bb
    gc.collect()
