"""PromptedViT against a hand-written VPT forward pass, gradients, modes, checkpointing, layer tokens."""
import pytest
import torch

from spt_dist.model import PromptedViT, build_backbone, vpt_uniform_bound

MICRO = ("vit_micro_p4_16", "vit_micro_reg_p4_16", "vit_micro_noembcls_p4_16")


def _backbone(name: str = "vit_micro_p4_16", seed: int = 0):
    """A micro ViT with every tensor random, so that no slot or norm can hide behind zeros/ones."""
    torch.manual_seed(seed)
    bb = build_backbone(name)
    with torch.no_grad():
        for p in bb.parameters():
            p.normal_(0.0, 0.2)
    return bb


def _images(bb, n: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, bb.patch_embed.proj.in_channels, *bb.patch_embed.img_size, generator=g)


def _reference(bb, prompts, deep, pool, x):
    """VPT step by step from the backbone's pieces: [prefix, prompts, patches] after pos embed."""
    b = x.shape[0]
    patches = bb.patch_embed.proj(x).flatten(2).transpose(1, 2)  # conv patchify, (B, N, d)
    prefix = []
    if bb.cls_token is not None:
        prefix.append(bb.cls_token.expand(b, -1, -1))
    if bb.reg_token is not None:
        prefix.append(bb.reg_token.expand(b, -1, -1))
    k = sum(t.shape[1] for t in prefix)
    if bb.no_embed_class:  # position embedding on patches only
        h = torch.cat(prefix + [patches + bb.pos_embed], dim=1)
    else:
        h = torch.cat(prefix + [patches], dim=1) + bb.pos_embed
    p = 0 if prompts is None else prompts.shape[1]
    if p:
        h = torch.cat([h[:, :k], prompts[0].expand(b, -1, -1), h[:, k:]], dim=1)
    for i, blk in enumerate(bb.blocks):
        if deep and i > 0:
            h = h.clone()
            h[:, k:k + p] = prompts[i]
        h = blk(h)
    h = bb.norm(h)
    if pool == "token":
        z = h[:, 0]
    elif pool == "mean":
        z = h[:, k + p:].mean(1)
    else:
        z = h[:, k:].mean(1)
    return h, bb.fc_norm(z)


@pytest.mark.parametrize("name", MICRO)
@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("pool", ["token", "mean", "mean_with_prompts"])
def test_forward_equals_step_by_step_vpt(name, deep, pool):
    bb = _backbone(name)
    model = PromptedViT(bb, num_classes=5, prompt_length=3, deep=deep, pool=pool).eval()
    with torch.no_grad():
        model.prompts.normal_(0.0, 1.0)
    x = _images(bb)
    tokens, pooled = _reference(bb, model.prompts, deep, pool, x)
    with torch.no_grad():
        got = model.forward_features(x)
        torch.testing.assert_close(got, tokens, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x), model.head(pooled), rtol=1e-5, atol=1e-5)
    assert got.shape == (2, bb.num_prefix_tokens + 3 + 16, 32)


def test_deep_prompts_differ_from_shallow_and_every_layer_counts():
    bb = _backbone()
    deep = PromptedViT(bb, 5, prompt_length=3, deep=True).eval()
    shallow = PromptedViT(bb, 5, prompt_length=3, deep=False).eval()
    with torch.no_grad():
        shallow.prompts.copy_(deep.prompts[:1])
        shallow.head.load_state_dict(deep.head.state_dict())
        x = _images(bb)
        assert not torch.allclose(deep.forward_features(x)[:, 0], shallow.forward_features(x)[:, 0], atol=1e-3)
        before = deep.forward_features(x)[:, 0]  # the last layer's prompts are used, not only layer 0's
        deep.prompts[2].add_(torch.randn_like(deep.prompts[2]))  # not a constant: LayerNorm removes those
        assert not torch.allclose(deep.forward_features(x)[:, 0], before, atol=1e-3)


def test_no_prompts_equals_timm_forward():
    bb = _backbone()
    model = PromptedViT(bb, 5).eval()
    x = _images(bb)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), bb.forward_features(x))


def test_prompt_slot_does_not_change_class_token():
    # Attention is permutation-equivariant: prompts after the patches give the same class token.
    bb = _backbone()
    model = PromptedViT(bb, 5, prompt_length=4).eval()
    x = _images(bb)
    with torch.no_grad():
        h = bb._pos_embed(bb.patch_embed(x))
        h = torch.cat([h, model.prompts[0].expand(2, -1, -1)], dim=1)
        cls = bb.norm(bb.blocks(h))[:, 0]
        torch.testing.assert_close(model.forward_features(x)[:, 0], cls, rtol=1e-5, atol=1e-5)


def test_vpt_uniform_init_range():
    assert vpt_uniform_bound((16, 16), 768) == pytest.approx(0.0625)
    bb = _backbone()
    model = PromptedViT(bb, 5, prompt_length=50, deep=True)
    v = vpt_uniform_bound((4, 4), 32)
    assert model.prompts.shape == (3, 50, 32)
    assert model.prompts.abs().max() <= v and model.prompts.abs().max() > 0.9 * v
    assert PromptedViT(bb, 5, prompt_length=7).prompts.shape == (1, 7, 32)
    assert PromptedViT(bb, 5).prompts is None


def test_only_prompts_and_head_get_gradients():
    bb = _backbone()
    model = PromptedViT(bb, 5, prompt_length=3, deep=True).train()
    assert {n for n, _ in model.named_trainable_parameters()} == {"prompts", "head.weight", "head.bias"}
    torch.nn.functional.cross_entropy(model(_images(bb)), torch.tensor([1, 3])).backward()
    assert all(p.grad is None for p in bb.parameters())
    assert model.prompts.grad.abs().min(dim=-1).values.gt(0).all()  # every layer's every prompt
    assert model.head.weight.grad.abs().sum() > 0


def test_train_backbone_gets_gradients_and_trains():
    bb = _backbone()
    model = PromptedViT(bb, 5, train_backbone=True).train()
    assert bb.training and all(p.requires_grad for p in bb.parameters())
    model(_images(bb)).sum().backward()
    assert all(p.grad is not None for p in bb.parameters())
    assert model.param_counts()["trainable"] == model.param_counts()["backbone"] + 165


def test_backbone_stays_in_eval_mode():
    bb = _backbone()
    model = PromptedViT(bb, 5, prompt_length=3, prompt_dropout=0.1)
    model.train()
    assert model.training and model.prompt_dropout.training
    assert not any(m.training for m in bb.modules())
    model.eval()
    model.train(True)
    assert not bb.training


def test_prompt_dropout_only_in_train_mode():
    bb = _backbone()
    model = PromptedViT(bb, 5, prompt_length=8, deep=True, prompt_dropout=0.5)
    plain = PromptedViT(bb, 5, prompt_length=8, deep=True)
    plain.load_state_dict(model.state_dict())
    x = _images(bb)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x), plain.eval()(x))
        model.train()
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
    assert not torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, plain(x), atol=1e-4)


@pytest.mark.parametrize("deep", [False, True])
def test_grad_checkpointing_same_outputs_and_prompt_grads(deep):
    bb = _backbone()
    x, y = _images(bb, n=3), torch.tensor([0, 2, 4])
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = PromptedViT(bb, 5, prompt_length=3, deep=deep, grad_checkpointing=ckpt).train()
        calls = []
        hook = bb.blocks[1].register_forward_pre_hook(lambda *_: calls.append(1))
        out = model(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        hook.remove()
        results.append((out.detach(), model.prompts.grad.clone(), len(calls)))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert results[0][1].abs().sum() > 0
    assert (results[0][2], results[1][2]) == (1, 2)  # the block really was recomputed in backward


@pytest.mark.parametrize("name", MICRO)
def test_layer_tokens_are_one_unprompted_pass(name):
    bb = _backbone(name)
    model = PromptedViT(bb, 5, prompt_length=3, deep=True)
    x = _images(bb)
    layers = model.layer_tokens(x)
    assert len(layers) == 3 and all(t.shape == (2, 16, 32) for t in layers)
    with torch.no_grad():
        patches = bb.patch_embed.proj(x).flatten(2).transpose(1, 2)
        torch.testing.assert_close(layers[0], patches)  # before the position embedding
        h = bb._pos_embed(bb.patch_embed(x))
        k = bb.num_prefix_tokens
        for i in (1, 2):
            h = bb.blocks[i - 1](h)
            torch.testing.assert_close(layers[i], h[:, k:])
    picked = model.layer_tokens(x, layers=[2, 0])
    torch.testing.assert_close(picked[0], layers[2])
    torch.testing.assert_close(picked[1], layers[0])
    with pytest.raises(ValueError, match="out of range"):
        model.layer_tokens(x, layers=[3])


def test_invalid_settings_are_clear_errors():
    bb = _backbone()
    with pytest.raises(ValueError, match="allowed: token, mean, mean_with_prompts"):
        PromptedViT(bb, 5, pool="avg")
    with pytest.raises(ValueError, match="prompt_length >= 1"):
        PromptedViT(bb, 5, deep=True)


def test_head_init_vpt_kaiming_and_timm_trunc_normal():
    bb = build_backbone("vit_micro_p4_16")
    # VPT's MLP head (src/models/mlp.py): nn.Linear, then kaiming_normal_(a=0, mode="fan_out") on
    # the weight and, with special_bias=True, every bias -log((1 - 0.01) / 0.01).
    torch.manual_seed(3)
    ours = PromptedViT(bb, 7, head_init="kaiming").head
    torch.manual_seed(3)
    ref = torch.nn.Linear(32, 7)
    torch.nn.init.kaiming_normal_(ref.weight, a=0, mode="fan_out")
    assert torch.equal(ours.weight, ref.weight)
    assert torch.allclose(ours.bias, torch.full((7,), -4.59511985013459))
    # SPT / timm: trunc_normal_(std) weights, zero bias; the std is a setting (MoCo script: 0.01).
    for std in (0.02, 0.01):
        torch.manual_seed(3)
        head = PromptedViT(bb, 7, head_init="trunc_normal", head_init_std=std).head
        torch.manual_seed(3)
        ref = torch.nn.Linear(32, 7)
        torch.nn.init.trunc_normal_(ref.weight, std=std)
        assert torch.equal(head.weight, ref.weight) and torch.equal(head.bias, torch.zeros(7))
    wide = PromptedViT(bb, 50, head_init="kaiming").head.weight.detach()
    assert abs(float(wide.std()) - (2 / 50) ** 0.5) < 0.02  # fan_out = the number of classes
    with pytest.raises(ValueError, match="head_init='xavier'"):
        PromptedViT(bb, 3, head_init="xavier")
