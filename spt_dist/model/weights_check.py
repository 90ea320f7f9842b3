"""`spt weights check` and the check at run start: summary, match against the papers' files, md5,
and the run's normalisation and pooling against that file's recipes.

Only an unreadable file is an error; everything found about a run is a warning (in
metrics.jsonl as the `weights_check` event, and on stderr), since a departure from a paper's
recipe may be the point of the run.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from spt_dist.config import Config
from spt_dist.config.hub import is_hub_name, parse_hub_name, resolve_checkpoint

from .identify import describe, describe_match, identify, md5_finding
from .known import KNOWN, Known, Recipe
from .summary import summarize, summary_of_keys
from .weights import Checkpoint, CheckpointError, detect_format

if TYPE_CHECKING:
    from spt_dist.rundir.metrics import MetricsLog

# The checkpoint_format each layout loads with (MAE's recipes need "mae" whatever the layout).
LAYOUT_FORMAT = {"jax-vit": "npz", "big_vision": "npz", "mae-pretrain": "mae", "mae-with-decoder": "mae",
                 "mae-finetune": "mae", "mocov3-pretrain": "mocov3", "mocov3-linear": "mocov3", "timm": "timm",
                 "deit": "timm", "wrapped": "timm"}


@dataclass
class Report:
    lines: List[str]
    warnings: List[str] = field(default_factory=list)
    record: Dict[str, Any] = field(default_factory=dict)  # the weights_check event of metrics.jsonl


def entry_format(k: Known) -> str:
    return "mae" if any(r.head_norm for r in k.recipes) else LAYOUT_FORMAT[k.layout]


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(x - y) < 1e-4 for x, y in zip(a, b))


def _pool_of(r: Recipe, prompts: int) -> str:
    return "token" if r.pool == "token" else ("mean_with_prompts" if prompts else "mean")


def run_findings(cfg: Config, k: Known, fmt: str) -> Dict[str, List[str]]:
    """{"notes": [...], "warnings": [...]}: the run's normalisation and pooling against k's recipes."""
    from .build import input_spec, resolve_pool

    _, mean, std = input_spec(cfg, fmt)
    pool, prompts = resolve_pool(cfg, fmt), cfg.method.prompt_length
    head_norm = cfg.model.mae_head_norm if fmt == "mae" else None
    notes, warnings = [], []
    papers = [r for r in k.recipes if r.name != "pretraining"] or list(k.recipes)
    fed = [r.name for r in k.recipes if _close(mean, r.norm[0]) and _close(std, r.norm[1])]
    whose = "model.mean / model.std" if cfg.model.mean is not None else f"the default of format {fmt}"
    if fed:
        notes.append(f"run normalisation: mean {list(mean)} std {list(std)} ({whose}), as in {', '.join(fed)}")
    else:
        used = "; ".join(f"{r.name}: mean {list(r.norm[0])} std {list(r.norm[1])}" for r in k.recipes)
        warnings.append(f"this run normalises with mean {list(mean)} std {list(std)} ({whose}), which none of "
                        f"{k.name}'s recipes did ({used}); to follow {papers[0].name}: model.mean="
                        f"{list(papers[0].norm[0])} model.std={list(papers[0].norm[1])}")
    pooled = [r for r in k.recipes if r.pool]
    ours = f"{pool}" + (f" with mae_head_norm {head_norm}" if head_norm else "")
    same = [r.name for r in pooled if pool == _pool_of(r, prompts) and r.head_norm in (None, head_norm)]
    if same:
        notes.append(f"run pooling: {ours} (model.pool={cfg.model.pool}), as in {', '.join(same)}")
    elif pooled:
        theirs = "; ".join(f"{r.name}: {_pool_of(r, prompts)}" + (f" with mae_head_norm {r.head_norm}"
                           if r.head_norm else "") for r in pooled)
        fix = (f"set model.checkpoint_format=mae (read as format {fmt}, the file keeps its per-token norm)"
               if any(r.head_norm for r in pooled) and fmt != "mae" else f"set model.pool={_pool_of(pooled[0], prompts)}")
        warnings.append(f"this run pools {ours} (model.pool={cfg.model.pool}, format {fmt}), unlike {k.name}'s "
                        f"recipes ({theirs}); {fix}")
    return {"notes": notes, "warnings": warnings}


def _detected(path: str, read: Optional[Checkpoint]) -> str:
    if read is None:
        return detect_format(path)
    if read.detected is None:
        raise CheckpointError(read.undecided)
    return read.detected


def _format_line(path: str, k: Optional[Known], read: Optional[Checkpoint] = None) -> Tuple[str, Optional[str], Optional[str]]:
    """(the line on the file's format, a warning or None, the format `auto` resolves to or None)."""
    try:
        fmt = _detected(path, read)
    except CheckpointError as exc:
        hint = f"; as {k.name} it is format {entry_format(k)}: set model.checkpoint_format={entry_format(k)}" \
            if k else ""
        return f"format: not decided by its keys ({exc}){hint}", None, None
    warning = None
    if k is not None and entry_format(k) != fmt:
        warning = (f"model.checkpoint_format=auto reads this file as {fmt}, but the papers' code loads {k.name} "
                   f"as {entry_format(k)} (mean pooling and its norm): set model.checkpoint_format={entry_format(k)}")
    return f"format: {fmt} (what model.checkpoint_format=auto reads it as)", warning, fmt


def check_weights(target: str, cfg: Optional[Config] = None, md5: bool = True,
                  read: Optional[Checkpoint] = None) -> Report:
    """Report on `target` (a path or an hf-hub name); with `cfg`, also on how that run uses it.
    `read`: the file as read_weights read it, so that a run's check does not read it again."""
    path = read.path if read is not None else resolve_checkpoint(target)
    hub_name = parse_hub_name(target)[0] if is_hub_name(target) else None
    s = summary_of_keys(path, read.keys) if read is not None and read.keys is not None else summarize(path)
    match = identify(s, hub_name)
    k = match.entry
    line, warning, fmt = _format_line(path, k, read)
    report = Report(describe(s) + [line] + describe_match(match))
    report.warnings += [warning] if warning else []
    if hub_name and any(e.name == hub_name for e in KNOWN) and (k is None or k.name != hub_name):
        report.warnings.append(f"the cache's file for hf-hub:{hub_name} does not have the layout and shapes "
                               f"timm publishes under that name")
    md5_state = "no published md5" if k is None or not k.md5 else "not checked"
    if k is not None and k.md5 and md5:
        same, text = md5_finding(path, k)
        md5_state = "matches" if same else "differs"
        (report.lines if same else report.warnings).append(text)
    if cfg is not None and k is not None:
        if cfg.model.checkpoint_format != "auto":
            fmt = cfg.model.checkpoint_format
        if fmt is None:
            report.warnings.append(f"this run cannot read the file with model.checkpoint_format=auto; set "
                                   f"model.checkpoint_format={entry_format(k)}")
        else:
            found = run_findings(cfg, k, fmt)
            report.lines += found["notes"]
            report.warnings += found["warnings"]
    report.record = {"file": path, "layout": s.layout, "known": k.name if k else None, "backbone": match.backbone,
                     "backbone_params": s.params, "md5": md5_state, "warnings": report.warnings}
    return report


def log_weights_check(cfg: Config, log: "MetricsLog", step: int, read: Optional[Checkpoint] = None) -> None:
    """The check at run start (rank 0): the event in metrics.jsonl, warnings on stderr; never raises.
    `read`: the run's weight file as read_weights read it (the file is then not read again)."""
    if not (log.enabled and cfg.model.checkpoint):
        return
    try:
        report = check_weights(cfg.model.checkpoint, cfg, md5=False, read=read)  # an md5 of 2.5 GB at every start: no
    except Exception as exc:  # noqa: BLE001 - a check that informs must not end the run
        report = Report([], [f"the weights check could not read {cfg.model.checkpoint}: {exc}"])
        report.record = {"warnings": report.warnings}
    log.log("weights_check", step, **report.record)
    for text in report.warnings:
        print(f"spt: warning: weights check: {text}", file=sys.stderr, flush=True)
