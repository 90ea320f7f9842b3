"""Launching runs and studies: submitit executors (SLURM, local, debug), job arrays for
sweeps, requeue on preemption, job status, and study reports. Imports neither torch nor the
engine: a login node validates and submits in a second."""
from .executor import make_executor, resolve_cluster
from .submit import Submitted, prepare, submit_run, submit_study
from .task import TrainTask

__all__ = ["Submitted", "TrainTask", "make_executor", "prepare", "resolve_cluster",
           "submit_run", "submit_study"]
