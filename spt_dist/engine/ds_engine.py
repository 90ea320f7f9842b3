"""The DeepSpeed config from the typed config, and the engine over the trainable parameters only."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Tuple

import torch
from torch import nn

from spt_dist.config.schema import Config, OptimConfig

from .optim import expected_state_bytes


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def deepspeed_config(cfg: Config, world_size: int) -> Dict[str, Any]:
    """ZeRO stage, precision, accumulation and clipping; distributed.deepspeed_json merged last."""
    ds: Dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "train_batch_size": cfg.data.batch_size * cfg.optim.grad_accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.distributed.zero_stage},
        "bf16": {"enabled": cfg.precision.dtype == "bf16"},
        "steps_per_print": 10 ** 9,  # our own metrics.jsonl is the log
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer synchronises the device at every forward and step; the
        # run measures its own throughput (TrainState) at the vote, which syncs anyway.
        "timers": {"throughput": {"enabled": False}},
    }
    if cfg.distributed.zero_stage == 3:
        # Every tensor partitioned, small ones too (DeepSpeed's default keeps tensors of up to 1e5
        # values whole on every rank); no parameter offload unless distributed.deepspeed_json asks.
        ds["zero_optimization"].update(stage3_param_persistence_threshold=0)
    if cfg.distributed.deepspeed_json:
        with open(os.path.expanduser(cfg.distributed.deepspeed_json)) as f:
            ds = _merge(ds, json.load(f))
    return ds


def engine_precision(engine: Any) -> Tuple[int, torch.dtype]:
    """(ZeRO stage, model dtype) the engine actually runs with.

    distributed.deepspeed_json is merged last and may change either, so after initialize
    only the engine is asked, never the typed config.
    """
    if engine.bfloat16_enabled():
        dtype = torch.bfloat16
    elif engine.fp16_enabled():
        dtype = torch.float16
    else:
        dtype = torch.float32
    return int(engine.zero_optimization_stage()), dtype


def build_engine(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 ds_config: Dict[str, Any]) -> Tuple[Any, Any, Any]:
    """deepspeed.initialize with only trainable tensors as model_parameters (frozen ones get
    neither gradient buffers nor optimizer state)."""
    from spt_dist.distributed import import_deepspeed

    deepspeed = import_deepspeed()

    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, ds_optimizer, _, ds_scheduler = deepspeed.initialize(
        model=model, model_parameters=trainable, optimizer=optimizer, lr_scheduler=scheduler,
        config=ds_config, dist_init_required=False)
    if engine.dp_world_size == 1 and engine.zero_optimization_stage() == 0:
        # One rank has nothing to reduce; DeepSpeed's reduction would still walk every module
        # parameter (frozen ones included) and copy the gradients through a flat buffer each step.
        engine.enable_backward_allreduce = False
    return engine, ds_optimizer, ds_scheduler


def optimizer_state_bytes(engine: Any) -> Dict[str, int]:
    """Bytes this rank holds in optimizer moments and in fp32 master copies of the weights."""
    opt = engine.optimizer
    base = getattr(opt, "optimizer", opt)  # ZeRO / bf16 wrappers hold the torch optimizer
    moments = sum(t.numel() * t.element_size() for st in base.state.values()
                  for t in st.values() if torch.is_tensor(t) and t.ndim > 0)
    model_ptrs = {p.data_ptr() for p in engine.module.parameters()}
    master = sum(p.numel() * p.element_size() for g in base.param_groups for p in g["params"]
                 if p.data_ptr() not in model_ptrs)
    return {"moments": moments, "master": master}


def check_optimizer_state(optim: OptimConfig, zero_stage: int, dtype: torch.dtype, measured: Dict[str, int],
                          trainable: int, world_size: int, groups: int) -> Dict[str, int]:
    """Compare the job's optimizer bytes (summed over ranks) with what the trainable count implies.

    `zero_stage` and `dtype` are the engine's (engine_precision). ZeRO 0 replicates state on
    every rank, ZeRO >= 1 partitions it. A fp32 master copy exists under reduced precision
    and under ZeRO >= 1 (its flat fp32 partitions). ZeRO pads each group's flat buffer by a
    few elements per rank; anything beyond that means frozen tensors got state.
    """
    replicas = world_size if zero_stage == 0 else 1
    has_master = dtype != torch.float32 or zero_stage >= 1
    want = {"moments": replicas * expected_state_bytes(optim, trainable),
            "master": replicas * 4 * trainable if has_master else 0}
    pad = 4 * 64 * world_size * groups  # bytes of padding per kind of state
    kinds = 2 if optim.name == "adamw" else 1
    for key, slack in (("moments", kinds * pad), ("master", pad)):
        low = 0 if key == "master" and zero_stage == 3 else want[key]  # ZeRO-3 may alias it
        if not low <= measured[key] <= want[key] + slack:
            raise RuntimeError(
                f"optimizer {key}: {measured[key]} bytes over {world_size} rank(s), but {trainable} trainable "
                f"parameters need {want[key]} (+ at most {slack} of ZeRO padding) with optim.name="
                f"{optim.name}, zero_stage={zero_stage}, dtype={dtype_name(dtype)}; frozen weights in the optimizer?")
    return want


def dtype_name(dtype: torch.dtype) -> str:
    """The config's spelling of a model dtype (fp32 | bf16 | fp16)."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def check_frozen_untouched(model: nn.Module) -> None:
    """Frozen tensors must never have received a gradient buffer."""
    leaked = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    if leaked:
        raise RuntimeError(f"{len(leaked)} frozen tensors hold gradients (first: {leaked[0]})")
