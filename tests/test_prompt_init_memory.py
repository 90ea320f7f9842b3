"""Memory of the streaming pass does not grow with the number of images."""
import gc
import weakref

import torch

from spt_dist.model import PromptedViT, build_backbone
from spt_dist.prompt_init.extract import stream_candidates
from spt_dist.prompt_init.plan import STRATEGIES, InitPlan

BATCH, CAPACITY, WIDTH, PATCHES, P = 16, 64, 32, 16, 4


class _Stream:
    """Images made batch by batch (nothing held here); counts earlier batches still alive."""

    def __init__(self, n: int):
        self.n, self.alive_max, self._refs = n, 0, []

    def __iter__(self):
        g = torch.Generator().manual_seed(self.n)
        for s in range(0, self.n, BATCH):
            gc.collect()
            self.alive_max = max(self.alive_max, sum(r() is not None for r in self._refs))
            images = torch.randn(BATCH, 3, 16, 16, generator=g)
            self._refs.append(weakref.ref(images))
            yield images, torch.zeros(BATCH), [f"k{s + i}" for i in range(BATCH)]
            del images


def _peaks(n: int):
    torch.manual_seed(0)
    model = PromptedViT(build_backbone("vit_micro_p4_16"), 3, prompt_length=P, deep=True)
    stream = _Stream(n)
    pools, seen = stream_candidates(model, stream, InitPlan(STRATEGIES, 3, P, CAPACITY, 0), "cpu")
    assert seen == n
    return {k: [(len(p), p.peak_nbytes, p.seen) for p in per_layer] for k, per_layer in pools.items()}, stream


def test_candidate_memory_is_flat_from_n_to_4n_images():
    small, s_small = _peaks(64)
    large, s_large = _peaks(256)
    row = WIDTH * 4 + 8  # float32 feature + int64 priority
    for kind in small:
        for (n1, peak1, seen1), (n4, peak4, seen4) in zip(small[kind], large[kind]):
            assert n1 == n4 == CAPACITY
            assert seen4 == 4 * seen1  # 4x the tokens went through ...
            tokens_per_batch = BATCH * (PATCHES if kind == "tokens" else P)
            assert peak4 == peak1 <= (CAPACITY + tokens_per_batch) * row  # ... in the same memory
    # Of the earlier batches at most the last one is still alive (the consumer's loop variable).
    assert s_small.alive_max <= 1 and s_large.alive_max <= 1
