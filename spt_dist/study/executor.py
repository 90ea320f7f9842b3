"""Build a submitit executor from the `launch` section of a run config.

The launcher stays apart from the training code: nothing here imports torch or the engine,
so a login node can validate and submit in a second.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import submitit

from spt_dist.config import ConfigError
from spt_dist.config.schema import LaunchConfig

CLUSTERS = ("auto", "slurm", "local", "debug")


def resolve_cluster(cluster: str) -> str:
    """`auto` is SLURM when `sbatch` is on the PATH (a login node), else the local executor."""
    if cluster not in CLUSTERS:
        raise ConfigError(f"config key 'launch.cluster' = {cluster!r} is not allowed; "
                          f"allowed values: {', '.join(CLUSTERS)}")
    if cluster == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    if cluster == "slurm" and not shutil.which("sbatch"):
        raise ConfigError("launch.cluster=slurm but `sbatch` is not on the PATH "
                          "(on a development machine: bash launch/slurm_up.sh; source its env.sh)")
    return cluster


def _sbatch_value(value: str):
    """`true` becomes a bare flag (`--exclusive`), `false` drops the option, the rest stays text."""
    low = str(value).strip().lower()
    return True if low == "true" else None if low == "false" else value


def make_executor(launch: LaunchConfig, job_name: str = "spt") -> submitit.Executor:
    """An executor whose jobs live in `launch.folder/<job id>/`, shaped by `launch`.

    The local executor runs on this machine only: no nodes, no sbatch options, and a sweep's
    runs all start at once (it has no array throttle). Its time-out signal and requeue count
    follow `signal_delay_s` and `max_requeues` as on SLURM.
    """
    cluster = resolve_cluster(launch.cluster)
    folder = Path(launch.folder).expanduser().resolve() / "%j"
    params = dict(
        timeout_min=launch.timeout_min,
        tasks_per_node=launch.tasks_per_node,  # one task per GPU (validated)
        gpus_per_node=launch.gpus_per_node,
        cpus_per_task=launch.cpus_per_task,
    )
    if cluster == "local":
        # AutoExecutor passes neither the signal delay nor the requeue count to the local executor.
        executor: submitit.Executor = submitit.LocalExecutor(folder=folder, max_num_timeout=launch.max_requeues)
        executor.update_parameters(signal_delay_s=launch.signal_delay_s, **params)
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=launch.max_requeues)
    params.update(name=job_name, nodes=launch.nodes, slurm_signal_delay_s=launch.signal_delay_s,
                  slurm_array_parallelism=launch.array_parallelism)
    if launch.mem_gb > 0:
        params["mem_gb"] = launch.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(launch, key)
        if value:
            params[f"slurm_{key}"] = value
    extra = {str(k).lstrip("-"): _sbatch_value(v) for k, v in launch.sbatch_extra.items()}
    if launch.elastic and launch.min_nodes and launch.min_nodes < launch.nodes:
        extra["nodes"] = f"{launch.min_nodes}-{launch.nodes}"  # after submitit's --nodes: sbatch takes the last
    extra = {k: v for k, v in extra.items() if v is not None}
    if extra:
        params["slurm_additional_parameters"] = extra
    executor.update_parameters(**params)
    return executor
