"""Validate locally, then submit one run or a whole sweep (one job array).

Every job folder (`launch.folder/<job id>/`) gets a `job.json` next to submitit's files, so
`spt status` and `spt cancel` need nothing but the folder.
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import submitit

from spt_dist.config import ConfigError, load_config
from spt_dist.config.schema import Config
from spt_dist.errors import SptError
from spt_dist.rundir import config_clash, default_run_name, run_dir_for

from .executor import make_executor, resolve_cluster
from .task import TRAIN_FN, PackTask, TrainTask


class SubmitError(SptError):
    """The scheduler refused the job (an sbatch option it does not know, no such partition...)."""


@contextlib.contextmanager
def _refused_as_error(cluster: str):
    """A refused submission is the user's to fix: one line naming what sbatch said (submitit
    prints sbatch's stderr itself before it raises: held back here, passed on unless refused)."""
    held, refused = io.StringIO(), False
    try:
        with contextlib.redirect_stderr(held):
            yield
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as exc:
        refused = True
        said = getattr(exc, "stderr", None) or str(exc)
        said = "; ".join(line.strip() for line in str(said).splitlines() if line.strip())
        raise SubmitError(f"submission to {cluster} failed, nothing submitted: {said}") from None
    finally:
        if not refused:
            sys.stderr.write(held.getvalue())


@dataclass
class Submitted:
    job: submitit.Job
    cfg: Config
    run_dir: Path
    job_folder: Path
    cluster: str


def prepare(path: Optional[str], overrides: Sequence[str] = (), name_suffix: str = "", check: bool = True) -> Config:
    """Load and validate (files included; `check=False`: none opened) before anything is submitted;
    fix the run folder."""
    cfg = load_config(path, list(overrides), check_files=check)
    # The engine's own naming, so `spt train` and `spt submit` of one config share a run folder.
    name = (cfg.run.name or default_run_name(cfg)) + name_suffix
    out_dir = str(Path(cfg.run.out_dir).expanduser().resolve())  # jobs may start elsewhere
    cfg = replace(cfg, run=replace(cfg.run, name=name, out_dir=out_dir))
    clash = config_clash(cfg, run_dir_for(cfg))  # a reused run.name with another config
    if clash:
        raise ConfigError(clash)
    if check:
        preflight_on_login_node(cfg)
    return cfg


def preflight_on_login_node(cfg: Config) -> None:
    """What the job would find out after its queue wait, found out now (torch-free)."""
    from spt_dist.engine import preflight

    la = cfg.launch
    if cfg.distributed.backend == "nccl" and la.gpus_per_node == 0 and resolve_cluster(la.cluster) != "debug":
        raise ConfigError("config key 'distributed.backend' = 'nccl' needs GPUs, but launch.gpus_per_node = 0; "
                          "request GPUs (--gpus-per-node N --tasks-per-node N) or use distributed.backend=auto")
    from spt_dist.config.batch import launch_world_sizes
    from spt_dist.engine.shape import first_shape, shaped

    samples = preflight.training_samples(cfg)
    for world in launch_world_sizes(la):  # an elastic job may start on any node count of its range
        preflight.check_run(shaped(cfg, first_shape(cfg, world)), world, None, samples)
    from spt_dist.data.overlap import check_eval_splits

    d = cfg.data
    check_eval_splits(preflight.load_index(d.root), d.train_split, d.val_split, d.test_split, d.duplicate_images)


def _record(sub: Submitted, config_path: Optional[str], pack_run_dirs: Optional[List[str]] = None) -> None:
    info = {
        "job_id": sub.job.job_id,
        "cluster": sub.cluster,
        "run_dir": str(sub.run_dir),
        "run_name": sub.cfg.run.name,
        "config": config_path,
        "tasks": sub.cfg.launch.nodes * sub.cfg.launch.tasks_per_node,
        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if pack_run_dirs:
        info["pack_run_dirs"] = pack_run_dirs
    sub.job_folder.mkdir(parents=True, exist_ok=True)
    (sub.job_folder / "job.json").write_text(json.dumps(info, indent=2) + "\n")


def _job_folder(job: submitit.Job) -> Path:
    return Path(job.paths.folder)


def submit_run(cfg: Config, config_path: Optional[str] = None, train_fn: str = TRAIN_FN) -> Submitted:
    """Submit one prepared run; returns at once (the job runs on the cluster)."""
    cluster = resolve_cluster(cfg.launch.cluster)
    executor = make_executor(cfg.launch, job_name=f"spt-{cfg.run.name}")
    with _refused_as_error(cluster):
        job = executor.submit(TrainTask(cfg, train_fn))
    sub = Submitted(job, cfg, run_dir_for(cfg), _job_folder(job), cluster)
    if cluster != "debug":
        _record(sub, config_path)
    return sub


def submit_study(cfgs: List[Config], config_paths: Iterable[Optional[str]] = (),
                 train_fn: str = TRAIN_FN) -> List[Submitted]:
    """Submit many prepared runs as ONE job array (launch settings of the first config)."""
    return submit_groups([[c] for c in cfgs], config_paths, train_fn)


def submit_groups(groups: List[List[Config]], config_paths: Iterable[Optional[str]] = (),
                  train_fn: str = TRAIN_FN) -> List[Submitted]:
    """ONE job array with a task per group: a group of one is a run (TrainTask), a larger group
    a pack trained in one job (PackTask; its members checked with config.pack.check_pack).
    One Submitted per config, in order; a pack's members share their job."""
    from spt_dist.config.pack import PackMember, check_pack

    cfgs = [c for g in groups for c in g]
    if not cfgs:
        raise ConfigError("the sweep expands to no runs")
    names = [c.run.name for c in cfgs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two runs of the sweep share a run folder: {', '.join(twice)} "
                          "(give each a different run.name)")
    for g in groups:
        if len(g) > 1:
            check_pack([PackMember(c.run.name, [], c) for c in g])
    launch = cfgs[0].launch
    cluster = resolve_cluster(launch.cluster)
    executor = make_executor(launch, job_name="spt-sweep")
    with _refused_as_error(cluster), executor.batch():
        jobs = [executor.submit(TrainTask(g[0], train_fn) if len(g) == 1 else PackTask(g)) for g in groups]
    paths = iter(list(config_paths) or [None] * len(cfgs))
    subs = []
    for job, group in zip(jobs, groups):
        for i, cfg in enumerate(group):
            sub = Submitted(job, cfg, run_dir_for(cfg), _job_folder(job), cluster)
            path = next(paths)
            if cluster != "debug" and i == 0:  # job.json names the pack's first member and every member
                _record(sub, path, [str(run_dir_for(c)) for c in group] if len(group) > 1 else None)
            subs.append(sub)
    return subs
