"""ZeRO 1-3 optimizer state saved unpartitioned beside DeepSpeed's partitions, so an elastic run
continues on another world size.

DeepSpeed's ZeRO 1 and 2 split the fp32 master weights and the optimizer moments into one
partition per data-parallel rank (ZeRO 3 the parameters too), and refuse a checkpoint of another
data-parallel size. Prompt tuning's trainable state is a few MB, so with `launch.elastic=true`
each checkpoint also holds it whole (`optimizer_full.pt`: per trainable tensor its fp32 master
copy and every optimizer state entry, plus each parameter group's step count and settings such
as its current lr), assembled through DeepSpeed's own `safe_get_full_*` accessors. On another
world size the engine loads DeepSpeed's module file without its optimizer partitions (ZeRO 3:
only the lr scheduler and step counters, from rank 0's model-states file, load_z3_counters; the
module's partitions are set from this file too, through GatheredParameters) and re-partitions
this state: every rank writes its own fragment of every tensor, with
`safe_set_full_*` under ZeRO 1-2 and, under ZeRO 3, its slice of the tensor's flat, zero-padded
partitioning (`safe_set_local_*`: DeepSpeed's full setter cuts the last rank's slice past the end
when a tensor's size is not a multiple of the world size).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from spt_dist.distributed import Comm

FILE = "optimizer_full.pt"


def _trainable(engine: Any) -> List[Tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]


def _inner(engine: Any) -> torch.optim.Optimizer:
    return engine.optimizer.optimizer  # the torch optimizer inside DeepSpeed's ZeRO optimizer


def _flats(engine: Any) -> List[List[torch.Tensor]]:
    """Per parameter group of the torch optimizer, this rank's flat fp32 partitions it steps.
    ZeRO 3 puts them into the groups only for the duration of a step: its own list, by sub-group."""
    inner = _inner(engine)
    if engine.zero_optimization_stage() < 3:
        return [list(group["params"]) for group in inner.param_groups]
    out: List[List[torch.Tensor]] = [[] for _ in inner.param_groups]
    opt = engine.optimizer
    for sub, flat in enumerate(opt.fp32_partitioned_groups_flat):
        out[opt.sub_group_to_group_id[sub]].append(flat)
    return out


def _state_keys(engine: Any) -> List[str]:
    """The optimizer state entries (exp_avg, ...), the same list on every rank: the union of what
    each rank's partitions hold, so that every rank makes the same collective calls after it."""
    keys = sorted({k for state in _inner(engine).state.values() for k in state if k != "step"})
    return sorted(set().union(*Comm.current().all_gather_object(keys)))


def _relink(engine: Any) -> None:
    """Point every parameter's optimizer-state fragments at the torch optimizer's current state.
    DeepSpeed links them once, right after the first step of the first parameter group, when
    the other groups have no state yet: their fragments stay empty."""
    engine.optimizer._hp_optimizer_states_linked = False
    engine.optimizer._lazy_init_hp_params_optimizer_state()


def _local_slice(param: torch.nn.Parameter, full: torch.Tensor) -> torch.Tensor:
    """This rank's part of `full` under ZeRO 3: the flat tensor cut into world-size equal slices
    of the partition's length, the last one zero-padded."""
    import torch.distributed as dist

    size = param.partition_numel()  # not ds_tensor.numel(): a placeholder while swapped out
    rank = dist.get_rank(group=param.ds_process_group) if dist.is_initialized() else 0
    part = full.detach().flatten()[rank * size:(rank + 1) * size]
    out = torch.zeros(size, dtype=torch.float32)
    out[:part.numel()] = part
    return out


def save_full(engine: Any, folder: Path, is_main: bool) -> None:
    """Collective (every rank, the same order): rank 0 writes folder/optimizer_full.pt."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    if engine.zero_optimization_stage() < 3:
        _relink(engine)
    keys = _state_keys(engine)
    tensors: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, param in _trainable(engine):
        entry = {"fp32": safe_get_full_fp32_param(param).detach().cpu()}
        for key in keys:
            entry[key] = safe_get_full_optimizer_state(param, key).detach().cpu()
        tensors[name] = entry
    inner = _inner(engine)
    steps = [[inner.state.get(p, {}).get("step") for p in flats] for flats in _flats(engine)]
    # The groups' settings as they are now (lr: the scheduler's current value, which DeepSpeed's
    # module file does not hold and the scheduler sets again only after the next step).
    groups = [{k: v for k, v in group.items() if k != "params"} for group in inner.param_groups]
    if is_main:
        torch.save({"tensors": tensors, "keys": keys, "steps": steps, "groups": groups}, folder / FILE)


def load_full(engine: Any, folder: Path) -> None:
    """Every rank: its fragments of the saved whole state, and the groups' step counts."""
    from deepspeed.utils import (safe_set_full_fp32_param, safe_set_full_optimizer_state, safe_set_local_fp32_param,
                                 safe_set_local_optimizer_state)

    data = torch.load(folder / FILE, weights_only=True)
    params = dict(_trainable(engine))
    if set(params) != set(data["tensors"]):
        raise RuntimeError(f"{folder / FILE} holds other trainable tensors than this model "
                           f"({sorted(set(data['tensors']) ^ set(params))[:3]})")
    # Before its first step the torch optimizer has no state and DeepSpeed has not linked the
    # parameters' fragments to it: make the state (this rank's flat partitions, the saved step
    # counts) and link, as DeepSpeed does after a step; then fill every fragment.
    inner = _inner(engine)
    for group, settings in zip(inner.param_groups, data["groups"]):
        group.update(settings)
    for flats, steps in zip(_flats(engine), data["steps"]):
        step = next((s for s in steps if s is not None), None)  # a group's partitions step together
        for flat in flats:  # (their number may differ on another world size)
            state = inner.state[flat]
            for key in data["keys"]:
                state.setdefault(key, torch.zeros_like(flat))
            if step is not None:
                state["step"] = step.clone() if torch.is_tensor(step) else step
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        for name, param in params.items():
            entry = data["tensors"][name]
            safe_set_local_fp32_param(param, _local_slice(param, entry["fp32"]))
            for key in data["keys"]:
                safe_set_local_optimizer_state(param, _local_slice(param, entry[key]), key)
        # the module's own (working-precision) partitions: gathered, set, partitioned again
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0):
            for name, param in params.items():
                param.data.copy_(data["tensors"][name]["fp32"].view_as(param))
        return
    _relink(engine)
    for name, param in params.items():
        entry = data["tensors"][name]
        safe_set_full_fp32_param(param, entry["fp32"])
        for key in data["keys"]:
            safe_set_full_optimizer_state(param, entry[key], key)



def load_z3_counters(engine: Any, ds_folder: Path) -> None:
    """ZeRO 3 on another world size: what DeepSpeed's load restores besides the tensors (the lr
    scheduler, the step counters), from rank 0's model-states file. DeepSpeed's own load opens the
    file of each rank's own number, which a rank added since the save does not have; the tensors
    come from optimizer_full.pt (load_full)."""
    files = sorted(Path(ds_folder).glob("zero_pp_rank_0_mp_rank_*_model_states.pt"))
    if not files:
        raise RuntimeError(f"{ds_folder} holds no ZeRO-3 model-states file of rank 0")
    saved = torch.load(files[0], map_location="cpu", weights_only=True)
    if engine.lr_scheduler is not None and saved.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    engine.global_steps = int(saved["global_steps"])
    engine.global_samples = int(saved.get("global_samples", engine.global_steps * engine.train_batch_size()))
    engine.skipped_steps = int(saved["skipped_steps"])
