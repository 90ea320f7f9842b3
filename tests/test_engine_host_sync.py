"""Host syncs of a real single-process run (tests/host_syncs.py counts them; with CUDA torch's
sync debug mode counts too): none from one micro-step to the next inside an accumulation
window, one read-back per optimizer step (the vote), and an evaluation pass costs the same
few whatever its number of batches. Prompt tuning on images and a linear probe on cached
features."""
from __future__ import annotations

from pathlib import Path

import pytest

import spt_dist.engine.train as engine_train
from engine_helpers import make_assets, write_config
from host_syncs import HostSyncs
from spt_dist.config import load_config

ACCUM = 4


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


def _timeline(cfg, monkeypatch):
    """Counts at every micro-step's start and every vote, and per evaluation pass."""
    counter, marks, evals = HostSyncs(), [], []
    step, vote, evaluate = engine_train.train_step, engine_train.StepVote.vote, engine_train.evaluate

    def counted_step(*args, **kwargs):
        marks.append(("step", counter.total))
        return step(*args, **kwargs)

    def counted_vote(self, *args, **kwargs):
        before = counter.total
        out = vote(self, *args, **kwargs)
        marks.append(("vote", counter.total - before))
        return out

    def counted_eval(*args, **kwargs):
        before = counter.total
        out = evaluate(*args, **kwargs)
        evals.append(counter.total - before)
        return out

    monkeypatch.setattr(engine_train, "train_step", counted_step)
    monkeypatch.setattr(engine_train.StepVote, "vote", counted_vote)
    monkeypatch.setattr(engine_train, "evaluate", counted_eval)
    with counter.device_syncs(), counter:
        result = engine_train.train(cfg)
    return result, marks, evals, counter


@pytest.mark.parametrize("method", [["method.name=vpt"], ["method.name=linear"]],
                         ids=["vpt-images", "linear-cached-features"])
def test_no_host_sync_between_micro_steps_one_per_optimizer_step(tmp_path: Path, assets, monkeypatch, method):
    path = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=1, every=1000)
    cfg = load_config(str(path), [f"optim.grad_accum={ACCUM}", "data.eval_batch_size=4", "run.loggers=[]",
                                  "run.name=r", *method])
    result, marks, evals, counter = _timeline(cfg, monkeypatch)
    assert result["status"] == "finished" and result["step"] == 16 // ACCUM
    steps = [i for i, (kind, _) in enumerate(marks) if kind == "step"]
    assert len(steps) == 16
    for n, i in enumerate(steps):
        if (n + 1) % ACCUM:  # inside the window: the next micro-step follows with no sync at all
            nxt = marks[i + 1]
            assert nxt[0] == "step" and nxt[1] == marks[i][1], (n, counter.calls)
    votes = [c for kind, c in marks if kind == "vote"]
    assert len(votes) == 16 // ACCUM and all(1 <= c <= 3 for c in votes), votes  # its read-back (+ CUDA's copy in)
    assert len(evals) == 2 and max(evals) <= 3, (evals, counter.calls)  # 6 and 8 batches of 4: a few per pass
