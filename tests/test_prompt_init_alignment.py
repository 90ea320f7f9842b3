"""Prompt-to-prototype alignment: the metric's values and the plot read from metrics.jsonl."""
import json

import pytest
import torch

from spt_dist.cli import main
from spt_dist.prompt_init import alignment_metrics, read_alignment


def test_alignment_is_mean_cosine_to_the_nearest_prototype():
    ref = torch.eye(4).repeat(2, 1, 1)                       # (2 layers, 4 prototypes, d=4)
    prompts = torch.stack([torch.eye(4)[:2] * 3.0,           # layer 0: scaled copies -> cosine 1
                           torch.tensor([[1.0, 1.0, 0, 0], [-1.0, 0, 0, 0]])])  # layer 1: 1/sqrt2 and 0
    got = alignment_metrics(prompts.to(torch.bfloat16), ref)
    assert got["align/layer0"] == pytest.approx(1.0)
    assert got["align/layer1"] == pytest.approx((2 ** -0.5 + 0.0) / 2, abs=1e-3)
    assert got["align/mean"] == pytest.approx((got["align/layer0"] + got["align/layer1"]) / 2)
    with pytest.raises(ValueError, match="same layers and width"):
        alignment_metrics(prompts, ref[:1])


def _run_dir(tmp_path, name, values):
    run = tmp_path / name
    run.mkdir()
    lines = [{"event": "train", "step": 5, "loss": 1.0}]
    lines += [{"event": "eval", "step": 10 * i, "top1": 0.5, **alignment_metrics(v, torch.eye(4)[None])}
              for i, v in enumerate(values)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"event": "ev')
    return run


def test_plot_alignment_reads_metrics_files_of_several_runs(tmp_path):
    spt = _run_dir(tmp_path, "spt", [torch.eye(4)[None, :2]] * 3)
    vpt = _run_dir(tmp_path, "vpt", [torch.ones(1, 2, 4) * s for s in (1.0, 2.0)])
    rows = read_alignment(spt)
    assert [s for s, _ in rows] == [0, 10, 20] and rows[0][1]["align/layer0"] == pytest.approx(1.0)
    out = tmp_path / "plots" / "align.png"
    assert main(["plot-alignment", str(spt), str(vpt), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n')
    with pytest.raises(ValueError, match="no alignment metrics"):
        main(["plot-alignment", str(empty), "-o", str(out)])
