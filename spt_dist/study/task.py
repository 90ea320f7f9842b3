"""The submitit task that runs one training run (or one pack of runs), and how it is requeued.

Order of events on preemption or an approaching time limit (SLURM sends SIGUSR2 to every
task, `signal_delay_s` before the end):

1. submitit installs its own SIGUSR2 handler when the job starts; `train()` replaces it with
   the engine's, which only sets a flag. The training loop sees the flag at the next step
   boundary, saves a checkpoint collectively on all ranks and returns "interrupted".
2. Only then does this task hand over to submitit's handler, on rank 0: it calls
   `checkpoint()` (which only resubmits this task), counts the requeue against
   `launch.max_requeues` and runs `scontrol requeue`. The other ranks leave without a result,
   so no client mistakes an interrupted rank for a finished one.
3. The requeued job runs this task again; `train()` resumes from the newest checkpoint in
   the run folder, and a run whose results.json says "finished" is not trained again.

A signal that arrives before `train()` installs its handler reaches submitit's handler
directly: rank 0 requeues at once, nothing is lost but start-up time. One that arrives while
`train()` waits for another job's lock on the run folder ends the wait: "interrupted" without
the folder claimed, requeued by step 2 just the same.

`scancel` (and `spt cancel`) sends SIGTERM instead: the engine saves and returns
"interrupted" just the same, but the job then ends without a requeue. The run folder keeps
its checkpoint; submitting the same config again continues the run.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import submitit
from submitit.core.job_environment import SignalHandler

from spt_dist.config.schema import Config
from spt_dist.rundir import finished_results, run_dir_for

from .rendezvous import ATTEMPTS, gave_up, is_transient, job_port, process_group_exists, reset_process_group

TRAIN_FN = "spt_dist.engine.train:train"
PACK_FN = "spt_dist.engine.pack:train_pack"
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _load(spec: str) -> Callable[..., Dict[str, Any]]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _preemption_handler() -> Optional[Callable[[int, Any], None]]:
    """submitit's SIGUSR2 handler, when this process runs under a requeueing executor."""
    handler = signal.getsignal(submitit.JobEnvironment._usr_sig())
    if isinstance(getattr(handler, "__self__", None), SignalHandler):
        return handler
    return None


def _tasks(executor: str) -> int:
    """The number of tasks of the submitit job this process runs in (1 outside one)."""
    return submitit.JobEnvironment().num_tasks if executor in ("slurm", "local") else 1


class TrainTask:
    """Callable submitted to submitit: `TrainTask(cfg)()` trains the run `cfg` describes."""

    def __init__(self, cfg: Config, train_fn: str = TRAIN_FN) -> None:
        self.cfg = cfg
        self.train_fn = train_fn  # "module:function"; the engine's train by default

    def _finished(self) -> Any:
        """The results when there is nothing left to train (another config finished there since: an error)."""
        return finished_results(self.cfg, run_dir_for(self.cfg))

    def _train(self, run_dir: Path) -> Any:
        return _load(self.train_fn)(self.cfg, str(run_dir))

    @staticmethod
    def _preempted(results: Any) -> bool:
        return results.get("status") == "interrupted" and results.get("signal") == "SIGUSR2"

    def __call__(self) -> Any:
        run_dir = run_dir_for(self.cfg)
        executor = os.environ.get("SUBMITIT_EXECUTOR", "")
        # Read back here by a job of one task only: the tasks of a larger one would each read
        # results.json on their own and could decide apart (one returning while the others wait
        # in the rendezvous); train() reads it back for all of them after the rendezvous.
        done = self._finished() if _tasks(executor) == 1 else None
        if done is not None:
            return done
        if executor in ("slurm", "local"):
            # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for torch.distributed (and DeepSpeed).
            # The job inherits the submitting shell's environment: drop any of these left there
            # (say, by a torchrun session), they describe another process group.
            for name in DIST_ENV:
                os.environ.pop(name, None)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        requeue = _preemption_handler()
        results = self._train_with_retries(run_dir, executor in ("slurm", "local"))
        # Only SLURM's SIGUSR2 (time limit or preemption) asks for a requeue; SIGTERM is a cancel.
        if self._preempted(results) and requeue is not None:
            self._requeue(requeue, self._waited_on(results))
        return results

    def _train_with_retries(self, run_dir: Path, submitted: bool) -> Dict[str, Any]:
        """The run, on a rendezvous port free on this node (rendezvous.py; every task of a
        submitted job, one task or several); a failure of the rendezvous (RendezvousError: the
        port's choice, its publication, init_distributed) before training began is retried on
        other ports, and when the attempts are spent the task fails with one line (StartupError)."""
        env = submitit.JobEnvironment() if submitted else None
        metrics = Path(run_dir) / "metrics.jsonl"
        ports, attempt = [], 0
        joined_before = process_group_exists()  # an earlier run's in this process: never torn down here
        while True:
            before = metrics.stat().st_size if metrics.exists() else -1
            try:
                if env is not None:
                    port, attempt = job_port(env, attempt, self.cfg.distributed.timeout_s)
                    ports.append(port)
                    os.environ["MASTER_PORT"] = str(port)
                return self._train(run_dir)
            except Exception as exc:  # noqa: BLE001 - only the rendezvous's own failures (RendezvousError)
                started = (metrics.stat().st_size if metrics.exists() else -1) != before  # training began
                if not is_transient(exc) or started:
                    raise
                attempt += 1
                if attempt == ATTEMPTS:
                    raise gave_up(exc, ports) from exc
                print(f"spt: start-up failed ({type(exc).__name__}: {exc}); attempt {attempt + 1} of {ATTEMPTS}",
                      file=sys.stderr, flush=True)
                if not joined_before:
                    reset_process_group()

    @staticmethod
    def _waited_on(results: Any) -> Optional[str]:
        """The run folder whose lock the job waited for when a stop ended it before training
        (engine/claim.py not_claimed), else None."""
        return results.get("run_dir") if results.get("claimed") is False else None

    def _requeue(self, handler: Callable[[int, Any], None], waited_on: Optional[str] = None) -> None:
        """After the engine saved (or stopped while it waited for the lock of `waited_on`, before
        training): rank 0 requeues (or raises when out of requeues)."""
        rank = submitit.JobEnvironment().global_rank
        if rank == 0:
            print(f"run stopped while waiting for the lock of {waited_on}, nothing trained; requeueing" if waited_on
                  else f"run interrupted and checkpointed in {run_dir_for(self.cfg)}; requeueing", flush=True)
            handler(submitit.JobEnvironment._usr_sig(), None)  # exits, or raises UncompletedJobError
            return
        # Exit code 0 and no result file: the step is not killed early (KillOnBadExit) and the
        # job's result stays pending until the requeued run ends.
        sys.exit(0)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption/timeout: only resubmit; the engine saved already."""
        return submitit.helpers.DelayedSubmission(TrainTask(self.cfg, self.train_fn))


class PackTask(TrainTask):
    """A pack's members (config/pack.py) trained as one task by `train_pack` (engine/pack.py): the
    same environment, retries and requeue as a run; member 0's folder stands for the pack where
    one folder is needed (its metrics.jsonl tells whether training began)."""

    def __init__(self, cfgs: Sequence[Config], train_fn: str = PACK_FN) -> None:
        super().__init__(cfgs[0], train_fn)
        self.cfgs = list(cfgs)

    def _finished(self) -> Any:
        done = [finished_results(c, run_dir_for(c)) for c in self.cfgs]
        return None if any(d is None for d in done) else done

    def _train(self, run_dir: Path) -> Any:
        return _load(self.train_fn)(self.cfgs)

    @staticmethod
    def _preempted(results: Any) -> bool:
        return any(TrainTask._preempted(r) for r in results)

    @staticmethod
    def _waited_on(results: Any) -> Optional[str]:
        return next((w for w in map(TrainTask._waited_on, results) if w), None)  # the first not claimed

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(PackTask(self.cfgs, self.train_fn))
