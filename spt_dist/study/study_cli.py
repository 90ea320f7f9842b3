"""`spt study plan|run|status|report SPEC`."""
from __future__ import annotations

import argparse
import sys


def _plan(args: argparse.Namespace, check: bool = True):
    """The plan of `args.spec` (a spec file or a study's out_dir); `check=False` for the
    commands that only read results (no data or weight file is opened); --cluster wins over
    the spec's launch.cluster."""
    from dataclasses import replace

    from .plan import build_plan
    from .spec import load_spec

    spec = load_spec(args.spec)
    if getattr(args, "cluster", None):
        spec = replace(spec, launch=spec.launch + (f"launch.cluster={args.cluster}",))
    return build_plan(spec, check=check)


def _cmd_plan(args: argparse.Namespace) -> int:
    from spt_dist.engine.preflight import training_samples

    from .cost import estimate, machine_flops, measured_rates, measured_startup, reference_runs
    from .driver import survey

    plan = _plan(args)
    spec = plan.spec
    n_search = sum(len(v) for v in plan.search.values())
    print(f"study {spec.name}: {len(plan.cells)} cells ({len(spec.methods)} method(s) x "
          f"{' x '.join(str(len(a)) for a in spec.axes)} axis values); runs in {spec.runs_dir}")
    per_method = {m.name: sum(len(plan.search[c.key]) for c in plan.cells if c.method.name == m.name)
                  for m in spec.methods}
    print(f"  search: {n_search} runs ({', '.join(f'{k} {v}' for k, v in per_method.items())})")
    for c in plan.cells:
        print(f"    {c.key}: {len(plan.search[c.key])} runs, e.g. {plan.search[c.key][0].name}")
    print(f"  final: {len(plan.cells) * len(spec.seeds)} runs ({len(spec.seeds)} seed(s) per cell, after selection "
          f"on {spec.metric})")
    if spec.pack_search:
        lone = [c.key for c in plan.cells if c.key not in plan.packed]
        print(f"  pack_search: {len(plan.packed)} cell(s) search as one packed task each"
              + (f"; {len(lone)} cell(s) of methods packed training cannot train (linear, full) one task per run"
                 if lone else ""))
    p = survey(plan, write=False)
    print(f"  already: {p.count('done')} done, {p.count('running')} running, {len(p.final)} cells selected")
    refs, flops = reference_runs(spec.runs_dir), machine_flops()
    first_final = [plan.final(c, c.grid()[0])[0] for c in plan.cells]
    finals = [r for c, f in zip(plan.cells, first_final) for r in [f] * len(spec.seeds)]
    cost = estimate([r for runs in plan.search.values() for r in runs] + finals, training_samples,
                    measured_rates(refs), flops, measured_startup(refs, flops), plan.packed)
    print(f"  cost: about {cost['total_seconds'] / 3600:.2f} hours of the runs' wall time, one after another:")
    print(f"        {cost['seconds'] / 3600:.2f} h training ({cost['runs_measured']} runs at measured rates of earlier "
          f"runs of the same shape, {cost['runs_estimated']} from FLOPs at this machine's {flops / 1e9:.0f} GFLOP/s)")
    how = "measured: the median of earlier runs here" if cost["startup_measured"] else "assumed: no earlier run here"
    print(f"        + {cost['forward_seconds'] / 3600:.2f} h evaluation and prototype passes, + "
          f"{cost['startup_seconds'] / 3600:.2f} h set-up ({cost['jobs']} jobs x {cost['startup_per_job']:.0f} s, {how})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .driver import complete, run_study

    plan = _plan(args)
    p = run_study(plan, wait=not args.no_wait, poll_s=args.poll, max_attempts=args.max_attempts)
    failed = [k for k, s in p.states.items() if s.state == "failed"]
    for k in failed:
        print(f"failed: {k}:\n{p.states[k].error}", file=sys.stderr)
    if not args.no_report and (not args.no_wait or complete(plan, p)):
        _print_report(plan, None)
    return 1 if failed else 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .driver import survey

    plan = _plan(args, check=False)
    p = survey(plan, write=False)
    failed = 0
    for cell in plan.cells:
        for stage, runs in (("search", plan.search[cell.key]), ("final", p.final.get(cell.key, []))):
            states = [p.states[str(r.run_dir)] for r in runs]
            counts = {s: sum(1 for x in states if x.state == s) for s in ("done", "running", "failed", "pending")}
            label = "not selected yet" if stage == "final" and cell.key not in p.final else \
                ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "none"
            print(f"{cell.key:60} {stage:6} {label}")
            for r, s in zip(runs, states):
                if s.state == "failed":
                    failed += 1
                    print(f"    {r.name} failed (attempt {s.attempts}): {s.error.strip().splitlines()[-1] if s.error else ''}")
    return 1 if failed else 0


def _cmd_report(args: argparse.Namespace) -> int:
    return _print_report(_plan(args, check=False), args.out)


def _print_report(plan, out) -> int:
    from .summary import write_study_report

    summary = write_study_report(plan, out)
    print(f"{summary['cells']} cells ({summary['complete']} complete), {summary['fits']} fits -> {summary['out']}/"
          f"study.md, study.csv, fits.csv, {', '.join(p.rsplit('/', 1)[-1] for p in summary['plots'])}")
    for m in summary["missing"]:
        print(f"  incomplete: {m}")
    return 0


def register(sub) -> None:
    study = sub.add_parser("study", help="scaling studies: plan, run, status, report a study spec").add_subparsers(
        dest="action", required=True)
    for name, func, text in (("plan", _cmd_plan, "runs per stage and a cost estimate; nothing runs"),
                             ("run", _cmd_run, "submit, select per cell, submit the final stage; idempotent"),
                             ("status", _cmd_status, "per cell and stage: done, running, failed, pending"),
                             ("report", _cmd_report, "table, plots and fitted scaling curves")):
        p = study.add_parser(name, help=text)
        p.add_argument("spec", help="study spec YAML (see configs/study/)"
                       + ("" if name in ("plan", "run") else ", or the study's out_dir (where `run` saved it)"))
        p.set_defaults(func=func)
        if name in ("plan", "run"):
            p.add_argument("--cluster", choices=("slurm", "local"),
                           help="where the runs go; overrides the spec's launch.cluster")
        if name == "run":
            p.add_argument("--no-report", action="store_true",
                           help="do not write the report when the study finishes (spt study report does)")
            p.add_argument("--no-wait", action="store_true", help="one pass: submit what can run now, then return")
            p.add_argument("--poll", type=float, default=10.0, help="seconds between passes")
            p.add_argument("--max-attempts", type=int, default=2, help="submissions of a failing run before giving up")
        if name == "report":
            p.add_argument("-o", "--out", help="output folder (default: the spec's out_dir/report)")
