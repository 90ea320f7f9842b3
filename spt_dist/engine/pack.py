"""`train_pack(cfgs)`: G runs that share backbone, data, batch and prompt shape (config/pack.py),
trained by one job, each batch going through the frozen backbone once as G x B rows
(pack_step.py).

Invariant: every member's run folder is the one the member would get alone (`run_dir_for`) and
holds what a lone run writes there (config.yaml, metrics.jsonl, train_keys.txt, checkpoints in
the lone format, results.json, prompt_pack.safetensors), and its trainable tensors are the lone
run's up to the summation order of the batched matrix products: each member keeps its own
PromptedViT around the shared backbone, its own DeepSpeed engine (optimizer, lr schedule, weight
decays, clipping), its own prompt dropout stream and its own TrainState. The members save
together at the same steps; a pack resumes as a whole from the newest step every member holds,
exactly (the lone resume guarantee, per member). A member folder can also be continued alone
with `spt train RUN_DIR`. Validation and test passes score every member in one pass of the split
through the backbone as well (evaluate.evaluate_many).

The run's phases (preflight, start events, the step log, end-of-epoch evaluation, the optimizer
check, finish) are train.py's, called per member. `wall_s` and `train_s` in a member's results
are the pack's (the job's time; `pack_size` says over how many runs it was shared).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from spt_dist.config import Config, ConfigError, to_yaml
from spt_dist.distributed import DistInfo, init_distributed, launched_world_size
from spt_dist.model.weights_check import log_weights_check
from spt_dist.rundir import finished_results, run_dir_for
from spt_dist.rundir.lock import LockWaitStopped
from spt_dist.rundir.loggers import start_trackers
from spt_dist.rundir.metrics import MetricsLog

from . import preflight
from .assemble import RunParts, build_member, build_shared
from .checkpoint import PREFIX, Checkpointer, TrainRng, held_shape, verify
from .claim import RunFinished, claim_run_dir, not_claimed, read_back_finished
from .evaluate import evaluate_many
from .pack_step import pack_logits, pack_train_step
from .shape import Shape, run_shape, shaped
from .signals import StopFlag, follow_parent
from .state import TrainState
from .step import Agreed, StepVote
from .train import end_of_epoch, finish_run, launched, log_start, log_step, optimizer_bytes, preflight_run, \
    verify_reads

if TYPE_CHECKING:
    from .watchdog import Watchdog


def train_pack(cfgs: Sequence[Config], max_steps: Optional[int] = None) -> List[Dict[str, Any]]:
    """Train every member (validated as a pack by config.pack.check_pack); their results, in order.

    Members already finished are read back and left out of the pack (by a one-rank job before
    it starts, and by rank 0 for every rank once it holds the member's lock); `max_steps` stops
    the pack like a preemption (every member checkpointed, status interrupted).
    """
    t0 = time.perf_counter()
    dirs = [run_dir_for(c) for c in cfgs]
    for i, d in enumerate(dirs):
        if d in dirs[:i]:
            raise ConfigError(f"pack members {dirs.index(d)} and {i} are the same run ({d}); give them different "
                              f"settings or leave run.name empty so that each gets its own folder")
    alone = launched_world_size() == 1  # ranks of a larger job decide together, under the locks
    done = [finished_results(c, d) if alone else None for c, d in zip(cfgs, dirs)]
    todo = [i for i, r in enumerate(done) if r is None]
    if todo:
        stop = StopFlag().install()
        try:
            trained = _train([cfgs[i] for i in todo], [dirs[i] for i in todo], len(cfgs), max_steps, stop, t0)
        except _StoppedAtMember as exc:  # the members claimed before it were let go; finished ones read back
            trained = [exc.finished.get(k) or _stopped_member(dirs[i], str(exc), i, todo[exc.member])
                       for k, i in enumerate(todo)]
        finally:
            stop.restore()
        for i, r in zip(todo, trained):
            done[i] = r
    return done


class _StoppedAtMember(LockWaitStopped):
    """A stop ended the wait on the lock of the `member`-th run folder of those being trained;
    `finished`: the members before it read back as finished (by the same indices)."""

    def __init__(self, signal: str, member: int, finished: Optional[Dict[int, Dict[str, Any]]] = None) -> None:
        super().__init__(signal)
        self.member = member
        self.finished = dict(finished or {})  # members before it found finished under their lock: their results


def _stopped_member(run_dir: Path, signal: str, member: int, at: int) -> Dict[str, Any]:
    """What a stop during the wait on pack member `at`'s lock did to member `member` (indices in
    the pack): nothing was trained."""
    if member < at:
        return not_claimed(run_dir, signal, claimed=True, note=(
            f"claimed, then let go: {signal} ended the wait for the lock of pack member {at}'s run folder; "
            f"nothing trained"))
    if member == at:
        return not_claimed(run_dir, signal, note=f"{signal} ended the wait for this run folder's lock; nothing trained")
    return not_claimed(run_dir, signal, note=(
        f"not claimed: {signal} ended the wait for the lock of pack member {at}'s run folder first; nothing trained"))


def _train(cfgs: List[Config], dirs: List[Path], pack_size: int, max_steps: Optional[int], stop: StopFlag,
           t0: float) -> List[Dict[str, Any]]:
    if launched():
        follow_parent()
    lead = cfgs[0]
    dist = init_distributed(lead.distributed.backend, lead.distributed.timeout_s)
    # members found finished: by rank 0 for every rank right after the rendezvous (before their
    # inputs are checked, which they no longer need), then once their lock is held
    done: Dict[int, Dict[str, Any]] = read_back_finished(cfgs, dirs, dist) if dist.world_size > 1 else {}
    for i, (cfg, d) in enumerate(zip(cfgs, dirs)):
        if i not in done:
            dist.comm.agreed(preflight_run, cfg, dist, d)
    dist.comm.agreed(_pack_memory, lead, len(cfgs))
    with contextlib.ExitStack() as claims:
        dogs: List["Watchdog"] = []
        for i, (c, d) in enumerate(zip(cfgs, dirs)):
            if i in done:
                continue
            try:
                dogs.append(claims.enter_context(claim_run_dir(c, d, dist, lambda: stop.signal_name)))
            except RunFinished as exc:
                done[i] = exc.results
            except LockWaitStopped as exc:
                raise _StoppedAtMember(str(exc), i, done) from exc
        todo = [i for i in range(len(cfgs)) if i not in done]
        if todo:
            trained = _train_claimed([cfgs[i] for i in todo], [dirs[i] for i in todo], dogs, claims, dist,
                                     pack_size, max_steps, stop, t0)
            done.update(zip(todo, trained))
        else:
            dist.comm.barrier()  # every member read back: the ranks leave together, as a run's end
        return [done[i] for i in range(len(cfgs))]


def _train_claimed(cfgs: List[Config], dirs: List[Path], dogs: List["Watchdog"], claims: contextlib.ExitStack,
                   dist: DistInfo, pack_size: int, max_steps: Optional[int], stop: StopFlag,
                   t0: float) -> List[Dict[str, Any]]:
    """The members whose folders are claimed (`dogs`: their watchdogs), trained as one pack;
    their metric logs join `claims`."""
    lead = cfgs[0]
    logs = [claims.enter_context(MetricsLog(d, dist.is_main, dist.comm.agreed(start_trackers, c, d, dist.is_main)))
            for c, d in zip(cfgs, dirs)]
    ckpts = [Checkpointer(d / "checkpoints", c.run.keep_checkpoints, c.run.checkpoint_every, dist, {}, to_yaml(c))
             for c, d in zip(cfgs, dirs)]
    resume = _common_resume(ckpts, dist)
    held = held_shape(lead, resume[0])
    shape = dist.comm.agreed(run_shape, lead, dist.world_size, held)
    shared = build_shared(shaped(lead, shape), dist, shape)
    members, rngs, states = [], [], []
    for cfg, ckpt, path in zip(cfgs, ckpts, resume):
        parts = build_member(cfg, shared, dist, resuming=path is not None, shape=shape)
        rng, state = TrainRng(), TrainState()  # the stream a lone run starts its loop with
        ckpt.identity, ckpt.shape = parts.identity, shape.as_dict()
        if path is not None:
            state = TrainState.from_state_dict(ckpt.load(parts.engine, path, rng)["state"])
            state.reshape(Shape.of(held), shape)
        state.note_world_size(dist.world_size)
        members.append(parts)
        rngs.append(rng)
        states.append(state)
    dist.comm.agreed(verify_reads, lead, members[0])
    for cfg, parts, state, path, ckpt, log in zip(cfgs, members, states, resume, ckpts, logs):
        log_start(log, parts, dist, state, path, ckpt)
        log_weights_check(cfg, log, state.step, parts.weights_read)
    walls = [s.wall_s for s in states]
    for dog in dogs:
        dog.phase = "train"
    shaped_cfgs = [shaped(c, shape) for c in cfgs]
    status, stopped = _loop(shaped_cfgs, members, dist, states, ckpts, rngs, stop, logs, max_steps, t0, dogs)
    for dog in dogs:
        dog.phase = "finish"
    return [finish_run(c, d, p, dist, s, ck, log, status, stopped, stop, t0, w, {"pack_size": pack_size})
            for c, d, p, s, ck, log, w in zip(cfgs, dirs, members, states, ckpts, logs, walls)]


def _pack_memory(cfg: Config, size: int) -> None:
    """One packed step holds the activations of size x data.batch_size samples."""
    preflight.check_step_memory(replace(cfg, data=replace(cfg.data, batch_size=cfg.data.batch_size * size)),
                                preflight.machine_memory())


def _common_resume(ckpts: List[Checkpointer], dist: DistInfo) -> List[Optional[Path]]:
    """The newest step every member holds a valid checkpoint of (members save one after another,
    so a pack stopped while saving may have some members one save ahead); None for all when
    there is no such step (the pack starts again; later saves overwrite what is there)."""
    newest = [c.newest_valid() for c in ckpts]
    if all(p is None for p in newest):
        return newest
    common = min(int(p.name[len(PREFIX):]) if p is not None else -1 for p in newest)
    paths = [c.root / f"{PREFIX}{common:08d}" for c in ckpts]
    ok = dist.comm.agreed(lambda: dist.is_main and common >= 0 and  # a read error: raised on every rank
                          all(p == n or verify(p) is None for p, n in zip(paths, newest)))
    if dist.comm.broadcast_object(ok):
        if dist.is_main:  # saves of some members past the common step: aside, or rotation counts them
            for c in ckpts:
                for ahead in sorted(c.root.glob(f"{PREFIX}*")):
                    if ahead.name[len(PREFIX):].isdigit() and int(ahead.name[len(PREFIX):]) > common:
                        aside = ahead.with_name(f".ahead_{ahead.name}")
                        shutil.rmtree(aside, ignore_errors=True)
                        os.replace(ahead, aside)
        dist.comm.barrier()
        return paths
    if dist.is_main:
        print("spt: the pack's members hold no common checkpoint step; the pack starts again from step 0",
              file=sys.stderr, flush=True)
    return [None] * len(ckpts)


def _pack_scores(members: List[RunParts], rngs: List[TrainRng], dist: DistInfo) -> Callable[[str], List[Dict]]:
    """split -> every member's evaluation of it, from ONE pass of the split through the backbone
    (computed when the first member asks; the members ask for the same splits)."""
    done: Dict[str, List[Dict]] = {}
    engines, lead = [m.engine for m in members], members[0]

    def score(split: str) -> List[Dict]:
        if split not in done:
            data = lead.val_data if split == "val" else lead.test_data
            for engine in engines:
                engine.eval()
            try:
                done[split] = evaluate_many(lambda x: pack_logits([e.module for e in engines], rngs, x), len(engines),
                                            data, lead.engine.device, lead.dtype, comm=dist.comm)
            finally:
                for engine in engines:
                    engine.train()
        return done[split]
    return score


def _loop(cfgs: List[Config], members: List[RunParts], dist: DistInfo, states: List[TrainState],
          ckpts: List[Checkpointer], rngs: List[TrainRng], stop: StopFlag, logs: List[MetricsLog],
          max_steps: Optional[int], t0: float, dogs: List["Watchdog"]) -> Tuple[str, Optional[str]]:
    """train.py's loop for G members over one data stream: the same steps, votes, checkpoints
    and evaluations, per member. Returns (status, stop reason)."""
    lead, pos = members[0], states[0]  # every member's position is the same
    engines, accum, data = [m.engine for m in members], cfgs[0].optim.grad_accum, lead.train_data
    smoothing = [c.optim.label_smoothing for c in cfgs]
    vote, bad_before, walls = StepVote(dist.comm, lead.engine.device), pos.bad_samples, [s.wall_s for s in states]
    bar = tqdm(total=cfgs[0].optim.epochs * data.batches_per_epoch // accum, initial=pos.step,
               desc=f"pack of {len(members)}", unit="step", dynamic_ncols=True,
               disable=not (dist.is_main and cfgs[0].run.progress and sys.stderr.isatty()))
    first, t_step = True, time.perf_counter()
    try:
        for engine in engines:
            engine.train()
        while pos.epoch < cfgs[0].optim.epochs:
            for images, labels, _ in data.epoch(pos.epoch, skip_batches=pos.batch):
                vote.add(pack_train_step(engines, images, labels, lead.dtype, rngs, smoothing))
                for s in states:
                    s.batch += 1
                if (pos.epoch * data.batches_per_epoch + pos.batch) % accum:
                    continue  # inside an accumulation window: no optimizer step yet
                agreed = vote.vote(stop.signal_name, max_steps is not None and pos.step + 1 >= max_steps,
                                   data.bad_samples)
                now = time.perf_counter()
                for s, wall in zip(states, walls):
                    s.step += 1
                    s.bad_samples, s.wall_s = bad_before + agreed.bad_samples, wall + now - t0
                    s.train_s, s.steps_timed = s.train_s + now - t_step, s.steps_timed + 1
                t_step = now
                for dog in dogs:
                    dog.step = pos.step
                if first:  # a wrong optimizer state fails at the first step, not at the end
                    for cfg, parts in zip(cfgs, members):
                        optimizer_bytes(cfg, parts, dist)
                    first, t_step = False, time.perf_counter()
                for g, (cfg, parts, s, log) in enumerate(zip(cfgs, members, states, logs)):
                    own = Agreed(agreed.losses[g], agreed.stop, agreed.bad_samples, [agreed.losses[g]])
                    log_step(cfg, parts, s, own, log, bar if g == 0 else None)
                if agreed.stop:
                    for engine, s, rng, ckpt, log in zip(engines, states, rngs, ckpts, logs):
                        ckpt.maybe_save(engine, s, rng, last=True)
                        log.log("interrupted", s.step, signal=agreed.stop)
                    return "interrupted", agreed.stop
                if any([ck.maybe_save(e, s, r) for ck, e, s, r in zip(ckpts, engines, states, rngs)]):
                    t_step = time.perf_counter()  # checkpoint time is not training throughput
            if states[0].epoch + 1 == cfgs[0].optim.epochs:  # kept before the final evaluation (train._loop)
                for engine, s, rng, ckpt in zip(engines, states, rngs, ckpts):
                    ckpt.maybe_save(engine, s, rng, last=True)
            scores = _pack_scores(members, rngs, dist)
            for g, (cfg, parts, s, log) in enumerate(zip(cfgs, members, states, logs)):
                end_of_epoch(cfg, parts, dist, s, log, score=lambda split, g=g: scores(split)[g])
            t_step = time.perf_counter()
        for s, wall in zip(states, walls):
            s.wall_s = wall + time.perf_counter() - t0
        # The last step's checkpoint, written before the final evaluation, stays each member's last:
        # re-saved after it one member after another, a kill in between would leave the members at
        # two positions of one step, which the common resume lines up by step and cannot tell apart
        # (a member finished unevaluated). A member whose results.json is lost evaluates again.
        return "finished", None
    finally:
        bar.close()
