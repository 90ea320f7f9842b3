"""`train(cfg, run_dir)`: the training job of one run, on any number of ranks.

Fixed epochs; the lr schedule steps per optimizer step; validation every run.eval_every
epochs (selection only on it); the test split is evaluated at the last epoch, which is the
reported `top1` (VPT's protocol), unless data.test_split is null (a tuning stage). Checkpoints every run.checkpoint_every steps and after the
last step; a run folder with checkpoints resumes from the newest valid one, exactly.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch.nn import functional as F
from tqdm import tqdm

from spt_dist.config import Config, ConfigError, to_yaml

from .build import Parts, build_parts, full_prompts, full_trainable_state
from .checkpoint import Checkpointer, TrainRng, folder_bytes
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_int, init_distributed
from .ds_engine import check_frozen_untouched, check_optimizer_state, dtype_name, optimizer_state_bytes
from .evaluate import evaluate
from .export import export_prompt_pack
from .runlog import MetricsLog, config_clash, read_results, run_dir_for, write_json_atomic, write_text_atomic
from .stop import StopFlag


def _prepare_run_dir(cfg: Config, run_dir: Path, dist: DistInfo) -> None:
    """Rank 0 writes config.yaml (the latest launch settings); an existing run folder must hold
    the same run (runlog.config_clash). Rank 0 decides and tells everyone, so all ranks raise
    together instead of waiting."""
    clash = None
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        clash = config_clash(cfg, run_dir)
        if clash is None:
            write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
    if broadcast_int(int(clash is not None)):
        raise ConfigError(clash or f"{run_dir} already holds a run with a different config")


STOP_REASONS = ("SIGTERM", "SIGUSR2", "max_steps")


def _results(cfg: Config, parts: Parts, dist: DistInfo, state: Dict[str, Any], status: str,
             extra: Dict[str, Any]) -> Dict[str, Any]:
    """zero_stage and dtype are the engine's (distributed.deepspeed_json may change them)."""
    return {
        "status": status, "method": cfg.method.name, "backbone": cfg.model.name,
        "prompt_length": cfg.method.prompt_length, "deep": cfg.method.deep,
        "data_fraction": cfg.data.fraction, "train_samples": parts.train_data.num_samples,
        "trainable_params": parts.counts["trainable"], "backbone_params": parts.counts["backbone"],
        "world_size": dist.world_size, "zero_stage": parts.zero_stage,
        "dtype": dtype_name(parts.dtype), "global_batch": parts.global_batch, "lr": parts.peak_lr,
        "step": state["step"], "epoch": state["epoch"], "seed": cfg.run.seed,
        "top1": state.get("test_top1"), "val_top1": state.get("val_top1"),
        "best_val_epoch": state.get("best_val_epoch"), "best_val_top1": state.get("best_val_top1"),
        "bad_samples": state["bad_samples"], "val_bad_samples": state.get("val_bad_samples", 0),
        "test_bad_samples": state.get("test_bad_samples", 0),
        "mixing_ratio": round(parts.train_data.mixing.ratio, 4), **extra,
    }


def _optimizer_bytes(cfg: Config, parts: Parts, dist: DistInfo) -> Dict[str, int]:
    """Optimizer bytes over all ranks (collective), checked against the trainable count."""
    engine = parts.engine
    per_rank = torch.tensor(list(optimizer_state_bytes(engine).values()), dtype=torch.float64)
    measured = {k: int(v) for k, v in zip(("moments", "master"), all_reduce_sum(per_rank).tolist())}
    check_optimizer_state(cfg.optim, parts.zero_stage, parts.dtype, measured, parts.counts["trainable"],
                          dist.world_size, len(engine.optimizer.param_groups))
    return measured


def _resource_report(cfg: Config, parts: Parts, dist: DistInfo, ckpt: Checkpointer,
                     stepped: bool) -> Dict[str, Any]:
    """Optimizer bytes (AdamW / momentum state exists from the first step on) and checkpoint bytes."""
    check_frozen_untouched(parts.model)
    measured = _optimizer_bytes(cfg, parts, dist) if stepped else {"moments": 0, "master": 0}
    newest = ckpt.newest_valid()
    return {"optimizer_state_bytes": measured["moments"] + measured["master"],
            "optimizer_moment_bytes": measured["moments"], "optimizer_master_bytes": measured["master"],
            "checkpoint_bytes": folder_bytes(newest) if newest else 0}


def _log_alignment(parts: Parts, step: int, log: MetricsLog) -> None:
    """Prompt-to-prototype alignment (SPT's analysis); every rank joins the gather."""
    init = parts.prompt_init
    if init is None or getattr(init, "reference", None) is None:
        return
    from spt_dist.prompt_init import alignment_metrics

    prompts = full_prompts(parts)
    log.log("alignment", step, **alignment_metrics(prompts, init.reference))


def _run_evals(parts: Parts, state: Dict[str, Any], epoch: int, last: bool, log: MetricsLog,
               eval_every: int) -> None:
    lockstep = parts.zero_stage == 3
    if parts.val_data is not None and ((epoch + 1) % eval_every == 0 or last):
        val = evaluate(parts.engine, parts.val_data, parts.engine.device, parts.dtype, lockstep)
        state["val_top1"], state["val_bad_samples"] = val["top1"], val["bad_samples"]
        if state.get("best_val_top1") is None or val["top1"] > state["best_val_top1"]:
            state["best_val_top1"], state["best_val_epoch"] = val["top1"], epoch + 1
        log.log("val", state["step"], epoch=epoch + 1, **val)
    if last and parts.test_data is not None:
        test = evaluate(parts.engine, parts.test_data, parts.engine.device, parts.dtype, lockstep)
        state["test_top1"], state["test_bad_samples"] = test["top1"], test["bad_samples"]
        log.log("test", state["step"], epoch=epoch + 1, **test)


def _samples_per_s(state: Dict[str, Any], global_batch: int) -> Optional[float]:
    """Training throughput over every invocation of the run (totals kept in `state`)."""
    return round(state["steps_timed"] * global_batch / state["train_s"], 3) if state["train_s"] else None


def train(cfg: Config, run_dir: Optional[str] = None, max_steps: Optional[int] = None) -> Dict[str, Any]:
    """Train one run; returns its results (`status`: finished | interrupted).

    `max_steps` stops after that many optimizer steps exactly like a preemption would
    (checkpoint, status interrupted); a later call resumes.

    SIGTERM / SIGUSR2 only raise a flag from the moment this is called until results.json is
    written (the previous handlers are back when it returns): a signal during setup stops the
    run at its first step boundary, one after the last step is noted and the run finishes.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir) if run_dir else run_dir_for(cfg)
    done = read_results(run_dir)
    if done and done.get("status") == "finished":
        clash = config_clash(cfg, run_dir)
        if clash:
            raise ConfigError(clash)
        return done
    stop = StopFlag().install()
    try:
        return _train(cfg, run_dir, max_steps, stop, t0)
    finally:
        stop.restore()


def _train(cfg: Config, run_dir: Path, max_steps: Optional[int], stop: StopFlag, t0: float) -> Dict[str, Any]:
    dist = init_distributed(cfg)
    _prepare_run_dir(cfg, run_dir, dist)
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.run.keep_checkpoints, dist)
    resume_from = ckpt.newest_valid()
    parts = build_parts(cfg, dist, resuming=resume_from is not None)
    engine, data, accum = parts.engine, parts.train_data, cfg.optim.grad_accum
    state: Dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0}
    rng = TrainRng()
    if resume_from is not None:
        state = ckpt.load(engine, resume_from, parts.identity, rng)["state"]
    # Totals over all invocations of this run (checkpoints older than these fields start at 0).
    for key in ("wall_s", "train_s", "steps_timed", "bad_samples"):
        state.setdefault(key, 0)
    wall_before, bad_before = state["wall_s"], state["bad_samples"]
    log = MetricsLog(run_dir, enabled=dist.is_main)
    log.log("start", state["step"], resumed_from=str(resume_from) if resume_from else None,
            world_size=dist.world_size, **parts.counts, **parts.train_data.mixing.as_dict())
    if parts.prompt_init is not None:
        pi = parts.prompt_init
        log.log("prompt_init", state["step"], strategy=getattr(pi, "strategy", None),
                seconds=getattr(pi, "seconds", None), images=getattr(pi, "images", None),
                cache_hit=getattr(pi, "cache_hit", None))
    if resume_from is None:
        _log_alignment(parts, 0, log)
    if dist.is_main:
        from spt_dist.data import write_selected_keys

        write_selected_keys(run_dir, data.selected_keys)

    bpe, epochs = data.batches_per_epoch, cfg.optim.epochs
    total_micro = epochs * bpe
    bar = tqdm(total=total_micro // accum, initial=state["step"], desc=run_dir.name, unit="step",
               disable=not (dist.is_main and cfg.run.progress), dynamic_ncols=True)
    status, stop_reason = "finished", None
    # One all-reduce per optimizer step: summed loss, micro batches, per stop reason the
    # number of ranks that saw it (SIGTERM, SIGUSR2, max_steps), so all ranks stop together,
    # and the bad samples every rank skipped so far in this invocation.
    # A flag raised during setup is voted on at the first step boundary like any other.
    window = torch.zeros(6, dtype=torch.float64)
    checked, t_step = False, time.perf_counter()
    saved_step = state["step"] if resume_from is not None else -1

    def save() -> None:
        nonlocal saved_step
        state["wall_s"] = round(wall_before + time.perf_counter() - t0, 3)
        meta = {"state": state, "identity": parts.identity, "config": to_yaml(cfg)}
        ckpt.save(engine, state["step"], meta, rng)
        saved_step = state["step"]

    try:
        engine.train()
        while state["epoch"] < epochs and status == "finished":
            epoch = state["epoch"]
            for images, labels, _ in data.epoch(epoch, skip_batches=state["batch"]):
                with rng.active():
                    logits = engine(images.to(engine.device, parts.dtype))
                loss = F.cross_entropy(logits.float(), labels.to(engine.device),
                                       label_smoothing=cfg.optim.label_smoothing)
                engine.backward(loss)
                engine.step()
                state["batch"] += 1
                window[0] += loss.item()
                window[1] += 1
                if (epoch * bpe + state["batch"]) % accum:
                    continue  # inside an accumulation window: no optimizer step yet
                state["step"] += 1
                window[2:] = torch.tensor([stop.signal_name == "SIGTERM", stop.signal_name == "SIGUSR2",
                                           max_steps is not None and state["step"] >= max_steps,
                                           data.bad_samples])
                loss_sum, n, *votes, bad = all_reduce_sum(window.clone()).tolist()
                state["bad_samples"] = bad_before + int(bad)
                stop_votes = any(votes)
                window.zero_()
                now = time.perf_counter()
                state["train_s"], state["steps_timed"], t_step = state["train_s"] + now - t_step, \
                    state["steps_timed"] + 1, now
                if not checked:  # a wrong optimizer state fails at the first step, not at the end
                    _optimizer_bytes(cfg, parts, dist)
                    checked, t_step = True, time.perf_counter()
                bar.update(1)
                if state["step"] % cfg.run.log_every == 0 or stop_votes:
                    lr = engine.get_lr()[0]
                    log.log("train", state["step"], epoch=epoch, loss=loss_sum / n, lr=lr,
                            samples_per_s=_samples_per_s(state, parts.global_batch),
                            bad_samples=state["bad_samples"])
                    bar.set_postfix(loss=f"{loss_sum / n:.4f}", lr=f"{lr:.2e}")
                if stop_votes:
                    status = "interrupted"
                    stop_reason = next(r for r, v in zip(STOP_REASONS, votes) if v)
                    save()
                    log.log("interrupted", state["step"], signal=stop_reason)
                    break
                if state["step"] % cfg.run.checkpoint_every == 0:
                    save()
                    t_step = time.perf_counter()  # checkpoint time is not training throughput
            if status != "finished":
                break
            _run_evals(parts, state, epoch, epoch + 1 == epochs, log, cfg.run.eval_every)
            _log_alignment(parts, state["step"], log)
            state["epoch"], state["batch"] = epoch + 1, 0
            t_step = time.perf_counter()
        if status == "finished" and state["step"] > 0 and saved_step != state["step"]:
            save()  # the run folder always holds its final state (trainable tensors only)
    finally:
        bar.close()

    extra = _resource_report(cfg, parts, dist, ckpt, stepped=state["step"] > 0)
    extra.update(train_s=round(state["train_s"], 3), signal=stop_reason,
                 samples_per_s=_samples_per_s(state, parts.global_batch))
    if status == "finished":
        trainable = full_trainable_state(parts)  # collective under ZeRO
        if dist.is_main:
            export_prompt_pack(run_dir / "prompt_pack.safetensors", parts, cfg, trainable)
    results = _results(cfg, parts, dist, state, status, extra)
    results["wall_s"] = round(wall_before + time.perf_counter() - t0, 3)
    if dist.is_main:
        write_json_atomic(run_dir / "results.json", results)
        log.log("end", state["step"], **{k: v for k, v in results.items() if k != "step"})
        log.close()
        print(f"spt: run {run_dir} {status}: top1={results['top1']} val_top1={results['val_top1']} "
              f"step={state['step']}", file=sys.stderr, flush=True)
        if stop.requested and status == "finished":
            print(f"spt: {stop.signal_name} arrived after the last step; the run finished anyway",
                  file=sys.stderr, flush=True)
    barrier()
    return results
