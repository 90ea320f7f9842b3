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
from spt_dist.prompt_init.pass_plan import InitPlan
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


# -- SPT passes prototype images through its training transform (method.init_transform=train) --

@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    from spt_dist.data import write_shards
    from spt_dist.data.sources.builtin import digits_source

    root = tmp_path_factory.mktemp("digits") / "shards"
    write_shards(digits_source(), str(root), shard_size=30, max_per_class=6, progress=False)
    return str(root)


def _drawn(root: str, draws, rank: int = 0, world: int = 1, seed: int = 0, batch: int = 4, workers: int = 0):
    from spt_dist.config.schema import DataConfig
    from spt_dist.data import DrawnData, ShardIndex

    cfg = DataConfig(root=root, preset="spt_fgvc", eval_batch_size=batch, num_workers=workers)
    data = DrawnData(cfg, ShardIndex.load(root), "train", 16, [0.5] * 3, [0.25] * 3, rank, world, draws, seed)
    return {k: img for images, _, keys in data for k, img in zip(keys, images)}


def test_each_draw_is_augmented_on_its_own_deterministically_on_any_number_of_ranks(digits):
    from spt_dist.data import EvalData, ShardIndex
    from spt_dist.config.schema import DataConfig

    index = ShardIndex.load(digits)
    keys = index.split("train").keys()[:5]
    draws = {keys[0]: 3, keys[1]: 1, keys[2]: 2, keys[4]: 1}
    one = _drawn(digits, draws)
    assert list(one) == [keys[0], f"{keys[0]}#1", f"{keys[0]}#2", keys[1], keys[2], f"{keys[2]}#1", keys[4]]
    # The copies of one image are different random resized crops (the evaluation transform would repeat one).
    assert not torch.equal(one[keys[0]], one[f"{keys[0]}#1"]) and not torch.equal(one[keys[0]], one[f"{keys[0]}#2"])
    plain = {k: img for images, _, ks in EvalData(DataConfig(root=digits, preset="spt_fgvc"), index, "train", 16,
                                                  [0.5] * 3, [0.25] * 3, 0, 1, keys=list(draws))
             for k, img in zip(ks, images)}
    assert not torch.equal(plain[keys[0]], one[keys[0]])  # the training transform, not the evaluation one
    # Seeded by (seed, key, copy) only: again, with other batches and workers, and split over 2 or 3 ranks.
    for again in (_drawn(digits, draws), _drawn(digits, draws, batch=3, workers=2)):
        assert again.keys() == one.keys() and all(torch.equal(again[k], one[k]) for k in one)
    for world in (2, 3):
        parts = [_drawn(digits, draws, rank=r, world=world) for r in range(world)]
        assert sum(len(p) for p in parts) == len(one)  # every draw read once
        merged = {k: v for p in parts for k, v in p.items()}
        assert merged.keys() == one.keys() and all(torch.equal(merged[k], one[k]) for k in one)
    other = _drawn(digits, draws, seed=1)
    assert not torch.equal(other[keys[0]], one[keys[0]])


def test_prototypes_through_the_training_transform(digits):
    from spt_dist.distributed import Comm

    from spt_dist.data import ShardIndex
    from spt_dist.model import build_model
    from spt_dist.prompt_init import initialize_prompts

    def prompts(*overrides):
        cfg = load_config(None, [f"data.root={digits}", "data.preset=spt_fgvc", "model.name=vit_micro_p4_16",
                                 "method.name=spt", "method.prompt_length=4", "method.deep=true",
                                 "method.init=random_sample", "method.init_replacement=true",
                                 "method.track_alignment=false", "method.cache_dir=''", "run.progress=false",
                                 *overrides])
        index = ShardIndex.load(digits)
        torch.manual_seed(0)
        model = build_model(cfg, index.num_classes)
        return initialize_prompts(model, cfg, index, Comm(), "cpu").prompts

    train = prompts("method.init_transform=train")
    assert torch.equal(prompts("method.init_transform=train"), train)  # deterministic
    assert torch.equal(prompts("method.init_transform=train", "method.init_batch_size=5"), train)
    assert not torch.equal(prompts("method.init_transform=eval"), train)
    with pytest.raises(ConfigError, match=r"'method.init_transform' = 'augmented' is not allowed; "
                                          r"allowed values: 'eval', 'train'"):
        load_config(None, ["method.init_transform=augmented"])
