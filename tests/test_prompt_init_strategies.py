"""Prototype strategies on a micro ViT: candidates from the right tensors, shapes, determinism."""
from typing import Dict, List

import pytest
import torch

from spt_dist.model import PromptedViT, build_backbone
from spt_dist.prompt_init.candidates import CandidatePool
from spt_dist.distributed import Comm
from spt_dist.prompt_init.extract import stream_candidates
from spt_dist.prompt_init.pass_plan import STRATEGIES, InitPlan
from spt_dist.prompt_init.priority import token_priorities
from spt_dist.prompt_init.prototypes import Prototypes, combine

P = 5  # 16 patches cut into 5 windows: sizes 4, 3, 3, 3, 3 (uneven on purpose)
WINDOWS = [(0, 4), (4, 7), (7, 10), (10, 13), (13, 16)]


def _model(deep: bool = True) -> PromptedViT:
    """Register tokens as well as a class token: prefix exclusion must be exact."""
    torch.manual_seed(0)
    bb = build_backbone("vit_micro_reg_p4_16")
    with torch.no_grad():
        for p in bb.parameters():
            p.normal_(0.0, 0.2)
    return PromptedViT(bb, 3, prompt_length=P, deep=deep)


def _data(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), [f"img-{seed}-{i:05d}" for i in range(n)]


def _batches(images, keys, batch: int, order: List[int] = None):
    order = list(range(len(keys))) if order is None else order
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        yield images[idx], torch.zeros(len(idx)), [keys[i] for i in idx]


def _run(model, plan: InitPlan, batches) -> Dict[str, Prototypes]:
    pools, seen = stream_candidates(model, batches, plan, "cpu")
    return combine(pools, plan, Comm(0, 1))


def _hand_tokens(model: PromptedViT, x: torch.Tensor) -> List[torch.Tensor]:
    """Layer 0: conv patchify (before the position embedding); layer i: block i-1 output, prefix cut."""
    bb = model.backbone
    with torch.no_grad():
        patches = bb.patch_embed.proj(x).flatten(2).transpose(1, 2)
        out = [patches]
        h = bb._pos_embed(bb.patch_embed(x))
        for blk in bb.blocks:
            h = blk(h)
            out.append(h[:, bb.num_prefix_tokens:])
    return out[: len(bb.blocks)]


def _hand_candidates(tokens: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "tokens":
        return tokens
    pool = (lambda w: w.mean(1)) if kind == "mean_windows" else (lambda w: w.amax(1))
    return torch.stack([pool(tokens[:, a:b]) for a, b in WINDOWS], dim=1)


@pytest.mark.parametrize("strategy,kind", [("random_sample", "tokens"), ("mean_pool", "mean_windows"),
                                           ("max_pool", "max_windows")])
def test_sampling_strategies_take_the_lowest_priority_candidates_of_each_layer(strategy, kind):
    model = _model()
    images, keys = _data(24)
    plan = InitPlan((strategy,), layers=3, prompt_length=P, capacity=12, seed=7)
    got = _run(model, plan, _batches(images, keys, batch=5))[strategy]
    assert got.tensor.shape == (3, P, 32) and got.tensor.dtype == torch.float32
    for layer, tokens in enumerate(_hand_tokens(model, images)):
        cands = _hand_candidates(tokens, kind)
        prio = token_priorities(7, f"{kind}/{layer}", keys, cands.shape[1]).flatten()
        expected = cands.flatten(0, 1)[torch.argsort(prio)[:P]]
        torch.testing.assert_close(got.tensor[layer], expected, rtol=1e-5, atol=1e-5)
        assert got.stats[layer]["candidates"] == 12


def test_kmeans_centroids_are_a_fixed_point_over_the_lowest_priority_tokens():
    model = _model()
    images, keys = _data(20)
    plan = InitPlan(("kmeans",), layers=3, prompt_length=P, capacity=64, seed=3, kmeans_iters=200, kmeans_tol=0.0)
    got = _run(model, plan, _batches(images, keys, batch=6))["kmeans"]
    for layer, tokens in enumerate(_hand_tokens(model, images)):
        prio = token_priorities(3, f"tokens/{layer}", keys, tokens.shape[1]).flatten()
        cands = tokens.flatten(0, 1)[torch.argsort(prio)[:64]]
        c = got.tensor[layer]
        d2 = torch.cdist(cands.double(), c.double()) ** 2
        assign = d2.argmin(1)
        assert torch.bincount(assign, minlength=P).min() > 0
        means = torch.stack([cands[assign == j].double().mean(0) for j in range(P)]).float()
        torch.testing.assert_close(c, means, rtol=1e-4, atol=1e-4)  # Lloyd converged
        assert got.stats[layer]["inertia"] == pytest.approx(float(d2.min(1).values.sum()), rel=1e-4)
        assert got.stats[layer]["kmeans_iterations"] < 200


def test_every_strategy_is_deterministic_and_free_of_batching_and_order():
    model = _model()
    images, keys = _data(30)
    plan = InitPlan(STRATEGIES, layers=3, prompt_length=P, capacity=40, seed=0)
    a = _run(model, plan, _batches(images, keys, batch=8))
    b = _run(model, plan, _batches(images, keys, batch=3, order=list(range(30))[::-1]))
    other = _run(model, InitPlan(STRATEGIES, 3, P, 40, seed=1), _batches(images, keys, batch=8))
    for s in STRATEGIES:
        assert a[s].tensor.shape == (3, P, 32)
        assert torch.equal(a[s].tensor, b[s].tensor), s
        assert not torch.equal(a[s].tensor, other[s].tensor), s


def test_shallow_is_layer_zero_of_deep():
    images, keys = _data(12)
    deep = _run(_model(True), InitPlan(STRATEGIES, 3, P, 30, 0), _batches(images, keys, 4))
    shallow = _run(_model(False), InitPlan(STRATEGIES, 1, P, 30, 0), _batches(images, keys, 4))
    for s in STRATEGIES:
        assert shallow[s].tensor.shape == (1, P, 32)
        assert torch.equal(shallow[s].tensor[0], deep[s].tensor[0]), s


def test_candidate_pool_is_the_global_lowest_k_of_a_stream():
    g = torch.Generator().manual_seed(0)
    pool = CandidatePool(capacity=50, width=4)
    prios, feats = [], []
    for _ in range(20):
        p = torch.randint(0, 2**62, (37,), generator=g)
        f = torch.randn(37, 4, generator=g)
        pool.add(p, f)
        prios.append(p)
        feats.append(f)
    all_p, all_f = torch.cat(prios), torch.cat(feats)
    order = torch.argsort(all_p)[:50]
    got_p, got_f = pool.sorted()
    assert len(pool) == 50 and pool.seen == 740
    assert torch.equal(got_p, all_p[order]) and torch.equal(got_f, all_f[order])


def test_kmeans_handles_duplicates_and_empty_clusters_deterministically():
    from spt_dist.prompt_init.kmeans import kmeans

    a, b, c = torch.tensor([1.0, 0, 0]), torch.tensor([0, 5.0, 0]), torch.tensor([0, 0, -3.0])
    points = torch.stack([a] * 10 + [b] * 10 + [c])
    res = kmeans(points, 3, iters=20, tol=0.0, seed=0, comm=Comm(0, 1))
    assert sorted(map(tuple, res.centroids.tolist())) == sorted(map(tuple, torch.stack([a, b, c]).tolist()))
    assert res.inertia == 0.0
    # More clusters than distinct points: empty clusters are reseeded, results stay finite and repeatable.
    first = kmeans(points, 5, iters=10, tol=0.0, seed=0, comm=Comm(0, 1))
    again = kmeans(points, 5, iters=10, tol=0.0, seed=0, comm=Comm(0, 1))
    assert torch.isfinite(first.centroids).all() and torch.equal(first.centroids, again.centroids)
