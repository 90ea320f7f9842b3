"""Memory of the streaming pass does not grow with the number of images.

Measured, not computed: each pass runs in a fresh process that resets its peak resident set
(/proc/self/clear_refs) after start-up and reads VmHWM after the pass, so every allocation
of the pass counts (torch tensors, pools, Python objects). A control pass that keeps every
batch alive shows the measurement does see growth of that size.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BATCH, CAPACITY, P = 16, 64, 4
N = 256  # images of the small pass; the large one has 4N
GROWTH_SEEN = 1 << 20  # bytes: what the control's 3N extra retained images must exceed ...
TOLERANCE = 512 << 10  # ... and what the real pass may differ by (allocator noise)
# glibc returns freed memory at once and keeps one arena: without this, when it hands pages
# back varied by ~0.7 MB from run to run, the size of the signal.
MALLOC_ENV = {"OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "0",
              "MALLOC_TOP_PAD_": "0", "MALLOC_MMAP_THRESHOLD_": "65536"}


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(n: int, retain: bool) -> None:
    """One pass over n images; prints the peak resident growth during it, in bytes."""
    import gc

    import torch

    from spt_dist.model import PromptedViT, build_backbone
    from spt_dist.prompt_init.extract import stream_candidates
    from spt_dist.prompt_init.pass_plan import STRATEGIES, InitPlan

    torch.manual_seed(0)
    model = PromptedViT(build_backbone("vit_micro_p4_16"), 3, prompt_length=P, deep=True)
    plan = InitPlan(STRATEGIES, 3, P, CAPACITY, 0)
    kept = []

    def stream(count: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        for s in range(0, count, BATCH):
            images = torch.randn(BATCH, 3, 16, 16, generator=g)  # made batch by batch
            if retain:
                kept.append(images)
            yield images, torch.zeros(BATCH), [f"k{seed}_{s + i}" for i in range(BATCH)]

    stream_candidates(model, stream(2 * BATCH, -1), plan, "cpu")  # warm-up: lazy inits, kernels
    kept.clear()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start = _vm_kib("VmRSS")
    pools, seen = stream_candidates(model, stream(n, n), plan, "cpu")
    assert seen == n and all(len(p) == CAPACITY for per in pools.values() for p in per)
    print(json.dumps({"growth": (_vm_kib("VmHWM") - start) * 1024}))


def _growth(cases):
    """Peak growth per (n, retain), the processes run side by side."""
    procs = {c: subprocess.Popen([sys.executable, __file__, str(c[0]), str(int(c[1]))], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=dict(os.environ, **MALLOC_ENV))
             for c in cases}
    out = {}
    for c, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-3000:]
        out[c] = json.loads(stdout.strip().splitlines()[-1])["growth"]
    return out


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux peak-RSS reset")
def test_candidate_memory_is_flat_from_n_to_4n_images():
    g = _growth([(N, False), (4 * N, False), (N, True), (4 * N, True)])
    # The control: keeping 3N more images (3N x 3 KiB) is visible in the measurement.
    assert g[(4 * N, True)] - g[(N, True)] > GROWTH_SEEN, g
    # The real pass: 4x the images through the same peak memory.
    assert g[(4 * N, False)] - g[(N, False)] < TOLERANCE, g


if __name__ == "__main__":
    _child(int(sys.argv[1]), bool(int(sys.argv[2])))
