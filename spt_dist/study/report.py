"""Study report: every results.json under a folder -> a markdown table, a CSV and a plot of
top-1 against model capacity and against data fraction, one line per method and setting its
runs differ in, labelled by only what tells the lines apart (report.md lists them in full).

Reads only the files each run writes (results.json and its config.yaml), never logs.
"""
from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from spt_dist.config.dotted import flatten
from spt_dist.rundir.identity import NEUTRAL_KEYS, NEUTRAL_RUN

from .errors import StudyError

# Short names for grouping columns; any other dotted config key works as well.
ALIASES = {
    "backbone": "model.name",
    "data_fraction": "data.fraction",
    "prompt_length": "method.prompt_length",
    "lr": "optim.lr",
    "seed": "run.seed",
}
METRIC_FALLBACKS = ("test.top1", "test_top1", "top1", "test.acc1")


@dataclass
class RunRecord:
    run_dir: Path
    values: Dict[str, Any]  # flattened config.yaml (dotted keys) plus "method", "params_m"
    metric: Optional[float]
    status: str




def backbone_params_m(name: str) -> Optional[float]:
    """Millions of backbone parameters from the registry (attention + MLP + embeddings)."""
    from spt_dist.config.registry import BACKBONES

    spec = BACKBONES.get(name)
    if spec is None:
        return None
    d = spec.embed_dim
    block = 4 * d * d + 4 * d + 2 * spec.mlp_ratio * d * d + (spec.mlp_ratio + 1) * d + 4 * d
    tokens = (spec.img_size // spec.patch_size) ** 2 + int(spec.class_token) + spec.reg_tokens
    embed = spec.patch_size ** 2 * spec.in_chans * d + d + tokens * d
    return (spec.depth * block + embed + 2 * d) / 1e6


def _metric(results: Dict[str, Any], key: Optional[str]) -> Optional[float]:
    flat = flatten(results)
    for k in ([key] if key else METRIC_FALLBACKS):
        if isinstance(flat.get(k), (int, float)):
            return float(flat[k])
    return None


def collect(runs_dir: str, metric: Optional[str] = None) -> List[RunRecord]:
    root = Path(runs_dir)
    if not root.is_dir():
        raise StudyError(f"runs folder '{runs_dir}' does not exist")
    records = []
    for path in sorted(root.rglob("results.json")):
        try:
            results = json.loads(path.read_text())
        except ValueError as exc:
            raise StudyError(f"{path}: not valid JSON ({exc})") from None
        cfg_file = path.parent / "config.yaml"
        values = flatten(OmegaConf.to_container(OmegaConf.load(cfg_file))) if cfg_file.is_file() else {}
        values.update({f"results.{k}": v for k, v in flatten(results).items()})
        deep = "-deep" if values.get("method.deep") else ""
        values["method"] = f"{values.get('method.name', '?')}{deep}"
        values["params_m"] = backbone_params_m(str(values.get("model.name")))
        records.append(RunRecord(path.parent, values, _metric(results, metric),
                                 str(results.get("status", "finished"))))
    return records


def _key(name: str) -> str:
    return ALIASES.get(name, name)


# Keys that may differ between the runs a row averages: the seed (the point of averaging), and
# what names a run or how it is launched, logged and cached (not what it trains).
POOLED_KEYS = ("run.seed", *(f"run.{key}" for key in NEUTRAL_RUN), *NEUTRAL_KEYS)


def check_by(records: Sequence[RunRecord], by: Sequence[str]) -> None:
    """Every grouping column must name something at least one run has."""
    have = set().union(*(r.values for r in records)) if records else set()
    missing = [b for b in by if _key(b) not in have]
    if missing:
        config_keys = sorted(k for k in have if not k.startswith("results."))
        raise StudyError(f"--by {', '.join(missing)}: no run has {'this key' if len(missing) == 1 else 'these keys'}; "
                          f"available: {', '.join(list(ALIASES) + config_keys)}")


def check_metric(records: Sequence[RunRecord], metric: Optional[str]) -> None:
    """--metric must name a numeric results.json key that some run has."""
    if metric is None or any(r.metric is not None for r in records):
        return
    numeric = sorted({k[len("results."):] for r in records for k, v in r.values.items()
                      if k.startswith("results.") and isinstance(v, (int, float)) and not isinstance(v, bool)})
    raise StudyError(f"--metric {metric}: no run's results.json has a numeric '{metric}'; available: "
                     f"{', '.join(numeric)}")


def _differing(group: Sequence[RunRecord], by: Sequence[str]) -> List[str]:
    """Config keys whose values differ inside a group, apart from the seed and run naming."""
    skip = set(POOLED_KEYS) | {_key(b) for b in by} | {"params_m"}
    keys = set().union(*(r.values for r in group))
    return sorted(k for k in keys if k not in skip and not k.startswith(("results.", "launch."))
                  and len({repr(r.values.get(k)) for r in group}) > 1)


def table(records: Sequence[RunRecord], by: Sequence[str], metric_name: str = "top1") -> List[Dict[str, Any]]:
    """One row per group: mean and std of the metric over its finished runs (e.g. seeds).

    A group whose runs differ in more than the seed gets those keys in its `differs` column,
    so a silent average over, say, two learning rates shows up in the table.
    """
    groups: Dict[tuple, List[RunRecord]] = {}
    for r in records:
        if r.status != "finished" or r.metric is None:
            continue
        groups.setdefault(tuple(r.values.get(_key(b)) for b in by), []).append(r)
    rows = []
    for key in sorted(groups, key=lambda t: tuple(str(x) for x in t)):
        vals = [r.metric for r in groups[key]]
        row = dict(zip(by, key))
        row.update({metric_name: round(statistics.fmean(vals), 3),
                    "std": round(statistics.stdev(vals), 3) if len(vals) > 1 else None, "runs": len(vals),
                    "differs": ",".join(_differing(groups[key], by))})
        rows.append(row)
    return rows


def write_table(rows: List[Dict[str, Any]], out: Path, by: Sequence[str], metric_name: str = "top1") -> None:
    cols = list(by) + [metric_name, "std", "runs"]
    if any(r["differs"] for r in rows):
        cols.append("differs")
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"{metric_name}: mean over the runs of each row; std: sample standard deviation (n-1), - for "
             f"a single run; runs: n.", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("-" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
    (out / "report.md").write_text("\n".join(lines) + "\n")


MAX_LABEL = 48  # characters of a legend label; longer ones are numbered (the report lists them in full)
LEGEND_INSIDE = 4  # more lines than this: the legend goes below the panel


CAPACITY = "params_m"  # the x of the capacity panel: the backbone's size


def _one_to_one(runs: Sequence[RunRecord], a: str, b: str) -> bool:
    """Each value of `a` goes with one value of `b` and back (the backbone's name and its size)."""
    pairs = {(repr(r.values.get(a)), repr(r.values.get(b))) for r in runs}
    return len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})


# What names a backbone (its weights and input), as its size on the capacity panel's x does; a
# model setting that changes what is trained (pool, head init, ...) is not among them.
BACKBONE_IDENTITY = ("model.name", "model.checkpoint", "model.checkpoint_format", "model.img_size",
                     "model.in_chans", "model.mean", "model.std")


def _names_the_x(runs: Sequence[RunRecord], key: str, x_key: str) -> bool:
    """On the capacity panel, a setting that names the backbone (BACKBONE_IDENTITY) and goes one
    to one with its size says the same as the x; any other setting that happens to pair with
    the x (an lr each backbone ran at only, a pool mode) still splits."""
    return x_key == CAPACITY and key in BACKBONE_IDENTITY and _one_to_one(runs, key, x_key)


def _short_key(key: str, others: Sequence[str]) -> str:
    """'model.name' -> 'backbone' (ALIASES), 'optim.weight_decay' -> 'weight_decay', unless
    another key shown ends the same way (then two components)."""
    alias = next((a for a, k in ALIASES.items() if k == key), None)
    if alias:
        return alias
    last = key.rsplit(".", 1)[-1]
    clash = sum(o.rsplit(".", 1)[-1] == last for o in others) > 1
    return ".".join(key.split(".")[-2:]) if clash else last


def _short_value(value: Any) -> str:
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    text = text.rstrip("/").rsplit("/", 1)[-1]  # a path: its file name
    return text if len(text) <= 20 else f"{text[:9]}…{text[-10:]}"


def series_labels(series: Sequence[Tuple[str, Dict[str, Any]]]) -> Tuple[List[str], List[str]]:
    """Short legend labels for lines given as (method, the settings that split them), and each
    line's settings in full. A label shows only keys whose values differ between lines and are not
    implied by keys already shown (a checkpoint path goes with the backbone's name), with short
    key names and values; a label still over MAX_LABEL characters becomes '<method> (n)'."""
    keys = sorted({k for _, settings in series for k in settings},
                  key=lambda k: (k not in ALIASES.values(), list(ALIASES.values()).index(k)
                                 if k in ALIASES.values() else 0, k))
    shown: List[str] = []
    for key in keys:
        seen: Dict[tuple, set] = {}
        for method, settings in series:
            seen.setdefault((method, *(repr(settings.get(k)) for k in shown)), set()).add(repr(settings.get(key)))
        if any(len(values) > 1 for values in seen.values()):
            shown.append(key)
    labels = [" ".join([method] + [f"{_short_key(k, shown)}={_short_value(settings[k])}" for k in shown
                                   if k in settings]) for method, settings in series]
    count: Dict[str, int] = {}
    alike = {label for label in labels if labels.count(label) > 1}  # two lines alike once shortened
    for i, (method, _) in enumerate(series):
        if len(labels[i]) > MAX_LABEL or labels[i] in alike:
            count[method] = count.get(method, 0) + 1
            labels[i] = f"{method} ({count[method]})"
    return labels, [", ".join(f"{k}={settings[k]}" for k in sorted(settings)) for _, settings in series]


def plot_series(records: Sequence[RunRecord], x_key: str, fixed_key: str) -> tuple:
    """Per line: (x, mean, std) at the largest value of `fixed_key` the line has, that value, and
    the line's settings in full. A line is a method, split further by any setting its runs differ
    in (apart from the seed, the x and the fixed key, and on the capacity axis a backbone setting
    that goes one to one with the backbone's size, such as its name): runs that differ in, say,
    the learning rate are never averaged, even where each learning rate ran at one x only.
    Lines are labelled by series_labels."""
    done = [r for r in records if r.status == "finished" and r.metric is not None
            and r.values.get(x_key) is not None]
    lines: List[Tuple[str, Dict[str, Any], List[RunRecord]]] = []
    for method in sorted({r.values["method"] for r in done}):
        mine = [r for r in done if r.values["method"] == method]
        varying = [k for k in _differing(mine, [x_key, fixed_key])
                   if k not in (x_key, fixed_key, "method") and not _names_the_x(mine, k, x_key)]
        for variant in sorted({tuple(repr(r.values.get(k)) for k in varying) for r in mine}):
            runs = [r for r in mine if tuple(repr(r.values.get(k)) for k in varying) == variant]
            lines.append((method, {k: runs[0].values.get(k) for k in varying}, runs))
    labels, full = series_labels([(method, settings) for method, settings, _ in lines])
    out: Dict[str, List[tuple]] = {}
    fixed_at: Dict[str, Any] = {}
    settings_of: Dict[str, str] = {}
    for label, settings, (_, _, runs) in zip(labels, full, lines):
        fixed = max(r.values.get(fixed_key) or 0 for r in runs)
        by_x: Dict[float, List[float]] = {}
        for r in runs:
            if (r.values.get(fixed_key) or 0) == fixed:
                by_x.setdefault(float(r.values[x_key]), []).append(r.metric)
        out[label] = sorted((x, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                            for x, v in by_x.items())
        fixed_at[label] = fixed
        settings_of[label] = settings
    return out, fixed_at, settings_of


def fixed_note(label: str, fixed_at: Dict[str, Any]) -> str:
    text = {m: f"{v:.3g}" if isinstance(v, float) else str(v) for m, v in fixed_at.items()}
    values = sorted(set(text.values()), key=lambda v: -list(text.values()).count(v))
    if len(values) == 1:
        return f"{label} = {values[0]}"
    if len(text) > LEGEND_INSIDE:  # many lines: how many are fixed at each value
        return f"{label}: " + ", ".join(f"{v} ({list(text.values()).count(v)} lines)" for v in values)
    return f"{label}: " + ", ".join(f"{m} {v}" for m, v in text.items())


def plot(records: Sequence[RunRecord], out: Path, metric: Optional[str] = None) -> List[Tuple[str, str, str]]:
    """Two panels, written to out/scaling.png; the y axis is named after `metric` (test top-1 in %
    by default). Returns (panel, legend label, the line's settings in full) for every line."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = [(axes[0], CAPACITY, "data.fraction", "backbone parameters (M)", "data fraction"),
              (axes[1], "data.fraction", CAPACITY, "training data fraction", "backbone params (M)")]
    legend: List[Tuple[str, str, str]] = []
    for ax, x_key, fixed_key, xlabel, fixed_label in panels:
        xs = set()
        series, fixed_at, settings = plot_series(records, x_key, fixed_key)
        legend += [(xlabel.split(" (")[0], label, full) for label, full in settings.items()]
        for method, pts in series.items():
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                            capsize=3, label=method)
                xs.update(p[0] for p in pts)
        ax.set_xscale("log")
        # Ticks at the values the study ran, written plainly (log-axis minor labels collide).
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(sorted(xs), [f"{x:.3g}" for x in sorted(xs)])
        ax.set_xlabel(xlabel)
        ax.set_ylabel((metric or "top-1 (%)") + ", mean ± std (n-1)")
        note = fixed_note(fixed_label, fixed_at) if fixed_at else "no runs"
        ax.set_title(f"{metric or 'top-1'} vs {xlabel.split(' (')[0]}\n({note})", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.lines and len(series) > LEGEND_INSIDE:  # below the panel, in two columns
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8, frameon=False)
        elif ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120, bbox_inches="tight")  # the legends below included
    plt.close(fig)
    return legend


def write_report(runs_dir: str, out_dir: str, by: Sequence[str] = ("method", "backbone", "data_fraction"),
                 metric: Optional[str] = None) -> Dict[str, Any]:
    """Writes report.md, report.csv and scaling.png into `out_dir`; returns a summary whose
    `warnings` name the rows that average runs differing in more than the seed."""
    records = collect(runs_dir, metric)
    if not records:
        raise StudyError(f"no results.json under '{runs_dir}'")
    check_by(records, by)
    check_metric(records, metric)
    metric_name = metric or "top1"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = table(records, by, metric_name)
    write_table(rows, out, by, metric_name)
    legend = plot(records, out, metric)
    if any(full for _, _, full in legend):  # the lines' settings in full, beside the plot's short labels
        with open(out / "report.md", "a") as f:
            f.write("\nThe lines of scaling.png:\n\n| panel | line | settings |\n|---|---|---|\n"
                    + "".join(f"| {panel} | {label} | {full or '-'} |\n" for panel, label, full in legend))
    skipped = [str(r.run_dir) for r in records if r.status != "finished" or r.metric is None]
    warnings = [f"row {', '.join(f'{b}={r[b]}' for b in by)} averages {r['runs']} runs that differ in "
                f"{r['differs'].replace(',', ', ')} (add them to --by to separate them)"
                for r in rows if r["differs"]]
    return {"runs": len(records), "rows": len(rows), "skipped": skipped, "out": str(out), "warnings": warnings}
