"""`train(cfg, run_dir)`: the training job of one run, on any number of ranks.

Fixed epochs; the lr schedule steps per optimizer step (or epoch); validation every
run.eval_every epochs (selection only on it); the test split is evaluated at the last epoch,
which is the reported `top1` (VPT's protocol), unless data.test_split is null (a tuning
stage). Checkpoints every run.checkpoint_every steps, on a stop signal and after the last
step; a run folder with checkpoints resumes from the newest valid one, exactly. A linear probe
whose training transform draws nothing trains its head on features computed once
(features.py): the same batches, the same numbers within float summation order.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

import torch
from tqdm import tqdm

from spt_dist.config import Config, to_yaml
from spt_dist.distributed import DistInfo, init_distributed, launched_world_size
from spt_dist.io import DiskFullError, write_json_atomic
from spt_dist.model.weights_check import log_weights_check
from spt_dist.rundir import finished_results, run_dir_for
from spt_dist.rundir.lock import LockWaitStopped
from spt_dist.rundir.loggers import start_trackers
from spt_dist.rundir.metrics import MetricsLog

from . import preflight
from .assemble import RunParts, build_parts, full_prompts, full_trainable_state
from .checkpoint import Checkpointer, CheckpointMismatchError, TrainRng, folder_bytes, held_shape
from .claim import RunFinished, claim_run_dir, not_claimed, read_back_finished
from .ds_engine import check_frozen_untouched, check_optimizer_state, dtype_name, optimizer_state_bytes
from .evaluate import evaluate
from .export import export_prompt_pack, pack_metadata
from .features import POOLED, build_feature_cache
from .signals import StopFlag, follow_parent
from .shape import Shape, run_shape, shaped
from .state import TrainState
from .step import Agreed, StepVote, train_step

if TYPE_CHECKING:
    from .watchdog import Watchdog


def train(cfg: Config, run_dir: Optional[str] = None, max_steps: Optional[int] = None) -> Dict[str, Any]:
    """Train one run; returns its results (`status`: finished | interrupted).

    `max_steps` stops after that many optimizer steps exactly like a preemption would
    (checkpoint, status interrupted); a later call resumes.

    SIGTERM / SIGUSR2 / SIGINT only raise a flag from the moment this is called until
    results.json is written (the previous handlers are back when it returns): a signal while
    the job waits for another job's lock on the run folder ends the wait (status interrupted,
    `claimed` false, nothing written to the folder), one during the rest of setup stops the run
    at its first step boundary, one after the last step is noted and the run finishes.

    A finished run is read back, not trained again: by a one-rank job before it starts, by
    rank 0 for every rank right after the rendezvous (a job of several ranks, whose ranks must
    not decide apart; before any check of the run's inputs, which a finished run no longer
    needs), and again once it holds the folder's lock (a job that waited while another
    finished the run).
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir) if run_dir else run_dir_for(cfg)
    done = finished_results(cfg, run_dir) if launched_world_size() == 1 else None
    if done is not None:
        return done
    stop = StopFlag().install()
    try:
        return _train(cfg, run_dir, max_steps, stop, t0)
    except LockWaitStopped as exc:
        return not_claimed(run_dir, str(exc))
    except RunFinished as exc:
        return exc.results
    finally:
        stop.restore()


def launched() -> bool:
    """Started by a launcher (torchrun, srun, submitit) rather than by a person's shell."""
    env = os.environ
    return any(k in env for k in ("TORCHELASTIC_RUN_ID", "SLURM_STEP_ID", "SUBMITIT_EXECUTOR")) \
        or int(env.get("WORLD_SIZE", "1")) > 1


def _train(cfg: Config, run_dir: Path, max_steps: Optional[int], stop: StopFlag, t0: float) -> Dict[str, Any]:
    if launched():
        follow_parent()
    dist = init_distributed(cfg.distributed.backend, cfg.distributed.timeout_s)
    if dist.world_size > 1:  # rank 0 reads a finished run back for every rank, before any check of its inputs
        done = read_back_finished([cfg], [run_dir], dist)
        if done:
            dist.comm.barrier()  # as a run's end: the ranks leave together
            raise RunFinished(done[0])
    dist.comm.agreed(preflight_run, cfg, dist, run_dir)
    with claim_run_dir(cfg, run_dir, dist, lambda: stop.signal_name) as watchdog, \
            MetricsLog(run_dir, dist.is_main, dist.comm.agreed(start_trackers, cfg, run_dir, dist.is_main)) as log:
        ckpt = Checkpointer(run_dir / "checkpoints", cfg.run.keep_checkpoints, cfg.run.checkpoint_every, dist,
                            {}, to_yaml(cfg))
        resume_from = ckpt.newest_valid()
        held = held_shape(cfg, resume_from)
        shape = dist.comm.agreed(run_shape, cfg, dist.world_size, held)
        parts = build_parts(cfg, dist, resuming=resume_from is not None, shape=shape)
        dist.comm.agreed(verify_reads, cfg, parts)
        parts.features, no_features = build_feature_cache(cfg, parts, dist)
        ckpt.identity = parts.identity
        ckpt.shape = {**shape.as_dict(), "full_optimizer": cfg.launch.elastic and parts.zero_stage > 0}
        rng, state = TrainRng(), TrainState()
        if resume_from is not None:
            state = TrainState.from_state_dict(ckpt.load(parts.engine, resume_from, rng)["state"])
            state.reshape(Shape.of(held), shape)
        state.note_world_size(dist.world_size)
        log_start(log, parts, dist, state, resume_from, ckpt)
        if cfg.method.name == "linear":
            log.log("feature_cache", state.step, used=parts.features is not None, reason=no_features or None,
                    **(parts.features.report if parts.features else {}))
        log_weights_check(cfg, log, state.step, parts.weights_read)
        watchdog.phase, wall_before = "train", state.wall_s
        status, stopped = _loop(shaped(cfg, shape), parts, dist, state, ckpt, rng, stop, log, max_steps, t0, watchdog)
        watchdog.phase = "finish"
        return finish_run(cfg, run_dir, parts, dist, state, ckpt, log, status, stopped, stop, t0, wall_before)


def preflight_run(cfg: Config, dist: DistInfo, run_dir: Path) -> None:
    """Checked with the shape the run will train with (another micro-batch and accumulation
    when an elastic run continues on another world size)."""
    try:
        shape = run_shape(cfg, dist.world_size, held_shape(cfg, Checkpointer.newest_unverified(run_dir / "checkpoints")))
    except CheckpointMismatchError:
        shape = None  # said again, after the run folder is claimed, with the checkpoint verified
    checked = shaped(cfg, shape) if shape else cfg
    preflight.check_run(checked, dist.world_size, preflight.machine_memory(), preflight.training_samples(cfg))


def _loop(cfg: Config, parts: RunParts, dist: DistInfo, state: TrainState, ckpt: Checkpointer, rng: TrainRng,
          stop: StopFlag, log: MetricsLog, max_steps: Optional[int], t0: float, watchdog: "Watchdog") -> Tuple[str, Optional[str]]:
    """Epochs of steps until the last epoch or an agreed stop; returns (status, stop reason)."""
    engine, accum = parts.engine, cfg.optim.grad_accum
    data, forward = (parts.features.train, POOLED) if parts.features else (parts.train_data, {})
    vote, bad_before, wall_before = StepVote(dist.comm, engine.device), state.bad_samples, state.wall_s
    bar = tqdm(total=cfg.optim.epochs * data.batches_per_epoch // accum, initial=state.step, desc=log.run_dir.name,
               unit="step", disable=not (dist.is_main and cfg.run.progress and sys.stderr.isatty()), dynamic_ncols=True)
    first, t_step = True, time.perf_counter()
    try:
        engine.train()
        while state.epoch < cfg.optim.epochs:
            for images, labels, _ in data.epoch(state.epoch, skip_batches=state.batch):
                vote.add(train_step(engine, images, labels, parts.dtype, rng, cfg.optim.label_smoothing, **forward))
                state.batch += 1
                if (state.epoch * data.batches_per_epoch + state.batch) % accum:
                    continue  # inside an accumulation window: no optimizer step yet
                state.step += 1
                agreed = vote.vote(stop.signal_name, max_steps is not None and state.step >= max_steps,
                                   data.bad_samples)
                now = time.perf_counter()
                state.bad_samples, state.wall_s = bad_before + agreed.bad_samples, wall_before + now - t0
                state.train_s, state.steps_timed, t_step = state.train_s + now - t_step, state.steps_timed + 1, now
                watchdog.step = state.step
                if first:  # a wrong optimizer state fails at the first step, not at the end
                    optimizer_bytes(cfg, parts, dist)
                    first, t_step = False, time.perf_counter()
                log_step(cfg, parts, state, agreed, log, bar)
                if agreed.stop:
                    ckpt.maybe_save(engine, state, rng, last=True)
                    log.log("interrupted", state.step, signal=agreed.stop)
                    return "interrupted", agreed.stop
                if ckpt.maybe_save(engine, state, rng):
                    t_step = time.perf_counter()  # checkpoint time is not training throughput
            if state.epoch + 1 == cfg.optim.epochs:
                # The last step is kept before the final evaluation: a stop is voted on only at step
                # boundaries, so a signal during a long evaluation waits for its end, and the
                # scheduler's kill after its grace period (SLURM's KillWait) would lose every step since
                # the last periodic checkpoint. A run re-entered from this one only evaluates.
                ckpt.maybe_save(engine, state, rng, last=True)
            end_of_epoch(cfg, parts, dist, state, log)
            t_step = time.perf_counter()
        state.wall_s = wall_before + time.perf_counter() - t0
        ckpt.maybe_save(engine, state, rng, last=True)  # the run folder always holds its final state
        return "finished", None
    finally:
        bar.close()


def log_step(cfg: Config, parts: RunParts, state: TrainState, agreed: Agreed, log: MetricsLog,
              bar: Optional[tqdm]) -> None:
    """The train event every run.log_every steps (and at a stop); `bar`: the progress bar, if this run has it."""
    if bar is not None:
        bar.update(1)
    if state.step % cfg.run.log_every and not agreed.stop:
        return
    lr = parts.engine.get_lr()[0]
    log.log("train", state.step, epoch=state.epoch, loss=agreed.loss, lr=lr,
            samples_per_s=state.samples_per_s(parts.global_batch), bad_samples=state.bad_samples)
    if bar is not None:
        bar.set_postfix(loss=f"{agreed.loss:.4f}", lr=f"{lr:.2e}")


def end_of_epoch(cfg: Config, parts: RunParts, dist: DistInfo, state: TrainState, log: MetricsLog,
                  score: Optional[Callable[[str], Dict[str, Any]]] = None) -> None:
    """Validation (every run.eval_every epochs and the last), test (the last), alignment.
    `score(split)`: that split's evaluation of this run when it is computed elsewhere (a pack
    scores its members in one pass, engine/pack.py)."""
    epoch, last = state.epoch, state.epoch + 1 == cfg.optim.epochs
    lockstep = parts.zero_stage == 3
    if parts.val_data is not None and ((epoch + 1) % cfg.run.eval_every == 0 or last):
        cached = parts.features.val if parts.features else None
        val = score("val") if score else \
            evaluate(parts.engine, parts.val_data if cached is None else cached, parts.engine.device, parts.dtype,
                     lockstep, dist.comm, **({} if cached is None else POOLED))
        state.record_val(val["top1"], val["bad_samples"], epoch + 1)
        log.log("val", state.step, epoch=epoch + 1, **val)
    if last and parts.test_data is not None:
        test = score("test") if score else \
            evaluate(parts.engine, parts.test_data, parts.engine.device, parts.dtype, lockstep, dist.comm)
        state.test_top1, state.test_bad_samples = test["top1"], test["bad_samples"]
        log.log("test", state.step, epoch=epoch + 1, **test)
    _log_alignment(parts, state.step, log, epoch + 1)
    state.epoch, state.batch = epoch + 1, 0


def verify_reads(cfg: Config, parts: RunParts) -> None:
    """data.verify before the first step (error mode only: skip mode handles bad samples)."""
    from spt_dist.data.verify import verify_before_training

    if cfg.data.on_bad_sample == "error":
        verify_before_training(cfg.data.verify, parts.train_data, [parts.val_data, parts.test_data], cfg.run.seed)


def log_start(log: MetricsLog, parts: RunParts, dist: DistInfo, state: TrainState, resume_from: Optional[Path],
               ckpt: Checkpointer) -> None:
    # the records a killed segment wrote past the checkpoint (or, without one, past the start) go
    log.resume_at(state.step, state.epoch, fresh=resume_from is None)
    log.log("start", state.step, resumed_from=str(resume_from) if resume_from else None,
            world_size=dist.world_size, **parts.counts, **parts.train_data.mixing.as_dict())
    if ckpt.lost:
        log.log("checkpoints_lost", state.step, corrupt=ckpt.lost, resumed_from=str(resume_from) if resume_from
                else None)
    pi = parts.prompt_init
    if pi is not None:
        log.log("prompt_init", state.step, strategy=pi.strategy, seconds=pi.seconds, images=pi.images,
                cache_hit=pi.cache_hit)
    if resume_from is None:
        _log_alignment(parts, 0, log, 0)
    if dist.is_main:
        from spt_dist.data import write_selected_keys

        write_selected_keys(log.run_dir, parts.train_data.selected_keys)


def _log_alignment(parts: RunParts, step: int, log: MetricsLog, epoch: int) -> None:
    """Prompt-to-prototype alignment (SPT's analysis) after `epoch` epochs; every rank joins the gather."""
    init = parts.prompt_init
    if init is None or init.reference is None:
        return
    from spt_dist.prompt_init import alignment_metrics

    log.log("alignment", step, epoch=epoch, **alignment_metrics(full_prompts(parts.model), init.reference))


def optimizer_bytes(cfg: Config, parts: RunParts, dist: DistInfo) -> Dict[str, int]:
    """Optimizer bytes over all ranks (collective), checked against the trainable count."""
    engine = parts.engine
    per_rank = torch.tensor(list(optimizer_state_bytes(engine).values()), dtype=torch.float64)
    measured = {k: int(v) for k, v in zip(("moments", "master"), dist.comm.all_reduce(per_rank).tolist())}
    check_optimizer_state(cfg.optim, parts.zero_stage, parts.dtype, measured, parts.counts["trainable"],
                          dist.world_size, len(engine.optimizer.param_groups))
    return measured


def _resource_report(cfg: Config, parts: RunParts, dist: DistInfo, ckpt: Checkpointer,
                     stepped: bool) -> Dict[str, Any]:
    """Optimizer bytes (AdamW / momentum state exists from the first step on) and checkpoint bytes."""
    check_frozen_untouched(parts.model)
    measured = optimizer_bytes(cfg, parts, dist) if stepped else {"moments": 0, "master": 0}
    newest = ckpt.newest_valid()
    return {"optimizer_state_bytes": measured["moments"] + measured["master"],
            "optimizer_moment_bytes": measured["moments"], "optimizer_master_bytes": measured["master"],
            "checkpoint_bytes": folder_bytes(newest) if newest else 0}


def _results(cfg: Config, parts: RunParts, dist: DistInfo, state: TrainState, status: str,
             extra: Dict[str, Any]) -> Dict[str, Any]:
    """zero_stage and dtype are the engine's."""
    return {
        "status": status, "config_hash": parts.identity["config_hash"], "method": cfg.method.name, "backbone": cfg.model.name,
        "prompt_length": cfg.method.prompt_length, "deep": cfg.method.deep,
        "data_fraction": cfg.data.fraction, "train_samples": parts.train_data.num_samples,
        "trainable_params": parts.counts["trainable"], "backbone_params": parts.counts["backbone"],
        "world_size": dist.world_size, "world_sizes": state.world_sizes, "zero_stage": parts.zero_stage,
        "dtype": dtype_name(parts.dtype), "device": dist.device.type, "global_batch": parts.global_batch,
        "lr": parts.peak_lr, "base_lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay,
        "prompt_weight_decay": cfg.optim.prompt_weight_decay,
        "step": state.step, "epoch": state.epoch, "seed": cfg.run.seed,
        "top1": state.test_top1, "val_top1": state.val_top1,
        "best_val_epoch": state.best_val_epoch, "best_val_top1": state.best_val_top1,
        "bad_samples": state.bad_samples, "val_bad_samples": state.val_bad_samples,
        "test_bad_samples": state.test_bad_samples,
        **parts.train_data.mixing.as_dict(), **extra,
    }


def finish_run(cfg: Config, run_dir: Path, parts: RunParts, dist: DistInfo, state: TrainState, ckpt: Checkpointer,
            log: MetricsLog, status: str, stopped: Optional[str], stop: StopFlag, t0: float,
            wall_before: float, more: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Resource report, prompt pack (finished runs), results.json, the end event; `more`: extra
    results (a pack member's pack size)."""
    extra = _resource_report(cfg, parts, dist, ckpt, stepped=state.step > 0)
    extra.update(more or {})
    extra.update(train_s=round(state.train_s, 3), signal=stopped, samples_per_s=state.samples_per_s(parts.global_batch))
    trainable = full_trainable_state(parts.model) if status == "finished" else None  # collective under ZeRO
    results = _results(cfg, parts, dist, state, status, extra)
    results["wall_s"] = round(wall_before + time.perf_counter() - t0, 3)
    # rank 0 writes; a failure there (a full disk) is raised on every rank, none left waiting
    dist.comm.on_main(_publish_results, cfg, run_dir, parts, results, trainable, log, status, stop,
                      same=(DiskFullError,))
    return results


def _publish_results(cfg: Config, run_dir: Path, parts: RunParts, results: Dict[str, Any],
                     trainable: Optional[Dict[str, Any]], log: MetricsLog, status: str, stop: StopFlag) -> None:
    """Rank 0: the prompt pack (a finished run), the end event, results.json, the closing lines."""
    if trainable is not None:
        meta = pack_metadata(cfg, parts.identity["weights_hash"], parts.model.pool, parts.index.classes,
                             parts.inputs, parts.dtype)
        export_prompt_pack(run_dir / "prompt_pack.safetensors", trainable, meta)
    # end first: a kill between the two leaves an end without results.json (the run is re-entered
    # and finishes, metrics.jsonl cut back), never a finished results.json without its end
    log.log("end", results["step"], **{k: v for k, v in results.items() if k != "step"})
    write_json_atomic(run_dir / "results.json", results)
    log.close(status)

    def pct(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.2f}"

    print(f"spt: run {run_dir} {status}: top1={pct(results['top1'])} val_top1={pct(results['val_top1'])} "
          f"step={results['step']}" + ("" if status == "finished" else f"; continue it with `spt train {run_dir}`"),
          file=sys.stderr, flush=True)
    if stop.requested and status == "finished":
        print(f"spt: {stop.signal_name} arrived after the last step; the run finished anyway",
              file=sys.stderr, flush=True)
