"""The evidence study's numbers, curves and claim checks, from the study's files only.

Reads study specs (default: every part, configs/study/evidence_*.yaml), their selections and
the run folders `spt study run` wrote, and writes (a part with fewer finished cells here than
its entry in the JSON already there keeps that entry, and says so):
  benchmarks/results/evidence.json      per cell: test top-1 of every seed, mean, std (n-1), n,
                                         the selected lr and its val top-1; the claim checks;
                                         the alignment of the prompts to the token prototypes
  benchmarks/results/evidence/<part>_curves.png        val top-1 per epoch of the selected search
                                         runs, and the training loss of the final runs (mean
                                         over seeds), per backbone and fraction
  benchmarks/results/evidence/<part>_alignment.png     mean nearest-prototype cosine of the prompts
                                         over training, VPT and SPT (final runs, mean over seeds)
Nothing is trained here; `spt study report SPEC` writes the study's own table and plots.

Run: python benchmarks/evidence.py [SPEC ...]
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spt_dist.study.plan import build_plan  # noqa: E402
from spt_dist.study.driver import survey  # noqa: E402
from spt_dist.study.spec import load_spec  # noqa: E402
from spt_dist.study.summary import rows  # noqa: E402

OUT_JSON = ROOT / "benchmarks" / "results" / "evidence.json"
OUT_FIG = ROOT / "benchmarks" / "results" / "evidence"


def _events(run_dir: Path, kind: str) -> List[Dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == kind:
            out.append(e)
    return out


def _mean_std(xs: List[float]) -> Dict[str, Any]:
    return {"mean": round(statistics.fmean(xs), 3) if xs else None,
            "std": round(statistics.stdev(xs), 3) if len(xs) > 1 else None, "n": len(xs)}


def collect(spec_path: str) -> Dict[str, Any]:
    plan = build_plan(load_spec(spec_path))
    p = survey(plan, write=False)
    table, missing = rows(plan, p)
    cells = []
    for cell, row in zip(plan.cells, table):
        sel = p.selections.get(cell.key, {})
        chosen = sel.get("chosen", {})
        # the selected search run (its val curve) and the final runs (loss, alignment)
        search_dir = next((r.run_dir for r in plan.search[cell.key] if r.point == chosen), None)
        finals = plan.final(cell, chosen) if chosen else []
        val_curve = [(e["epoch"], e["top1"]) for e in _events(search_dir, "val")] if search_dir else []
        losses, aligns = defaultdict(list), defaultdict(list)
        for r in finals:
            for e in _events(r.run_dir, "train"):
                losses[e["step"]].append(e["loss"])
            for e in _events(r.run_dir, "alignment"):
                aligns[e["step"]].append(e["align/mean"])
        cells.append({
            "cell": cell.key, "method": cell.method.name, **cell.labels,
            "top1": row["top1"], "std": row["std"], "n": row["n"], "seed_top1": row["seed_top1"],
            "selected": chosen, "selected_val_top1": sel.get("value"),
            "candidates": [{"point": c.get("point"), "value": c.get("value")} for c in sel.get("candidates", [])],
            "train_samples": row["train_samples"], "trainable_params": row["trainable_params"],
            "backbone_params": row["backbone_params"], "cpu_hours": row["cpu_hours"],
            "val_curve": val_curve,
            "train_loss": [(s, round(statistics.fmean(v), 4)) for s, v in sorted(losses.items())],
            "alignment": [(s, round(statistics.fmean(v), 4), len(v)) for s, v in sorted(aligns.items())],
        })
    return {"spec": spec_path, "cells": cells, "incomplete": missing}


def _get(cells, method, **labels) -> Optional[Dict[str, Any]]:
    for c in cells:
        if c["method"] == method and all(c.get(k) == v for k, v in labels.items()) and c["top1"] is not None:
            return c
    return None


def _diff(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """a - b in mean top-1, with the standard error of the difference (Welch)."""
    se = None
    if a["std"] is not None and b["std"] is not None:
        se = round((a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"]) ** 0.5, 3)
    return {"diff": round(a["top1"] - b["top1"], 3), "se": se}


def _length(method: str) -> Optional[int]:
    """Prompt length from a method's name (`vpt_deep_p16`, `spt_deep_p16_mean_pool`), else None."""
    m = re.search(r"_p(\d+)(?:_|$)", method)
    return int(m.group(1)) if m else None


def _against(cells, fr, pairs) -> List[Dict[str, Any]]:
    """Per backbone, each (a, b) method pair's difference a - b, where both cells exist."""
    out = []
    for bb in sorted({c["backbone"] for c in cells if "backbone" in c}):
        for a, b in pairs:
            x, y = _get(cells, a, backbone=bb, fraction=fr), _get(cells, b, backbone=bb, fraction=fr)
            if x and y:
                out.append({"backbone": bb, "fraction": fr, "a": a, "b": b, "a_top1": x["top1"], "a_std": x["std"],
                            "b_top1": y["top1"], "b_std": y["std"], **_diff(x, y)})
    return out


def claims(cells: List[Dict[str, Any]]) -> Dict[str, Any]:
    backbones = sorted({c["backbone"] for c in cells if "backbone" in c})
    fractions = sorted({c["fraction"] for c in cells if "fraction" in c}, key=lambda s: float(s[1:]))
    lengths = sorted({_length(c["method"]) for c in cells if _length(c["method"]) is not None})
    out: Dict[str, Any] = {"spt_minus_vpt": [], "spt_gain_by_backbone": {}, "length_spread": [],
                           "fraction": [], "alignment": []}
    gains = defaultdict(list)
    for bb in backbones:
        for fr in fractions:
            lin = _get(cells, "linear", backbone=bb, fraction=fr)
            for depth in ("deep", "shallow"):
                spread = {}
                for p in lengths:
                    s = _get(cells, f"spt_{depth}_p{p}", backbone=bb, fraction=fr)
                    v = _get(cells, f"vpt_{depth}_p{p}", backbone=bb, fraction=fr)
                    if s and v:
                        d = _diff(s, v)
                        gains[bb].append(d["diff"])
                        out["spt_minus_vpt"].append({"backbone": bb, "fraction": fr, "depth": depth, "p": p,
                                                     "spt": s["top1"], "spt_std": s["std"], "vpt": v["top1"],
                                                     "vpt_std": v["std"], "linear": lin["top1"] if lin else None,
                                                     **d})
                    for m, c in (("spt", s), ("vpt", v)):
                        if c:
                            spread.setdefault(m, []).append((p, c["top1"], c["std"]))
                for m, pts in spread.items():
                    if len(pts) > 1:
                        tops = [t for _, t, _ in pts]
                        out["length_spread"].append({"backbone": bb, "fraction": fr, "method": f"{m}_{depth}",
                                                     "by_length": pts, "range": round(max(tops) - min(tops), 3)})
    out["spt_gain_by_backbone"] = {bb: {"mean_gain": round(statistics.fmean(g), 3), "cells": len(g)}
                                   for bb, g in gains.items() if g}
    for bb in backbones:
        for m in sorted({c["method"] for c in cells}):
            pts = [(c["fraction"], c["train_samples"], c["top1"], c["std"]) for c in cells
                   if c["method"] == m and c.get("backbone") == bb and c["top1"] is not None]
            if len(pts) > 1:
                out["fraction"].append({"backbone": bb, "method": m,
                                        "by_fraction": sorted(pts, key=lambda t: t[1] or 0)})
    # other methods and SPT's other prototype strategies, against VPT-deep and SPT-deep (k-means)
    methods = sorted({c["method"] for c in cells})
    pairs = [(m, ref) for m in methods for ref in ("vpt_deep_p16", "spt_deep_p16")
             if m != ref and (m.startswith("spt_deep_p16_") or m in ("full", "linear"))]
    out["versus"] = [d for fr in fractions for d in _against(cells, fr, pairs)]
    for c in cells:
        if c["alignment"] and c["method"].startswith(("vpt", "spt")):
            out["alignment"].append({"cell": c["cell"], "start": c["alignment"][0][1], "end": c["alignment"][-1][1],
                                     "max": max(a[1] for a in c["alignment"])})
    return out


def plots(cells: List[Dict[str, Any]], prefix: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT_FIG.mkdir(parents=True, exist_ok=True)
    groups = sorted({(c.get("backbone"), c.get("fraction")) for c in cells})
    fig, axes = plt.subplots(2, len(groups), figsize=(3.6 * len(groups), 6.4), squeeze=False)
    for j, (bb, fr) in enumerate(groups):
        for c in cells:
            if (c.get("backbone"), c.get("fraction")) != (bb, fr):
                continue
            style = "--" if c["method"].startswith("vpt") else ("-" if c["method"].startswith("spt") else ":")
            if c["val_curve"]:
                axes[0][j].plot(*zip(*c["val_curve"]), style, marker="o", ms=3, label=c["method"])
            if c["train_loss"]:
                axes[1][j].plot(*zip(*c["train_loss"]), style, label=c["method"])
        axes[0][j].set_title(f"{bb}, {fr}", fontsize=9)
        axes[0][j].set_xlabel("epoch"), axes[1][j].set_xlabel("step")
        axes[0][j].grid(alpha=0.3), axes[1][j].grid(alpha=0.3)
    axes[0][0].set_ylabel("val top-1 (%), selected lr, search run")
    axes[1][0].set_ylabel("train loss, final runs (mean of seeds)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    p1 = OUT_FIG / f"{prefix}curves.png"
    fig.savefig(p1, dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.2), squeeze=False)
    for j, (bb, fr) in enumerate(groups):
        for c in cells:
            if (c.get("backbone"), c.get("fraction")) == (bb, fr) and c["alignment"]:
                style = "--" if c["method"].startswith("vpt") else "-"
                axes[0][j].plot([a[0] for a in c["alignment"]], [a[1] for a in c["alignment"]], style,
                                label=c["method"])
        axes[0][j].set_title(f"{bb}, {fr}", fontsize=9), axes[0][j].set_xlabel("step")
        axes[0][j].grid(alpha=0.3)
    axes[0][0].set_ylabel("prompt-prototype cosine (mean)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    p2 = OUT_FIG / f"{prefix}alignment.png"
    fig.savefig(p2, dpi=80)
    plt.close(fig)
    return [str(p1.relative_to(ROOT)), str(p2.relative_to(ROOT))]


PARTS = ("fewshot", "length", "fraction", "capacity", "methods", "digits")


def main(argv: List[str]) -> int:
    specs = argv or [f"configs/study/evidence_{p}.yaml" for p in PARTS]
    before = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {"studies": {}}
    result: Dict[str, Any] = {"studies": dict(before.get("studies", {}))}
    for spec in specs:
        data = collect(spec)
        name = Path(spec).stem
        done = sum(c["top1"] is not None for c in data["cells"])
        before_done = sum(c.get("top1") is not None for c in result["studies"].get(name, {}).get("cells", []))
        if done < before_done:  # run folders gone (another machine, a cleaned pool): keep the fuller entry
            print(f"{name}: {done} finished cells here, {before_done} in {OUT_JSON.name}: its entry is kept as it was")
            continue
        prefix = name.replace("evidence_", "") + "_"
        data["claims"] = claims(data["cells"])
        data["figures"] = plots(data["cells"], prefix)
        result["studies"][name] = data
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT_JSON.relative_to(ROOT)}")
    for name, data in result["studies"].items():
        print(f"{name}: {len(data['cells'])} cells, incomplete: {len(data['incomplete'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
