"""What SPT's code does for prototypes: its mean / max pooling windows (method.window_layout=spt)
and images drawn with replacement (method.init_replacement)."""
import pytest
import torch

from spt_dist.config import ConfigError, load_config
from spt_dist.model import PromptedViT, build_backbone
from spt_dist.prompt_init.candidates import window_bounds, window_tokens
from spt_dist.distributed import Comm
from spt_dist.prompt_init.draws import draw_with_replacement
from spt_dist.prompt_init.extract import stream_candidates
from spt_dist.prompt_init.plan import InitPlan
from spt_dist.prompt_init.prototypes import combine

# SPT's train.py: window = L // (p - 1); p - 1 windows [i w, (i + 1) w); the last window is
# x[:, -(L % w):], i.e. the last L % w tokens, or ALL L tokens when L % w == 0 ([-0:] == [0:]).
# Worked by hand for ViT-B/16 at 224 px, L = 196:
SPT_196 = {
    5: [(0, 49), (49, 98), (98, 147), (147, 196), (0, 196)],           # w = 49, 196 % 49 = 0
    20: [(10 * i, 10 * i + 10) for i in range(19)] + [(190, 196)],       # w = 10, 196 % 10 = 6
    30: [(6 * i, 6 * i + 6) for i in range(29)] + [(192, 196)],          # w = 6, 196 % 6 = 4: tokens 174-191 unused
    50: [(4 * i, 4 * i + 4) for i in range(49)] + [(0, 196)],            # w = 4, 196 % 4 = 0
    100: [(i, i + 1) for i in range(99)] + [(0, 196)],                   # w = 1, 196 % 1 = 0: tokens 99-195 only in the last
}


@pytest.mark.parametrize("p", sorted(SPT_196))
def test_spt_layout_gives_the_official_windows_on_196_tokens(p):
    assert window_bounds(196, p, "spt") == SPT_196[p]
    assert len(SPT_196[p]) == p


def test_spt_windows_are_not_the_even_ones():
    assert window_bounds(196, 30, "even")[:2] == [(0, 7), (7, 14)]  # 196 = 16 x 7 + 14 x 6
    assert window_bounds(196, 30, "even")[-1] == (190, 196)
    assert window_bounds(196, 30, "spt")[-1] == (192, 196)


@pytest.mark.parametrize("kind, pool", [("mean_windows", lambda w: w.mean(1)), ("max_windows", lambda w: w.amax(1))])
def test_window_tokens_pool_each_spt_window(kind, pool):
    x = torch.randn(3, 196, 8, generator=torch.Generator().manual_seed(0))
    got = window_tokens(x, 30, kind, "spt")
    assert got.shape == (3, 30, 8)
    for j, (a, b) in enumerate(SPT_196[30]):
        torch.testing.assert_close(got[:, j], pool(x[:, a:b]))


def test_spt_layout_needs_two_windows():
    with pytest.raises(ValueError, match="2 <= windows"):
        window_bounds(196, 1, "spt")
    with pytest.raises(ConfigError, match="method.prompt_length"):
        load_config(None, ["model.name=vit_micro_p4_16", "method.name=spt", "method.init=mean_pool",
                           "method.prompt_length=1", "method.window_layout=spt"])


def test_draws_are_seeded_with_replacement_and_order_free():
    keys = [f"k{i}" for i in range(50)]
    draws = draw_with_replacement(keys, 50, seed=3)
    assert sum(draws.values()) == 50 and max(draws.values()) > 1 and len(draws) < 50  # repeats happen
    assert list(draws) == [k for k in keys if k in draws]  # index order
    assert draw_with_replacement(keys, 50, seed=3) == draws
    assert draw_with_replacement(keys, 50, seed=4) != draws
    assert sum(draw_with_replacement(keys, 7, seed=3).values()) == 7


def _model() -> PromptedViT:
    torch.manual_seed(0)
    bb = build_backbone("vit_micro_p4_16")
    with torch.no_grad():
        for p in bb.parameters():
            p.normal_(0.0, 0.2)
    return PromptedViT(bb, 3, prompt_length=5, deep=True)


@pytest.mark.parametrize("strategy", ["random_sample", "mean_pool", "kmeans"])
def test_an_image_drawn_twice_counts_as_two_images(strategy):
    """Drawing key a twice equals feeding its image twice under two keys (a and a#1)."""
    model = _model()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    plan = InitPlan((strategy,), layers=3, prompt_length=5, capacity=40, seed=2, window_layout="spt")
    drawn, _ = stream_candidates(model, [(x, torch.zeros(3), ["a", "b", "c"])], plan, "cpu",
                                 draws={"a": 2, "b": 1, "c": 1})
    twice = torch.cat([x[:1], x])
    by_hand, _ = stream_candidates(model, [(twice, torch.zeros(4), ["a", "a#1", "b", "c"])], plan, "cpu")
    got, want = combine(drawn, plan, Comm(0, 1))[strategy], combine(by_hand, plan, Comm(0, 1))[strategy]
    torch.testing.assert_close(got.tensor, want.tensor, rtol=0, atol=0)
    once, _ = stream_candidates(model, [(x, torch.zeros(3), ["a", "b", "c"])], plan, "cpu",
                                draws={"a": 1, "b": 1, "c": 1})
    plain, _ = stream_candidates(model, [(x, torch.zeros(3), ["a", "b", "c"])], plan, "cpu")
    torch.testing.assert_close(combine(once, plan, Comm(0, 1))[strategy].tensor,
                               combine(plain, plan, Comm(0, 1))[strategy].tensor, rtol=0, atol=0)
