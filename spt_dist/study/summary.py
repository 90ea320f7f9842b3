"""`spt study report`: a study's table, plots and fitted scaling curves, from files only.

Per cell (axis values x method): test top-1 of the final runs as mean and sample standard
deviation (n-1) over seeds, n, trainable and backbone parameters, training samples, the
selected hyper-parameters (and their warnings), and the CPU- or GPU-hours of the cell's
search and final runs (wall time x ranks). Cells that are incomplete or failed are listed,
never dropped. Plots: top-1 against training samples (one panel per backbone), against
backbone parameters (per training-set size), against trainable parameters; and the error
(100 - top-1) with a power law fitted per method over training samples and over backbone
parameters (scaling_fit.png: one panel each, with the fitted lines), whose exponents and
standard errors go into fits.csv and the Markdown report.
"""
from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from spt_dist.rundir import read_results

from .driver import Pass, survey
from .fit import fit_power_law
from .plan import Plan


def rank_hours(results: List[Dict[str, Any]]) -> Tuple[float, float]:
    cpu = gpu = 0.0
    for r in results:
        # a pack member's wall time is the whole pack's: its share is 1 / pack_size of it
        h = (r.get("wall_s") or 0.0) * (r.get("world_size") or 1) / (r.get("pack_size") or 1) / 3600.0
        if r.get("device", "cpu") == "cuda":
            gpu += h
        else:
            cpu += h
    return cpu, gpu


def rows(plan: Plan, p: Optional[Pass] = None) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Per cell its table row, and what is missing; `p`: the survey, when the caller has it."""
    p = p or survey(plan, write=False)
    out, missing = [], []
    for cell in plan.cells:
        search = [read_results(r.run_dir) for r in plan.search[cell.key]]
        final = [read_results(r.run_dir) for r in p.final.get(cell.key, [])]
        done = [r for r in final if r and r.get("status") == "finished" and isinstance(r.get("top1"), (int, float))]
        row: Dict[str, Any] = {"method": cell.method.name, **cell.labels}
        if cell.key not in p.final:
            failed = [str(r.run_dir) for r in plan.search[cell.key] if p.states[str(r.run_dir)].state == "failed"]
            missing.append(f"{cell.key}: search incomplete" + (f" ({len(failed)} failed: {failed[0]} ...)"
                                                                if failed else ""))
        elif len(done) < len(p.final[cell.key]):
            missing.append(f"{cell.key}: {len(done)} of {len(p.final[cell.key])} final runs finished")
        sel = p.selections.get(cell.key)
        tops = [r["top1"] for r in done]
        cpu, gpu = rank_hours([r for r in search + final if r])
        first = done[0] if done else {}
        row.update({
            "top1": round(statistics.fmean(tops), 3) if tops else None,
            "std": round(statistics.stdev(tops), 3) if len(tops) > 1 else None, "n": len(tops),
            "trainable_params": first.get("trainable_params"), "backbone_params": first.get("backbone_params"),
            "train_samples": first.get("train_samples"),
            # a backbone axis's label tells apart backbones of one architecture (supervised vs MAE)
            "backbone": cell.labels.get("backbone") or first.get("backbone"),
            "selected": ";".join(f"{k}={v}" for k, v in (sel or {}).get("chosen", {}).items()),
            "val": (sel or {}).get("value"), "cpu_hours": round(cpu, 4), "gpu_hours": round(gpu, 4),
            "seed_top1": tops})
        out.append(row)
    return out, missing


def fits(table: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Power laws of the error over training samples (per method and backbone) and over
    backbone parameters (per method and training-set size), on every seed's point."""
    out = []
    groups: Dict[Tuple, List[Tuple[float, float]]] = defaultdict(list)
    for r in table:
        for t in r["seed_top1"]:
            if r["train_samples"]:
                groups[("train_samples", r["method"], f"backbone={r['backbone']}")].append(
                    (r["train_samples"], 100.0 - t))
            if r["backbone_params"]:
                groups[("backbone_params", r["method"], f"train_samples={r['train_samples']}")].append(
                    (r["backbone_params"], 100.0 - t))
    for (x_name, method, fixed), pts in sorted(groups.items()):
        fit = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
        if fit is not None:
            out.append({"error_vs": x_name, "method": method, "at": fixed, "exponent": round(fit.b, 4),
                        "exponent_se": round(fit.b_se, 4), "a": round(fit.a, 4), "points": fit.points})
    return out


def _write_csv(path: Path, rows_: List[Dict[str, Any]], cols: List[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows_)


def _md(rows_: List[Dict[str, Any]], cols: List[str]) -> List[str]:
    fmt = lambda v: "" if v is None else str(v)  # noqa: E731
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + \
        ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows_]


def _plots(table: List[Dict[str, Any]], fit_rows: List[Dict[str, Any]], out: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in table if r["top1"] is not None]
    methods = sorted({r["method"] for r in done})
    paths = []

    def errbar(ax, pts, label):
        pts = sorted(pts)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0 for p in pts], marker="o",
                    capsize=3, label=label)

    backbones = sorted({r["backbone"] for r in done})
    fig, axes = plt.subplots(1, max(1, len(backbones)), figsize=(4.5 * max(1, len(backbones)), 3.8), squeeze=False)
    for ax, bb in zip(axes[0], backbones):
        for m in methods:
            errbar(ax, [(r["train_samples"], r["top1"], r["std"]) for r in done
                        if r["method"] == m and r["backbone"] == bb], m)
        ax.set_xscale("log"), ax.set_xlabel("training samples"), ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{bb}", fontsize=10), ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle("top-1 vs training data (mean ± std over seeds)", fontsize=10)
    paths.append(_save(fig, out / "top1_vs_data.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    sizes = sorted({r["train_samples"] for r in done})
    largest = sizes[-1] if sizes else None
    for m in methods:
        errbar(axes[0], [(r["backbone_params"] / 1e6, r["top1"], r["std"]) for r in done
                         if r["method"] == m and r["train_samples"] == largest], m)
        errbar(axes[1], [(r["trainable_params"], r["top1"], r["std"]) for r in done if r["method"] == m], m)
    axes[0].set_xlabel("backbone parameters (M)"), axes[0].set_title(f"at {largest} training samples", fontsize=10)
    axes[1].set_xlabel("trainable parameters"), axes[1].set_xscale("log")
    axes[1].set_title("every cell", fontsize=10)
    for ax in axes:
        ax.set_ylabel("test top-1 (%)"), ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    paths.append(_save(fig, out / "top1_vs_params.png"))

    paths.append(_save(fit_figure(done, fit_rows), out / "scaling_fit.png"))
    return paths


def fit_figure(done: List[Dict[str, Any]], fit_rows: List[Dict[str, Any]]):
    """The error against training samples and against backbone parameters (log-log), every
    seed's point and the fitted power laws, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, x_name, label, fixed in ((axes[0], "train_samples", "training samples", "backbone"),
                                     (axes[1], "backbone_params", "backbone parameters", "train_samples")):
        for f in [f for f in fit_rows if f["error_vs"] == x_name]:
            pts = [(r[x_name], 100 - t) for r in done if r["method"] == f["method"]
                   and f"{fixed}={r[fixed]}" == f["at"] for t in r["seed_top1"]]
            line = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", alpha=0.5)[0]
            xs = sorted({p[0] for p in pts})
            ax.plot(xs, [f["a"] * x ** (-f["exponent"]) for x in xs], "-", color=line.get_color(),
                    label=f"{f['method']} {f['at']}: b={f['exponent']:.2f}±{f['exponent_se']:.2f}")
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel(label)
        ax.set_ylabel("test error (%)"), ax.grid(alpha=0.3, which="both")
        if ax.lines:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no fit: fewer than 3 points at 2 distinct x", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
        ax.set_title(f"error = a * ({label})^-b", fontsize=10)
    return fig


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_study_report(plan: Plan, out_dir: Optional[Path] = None) -> Dict[str, Any]:
    out = Path(out_dir or plan.spec.out_dir / "report")
    out.mkdir(parents=True, exist_ok=True)
    p = survey(plan, write=False)
    table, missing = rows(plan, p)
    fit_rows = fits(table)
    axes = [a[0].axis for a in plan.spec.axes]
    cols = ["method", *axes, "top1", "std", "n", "trainable_params", "backbone_params", "train_samples",
            "selected", "val", "cpu_hours", "gpu_hours"]
    _write_csv(out / "study.csv", table, cols)
    fit_cols = ["error_vs", "method", "at", "exponent", "exponent_se", "a", "points"]
    _write_csv(out / "fits.csv", fit_rows, fit_cols)
    plots = _plots(table, fit_rows, out)
    sel_warnings = p.warnings
    md = [f"# Study {plan.spec.name}", "",
          f"Test top-1 (%) of the final stage: mean and sample standard deviation (n-1) over "
          f"{len(plan.spec.seeds)} seed(s); hyper-parameters selected on {plan.spec.metric}.", ""]
    md += _md(table, cols) + ["", "## Fitted scaling curves", "",
                              "Test error = a * x^-b, least squares in log-log over every seed's point; "
                              "exponent ± its standard error.", ""]
    md += _md(fit_rows, fit_cols) if fit_rows else ["(not enough points for a fit)"]
    md += ["", "## Incomplete or failed cells", ""] + ([f"- {m}" for m in missing] or ["none"])
    md += ["", "## Selection warnings", ""] + ([f"- {w}" for w in sel_warnings] or ["none"])
    md += ["", "Plots: " + ", ".join(p.name for p in plots)]
    (out / "study.md").write_text("\n".join(md) + "\n")
    return {"out": str(out), "cells": len(table), "complete": len(table) - len(missing), "missing": missing,
            "fits": len(fit_rows), "plots": [str(p) for p in plots]}
