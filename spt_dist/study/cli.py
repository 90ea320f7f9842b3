"""`spt submit`, `spt sweep`, `spt status`, `spt cancel`, `spt report`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List


from spt_dist.config import ConfigError
from spt_dist.config.cli import add_config_arguments

# Command-line flag -> launch key; a flag given becomes the override launch.<key>=<value>,
# so it is validated like any other setting.
LAUNCH_FLAGS = {
    "cluster": str, "folder": str, "nodes": int, "gpus_per_node": int, "tasks_per_node": int,
    "cpus_per_task": int, "mem_gb": int, "timeout_min": int, "partition": str, "account": str,
    "qos": str, "constraint": str, "max_requeues": int, "signal_delay_s": int, "array_parallelism": int,
    "elastic": bool, "min_nodes": int,
}


def _add_launch_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("launch (override the config's launch section)")
    for key, kind in LAUNCH_FLAGS.items():
        flag, dest = "--" + key.replace("_", "-"), f"launch_{key}"
        if kind is bool:  # `--elastic` alone is true; `--elastic false` turns it off
            group.add_argument(flag, dest=dest, nargs="?", const="true", choices=("true", "false"))
        else:
            group.add_argument(flag, dest=dest, type=kind, metavar=key.upper())
    group.add_argument("--sbatch", nargs="+", default=[], metavar="KEY=VALUE",
                       help="extra sbatch options, e.g. --sbatch mail-type=END exclusive=true")
    group.add_argument("--wait", action="store_true", help="wait for the job(s) and print the results")


def _launch_overrides(args: argparse.Namespace) -> List[str]:
    out = [f"launch.{k}={getattr(args, 'launch_' + k)}" for k in LAUNCH_FLAGS
           if getattr(args, "launch_" + k) is not None]
    for item in args.sbatch:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--sbatch '{item}' is not of the form key=value")
        out.append(f"launch.sbatch_extra.{key.lstrip('-')}={value}")
    return out


def _print_submitted(sub) -> None:
    where = "in this process" if sub.cluster == "debug" else f"logs: {sub.job_folder}"
    print(f"submitted job {sub.job.job_id} ({sub.cluster}); {where}; run folder: {sub.run_dir}", flush=True)


def _wait(subs) -> int:
    """Each run judged by its own results.json and the tasks that started (study/wait.py)."""
    from .wait import wait_for

    failed = 0
    for sub in subs:
        out = wait_for(sub)
        if out.error:
            failed += 1
            print(f"job {out.job_id} failed:\n{out.error}", file=sys.stderr)
        else:
            print(json.dumps({"job": out.job_id, "run_dir": str(out.run_dir), "tasks": out.tasks,
                              "results": out.results}, default=str))
    return 1 if failed else 0


def _submit(args: argparse.Namespace) -> int:
    from .submit import prepare, submit_run

    cfg = prepare(args.config, list(args.overrides) + _launch_overrides(args))
    sub = submit_run(cfg, config_path=args.config)
    _print_submitted(sub)
    return _wait([sub]) if args.wait or sub.cluster == "debug" else 0


def _sweep(args: argparse.Namespace) -> int:
    from .submit import prepare, submit_study
    from spt_dist.config.sweep import expand, is_sweep_file, load_sweep_file, parse_grid

    configs, grid, overrides = [args.config], {}, []
    if args.config and Path(args.config).is_file() and is_sweep_file(args.config):
        configs, grid, overrides = load_sweep_file(args.config)
    configs += list(args.configs or [])
    grid.update(parse_grid(args.grid or []))
    overrides += list(args.overrides) + _launch_overrides(args)
    points = expand([c for c in configs if c], grid, overrides)
    cfgs = [prepare(p.config, p.overrides, name_suffix=p.suffix) for p in points]  # all validated first
    subs = submit_study(cfgs, [p.config for p in points])
    how = {"slurm": "submitted as one job array", "local": "started at once on this machine (local executor)",
           "debug": "run one after another in this process"}
    print(f"sweep of {len(subs)} runs {how.get(subs[0].cluster, 'submitted')}", flush=True)
    for sub in subs:
        _print_submitted(sub)
    return _wait(subs) if args.wait or (subs and subs[0].cluster == "debug") else 0


def _status(args: argparse.Namespace) -> int:
    """One job, or every task of an array (given its array id): the worst exit code."""
    from .status import find_job_folders

    folders = find_job_folders(args.job, args.jobs_dir)
    codes = [_status_of(folder) for folder in folders]
    if len(folders) > 1:
        print(f"array {args.job}: {len(folders)} tasks, {sum(1 for c in codes if c)} failed")
    return max(codes)


def _status_of(folder) -> int:
    from .status import job_status, log_tail

    st = job_status(folder)
    print(f"job {st.job_id} ({st.cluster}): {st.state}")
    print(f"  job folder: {st.folder}")
    print(f"  run folder: {st.run_dir}")
    if st.results:
        print("  results: " + json.dumps(st.results, sort_keys=True, default=str))
    for trace in st.errors:
        print("  failed with:\n" + trace, file=sys.stderr)
    if not st.errors and st.state in ("FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT", "ENDED_WITHOUT_RESULT"):
        print("  stderr (end):\n" + log_tail(st.folder, st.job_id), file=sys.stderr)
    return 1 if st.errors else 0


def _cancel(args: argparse.Namespace) -> int:
    from .status import cancel_job, find_job_folder

    print(cancel_job(find_job_folder(args.job, args.jobs_dir)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    by = [b for b in args.by.split(",") if b]
    summary = write_report(args.runs_dir, args.out, by=by, metric=args.metric)
    print(f"{summary['runs']} runs -> {summary['rows']} rows: {summary['out']}/report.md, report.csv, scaling.png")
    for line in summary["warnings"]:
        print(f"  warning: {line}")
    for path in summary["skipped"]:
        print(f"  not in the table (unfinished or no metric): {path}")
    return 0


def register(sub) -> None:
    from .study_cli import register as register_study

    register_study(sub)
    p = sub.add_parser("submit", help="validate a run config and submit it (SLURM, local or debug)")
    add_config_arguments(p)
    _add_launch_flags(p)
    p.set_defaults(func=_submit)

    p = sub.add_parser("sweep", help="submit a grid of runs as one job array")
    p.add_argument("config", help="run file, or a sweep YAML (config/configs, overrides, grid)")
    p.add_argument("overrides", nargs="*", help="dot-list overrides applied to every run")
    p.add_argument("--grid", nargs="+", metavar="KEY=V1,V2", help="one axis per item; the product is swept")
    p.add_argument("--configs", nargs="+", metavar="YAML", help="more run files, each crossed with the grid")
    _add_launch_flags(p)
    p.set_defaults(func=_sweep)

    for name, func, text in (("status", _status, "state, results or failure of a submitted job"),
                             ("cancel", _cancel, "cancel a submitted job")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job", help="job folder (launch.folder/<job id>) or job id"
                       + (" (an array id: every task)" if name == "status" else ""))
        p.add_argument("--jobs-dir", default="jobs", help="where to look up a bare job id (launch.folder)")
        p.set_defaults(func=func)

    p = sub.add_parser("report", help="table and plots from every results.json under a folder")
    p.add_argument("runs_dir")
    p.add_argument("--by", default="method,backbone,data_fraction",
                   help="grouping columns: method, backbone, data_fraction, prompt_length, lr, seed or config keys")
    p.add_argument("--metric", default=None, help="results.json key (dotted); default test top-1")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.set_defaults(func=_report)
