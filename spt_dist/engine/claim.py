"""A job claims its run folder before it trains, and lets go when it stops.

Rank 0 takes the folder's lock (spt_dist.rundir.lock), then checks that the folder holds this
run or none (config_clash), and whether that run is finished (then RunFinished on every rank,
with results.json as rank 0 read it: the job this one waited for may have finished it), and
writes config.yaml with the latest launch settings. Rank 0
decides and tells everyone, so all ranks raise together instead of waiting. While rank 0 waits
on a lock that may be a dead job's (up to run.lock_stale_s), the ranks exchange its state and
every rank's stop flag once a poll (a second at most, and at most a third of
distributed.timeout_s, so no collective times out). A stop signal during that wait (`stop`: its
name once one arrived, on any rank) ends it on every rank with LockWaitStopped, the folder not
claimed and nothing written to it; `not_claimed` is what train() returns then. Once the
folder is claimed every rank starts its watchdog (heartbeats, lock refresh on rank 0) until
the claim ends.
"""
from __future__ import annotations

import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

from spt_dist.config import Config, ConfigError, to_yaml
from spt_dist.distributed import DistInfo, told_failure
from spt_dist.io import DiskFullError, write_text_atomic
from spt_dist.rundir import RunFolderBusy, RunLock, config_clash, config_hash, finished_results
from spt_dist.rundir.files import checkpoint_config_hash
from spt_dist.rundir.lock import LockPending, LockWaitStopped

from .watchdog import Watchdog


# What rank 0 tells every rank: (kind, text); kinds (FINISHED: the text is the run's results):
CLAIMED, WAITING, BUSY, CLASH, STOPPED, FINISHED = "claimed", "waiting", "busy", "clash", "stopped", "finished"
FAILED = "failed"  # rank 0's claim raised (the text: its type's name and message)


class RunFinished(Exception):
    """The folder holds this run, finished (found once rank 0 held its lock: another job may
    have finished it while this one waited); `results`: its results.json, the same on every rank."""

    def __init__(self, results: Dict[str, Any]) -> None:
        super().__init__(f"finished: {results.get('run_dir', '')}")
        self.results = results


def read_back_finished(cfgs: Sequence[Config], dirs: Sequence[Path], dist: DistInfo) -> Dict[int, Dict[str, Any]]:
    """Which of these runs their folders hold finished (index -> results.json), as rank 0 reads
    them, on every rank: the ranks of one job never decide apart (a collective)."""
    found = dist.comm.broadcast_object(dist.comm.agreed(
        lambda: [finished_results(c, d) for c, d in zip(cfgs, dirs)] if dist.is_main else None, kind=ConfigError))
    return {i: r for i, r in enumerate(found) if r is not None}


def _say(line: str) -> None:
    print(f"spt: {line}", file=sys.stderr, flush=True)


def _claim_on_main(cfg: Config, run_dir: Path, lock: RunLock, within_s: Optional[float],
                   stop: Callable[[], str]) -> Tuple[str, Any]:
    """Rank 0: (CLAIMED, "") when the folder is ours now, (WAITING, "") while a lock held
    elsewhere is watched, (STOPPED, the signal) when a stop ended the wait, (FINISHED, its
    results) when the run is finished, else (BUSY or CLASH, why not)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        taken_over = lock.acquire(on_wait=_say, within_s=within_s, stop=stop)
    except LockPending:
        return WAITING, ""
    except LockWaitStopped as exc:
        _say_stopped(run_dir, str(exc))
        return STOPPED, str(exc)
    except RunFolderBusy as exc:
        return BUSY, str(exc)
    if taken_over:
        _say(f"took over the lock of {run_dir}: {taken_over}")
    return _check_and_write(cfg, run_dir, lock)


def _check_and_write(cfg: Config, run_dir: Path, lock: RunLock) -> Tuple[str, Any]:
    """Rank 0, holding the lock: (CLASH, why) when the folder holds another run, (FINISHED, its
    results) when it holds this run finished (the lock let go in both cases), else config.yaml
    written and (CLAIMED, "")."""
    try:
        done = finished_results(cfg, run_dir)  # a finished run of another config is a ConfigError
        clash = None if done else config_clash(cfg, run_dir) or _checkpoint_clash(cfg, run_dir)
    except ConfigError as exc:
        done, clash = None, str(exc)
    if done is not None or clash is not None:
        lock.release()
        return (FINISHED, done) if done is not None else (CLASH, clash)
    write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
    return CLAIMED, ""


def _say_stopped(run_dir: Path, signal: str) -> None:
    _say(f"{signal} arrived while this job waited for the lock of {run_dir}: stopped before training, the lock "
         f"left to its owner")


def not_claimed(run_dir: Path, signal: str, claimed: bool = False, note: str = "") -> Dict[str, Any]:
    """The results of a run whose job was stopped by `signal` while it waited for a run folder's
    lock (status interrupted, like any stop before the end; nothing was trained). A pack member
    says which: `claimed` true for one whose folder was claimed (config.yaml written) and let go
    when the stop ended the wait on a later member's lock, and `note` what happened to it."""
    out = {"status": "interrupted", "signal": signal, "claimed": claimed, "run_dir": str(run_dir)}
    return {**out, "note": note} if note else out


def _checkpoint_clash(cfg: Config, run_dir: Path) -> Optional[str]:
    """Checkpoints of another config in a folder whose config.yaml is gone (config.yaml is
    only written once the folder is known to hold this run)."""
    if (run_dir / "config.yaml").is_file():
        return None
    held = checkpoint_config_hash(run_dir)
    if held is None or held == config_hash(cfg):
        return None
    return (f"{run_dir} has no config.yaml but its checkpoints were written by another config (config_hash "
            f"{held}, this one is {config_hash(cfg)}); resume it with that config or choose another run.name")


@contextmanager
def claim_run_dir(cfg: Config, run_dir: Path, dist: DistInfo,
                  stop: Callable[[], str] = lambda: "") -> Iterator[Watchdog]:
    lock = RunLock(run_dir, stale_s=cfg.run.lock_stale_s)
    dog: Optional[Watchdog] = None
    try:  # from the first attempt on: whatever fails once rank 0 holds the lock lets it go
        _await_claim(cfg, run_dir, dist, lock, stop)
        token = dist.comm.broadcast_object(uuid.uuid4().hex if dist.is_main else None)
        dog = Watchdog(run_dir, dist.rank, dist.world_size, token, cfg.distributed.timeout_s,
                       lock=lock if dist.is_main else None).start()
        yield dog
    finally:
        if dog is not None:
            dog.stop()
        if dist.is_main:
            lock.release()


def _await_claim(cfg: Config, run_dir: Path, dist: DistInfo, lock: RunLock, stop: Callable[[], str]) -> None:
    """Returns once rank 0 holds the lock and config.yaml is written; raises the same error on
    every rank otherwise (RunFinished with rank 0's reading of results.json for a finished run)."""
    within_s = min(1.0, cfg.distributed.timeout_s / 3) if dist.world_size > 1 else None  # a poll
    kind, why, failure = WAITING, "", None
    while kind == WAITING:
        if dist.world_size == 1:
            kind, why = _claim_on_main(cfg, run_dir, lock, within_s, stop)
            break
        told = None
        if dist.is_main:
            try:
                told = _claim_on_main(cfg, run_dir, lock, within_s, stop)
            except Exception as exc:  # config.yaml not written (a full disk...): told to every rank below
                failure, told = exc, (FAILED, (type(exc).__name__, str(exc)))
        every = dist.comm.all_gather_object((told, stop()))  # rank 0's state, every rank's stop flag
        kind, why = every[0][0]
        asked = next((flag for _, flag in every if flag), "")
        if kind == WAITING and asked:  # a stop on another rank than 0
            if dist.is_main:
                _say_stopped(run_dir, asked)
            kind, why = STOPPED, asked
    if kind == FAILED:  # rank 0 raises its own error, the others its kind (DiskFullError: exit 2) or SptError
        if failure is not None:
            raise failure
        raise told_failure(why, (DiskFullError,))
    if kind == STOPPED:
        raise LockWaitStopped(why)
    if kind == FINISHED:
        dist.comm.barrier()  # as a run's end (train.finish_run): the ranks leave together
        raise RunFinished(why)
    if kind != CLAIMED:
        raise (RunFolderBusy if kind == BUSY else ConfigError)(why)
