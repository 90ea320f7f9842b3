"""SPT's motivating analysis: how close are the prompts to the data's token prototypes?

`alignment_metrics` gives, per layer, the mean over prompts of the cosine similarity to the
nearest reference prototype (k-means centroids of the un-prompted patch tokens, see
initialize.py). The engine logs it into metrics.jsonl at each evaluation; `plot_alignment`
reads those files back.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from spt_dist.io import atomic_path

PREFIX = "align/"


@torch.no_grad()
def alignment_metrics(prompts: torch.Tensor, reference: torch.Tensor) -> Dict[str, float]:
    """{"align/layer0": ..., ..., "align/mean": ...} for (layers, p, d) prompts and
    (layers, r, d) reference prototypes (r may differ from p)."""
    if prompts.dim() != 3 or reference.dim() != 3 or prompts.shape[0] != reference.shape[0] \
            or prompts.shape[2] != reference.shape[2]:
        raise ValueError(f"prompts {tuple(prompts.shape)} and reference {tuple(reference.shape)} must be "
                         f"(layers, p, d) and (layers, r, d) with the same layers and width")
    p = F.normalize(prompts.detach().float(), dim=-1)
    r = F.normalize(reference.detach().float().to(p.device), dim=-1)
    nearest = torch.bmm(p, r.transpose(1, 2)).amax(dim=2).mean(dim=1).cpu()  # (layers,)
    out = {f"{PREFIX}layer{i}": float(v) for i, v in enumerate(nearest)}
    out[f"{PREFIX}mean"] = float(nearest.mean())
    return out


def read_alignment(run_dir: str | Path) -> List[Tuple[int, Dict[str, float]]]:
    """(step, {metric: value}) for every metrics.jsonl record holding alignment metrics."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl in this run folder")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write
        values = {k: float(v) for k, v in record.items() if k.startswith(PREFIX)}
        if values:
            rows.append((int(record.get("step", n)), values))
    return rows


def plot_alignment(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """One panel per layer (and the mean), one line per run; written with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {Path(d).name or str(d): read_alignment(d) for d in run_dirs}
    empty = [name for name, rows in runs.items() if not rows]
    if empty:
        raise ValueError(f"run '{empty[0]}' has no alignment metrics in metrics.jsonl "
                         f"(method.track_alignment=false?)")
    names = sorted({k for rows in runs.values() for _, v in rows for k in v},
                   key=lambda k: (k == f"{PREFIX}mean", len(k), k))
    cols = min(4, len(names))
    rows_n = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.6 * rows_n), squeeze=False)
    for ax, metric in zip(axes.flat, names):
        for run, rows in runs.items():
            pts = [(s, v[metric]) for s, v in rows if metric in v]
            ax.plot([s for s, _ in pts], [y for _, y in pts], marker=".", label=run)
        ax.set_title(metric[len(PREFIX):], fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes[0][0].set_ylabel("cosine to nearest prototype")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or plt.rcParams["savefig.format"])
    plt.close(fig)
    return out
