"""ZeRO 1-2 optimizer state saved unpartitioned beside DeepSpeed's partitions, so an elastic run
continues on another world size.

DeepSpeed's ZeRO 1 and 2 split the fp32 master weights and the optimizer moments into one
partition per data-parallel rank, and refuse a checkpoint of another data-parallel size. Prompt
tuning's trainable state is a few MB, so with `launch.elastic=true` each checkpoint also holds it
whole (`optimizer_full.pt`: per trainable tensor its fp32 master copy and every optimizer state
entry, plus each parameter group's step count and settings such as its current lr), assembled through DeepSpeed's own
`safe_get_full_*` accessors. On another world size the engine loads DeepSpeed's module file
without its optimizer partitions and re-partitions this state with `safe_set_full_*`: every
rank writes its own fragment of every tensor. ZeRO 3 partitions the parameters themselves and
is not handled here.
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


def save_full(engine: Any, folder: Path, is_main: bool) -> None:
    """Collective (every rank, the same order): rank 0 writes folder/optimizer_full.pt."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    _relink(engine)
    keys = _state_keys(engine)
    tensors: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, param in _trainable(engine):
        entry = {"fp32": safe_get_full_fp32_param(param).detach().cpu()}
        for key in keys:
            entry[key] = safe_get_full_optimizer_state(param, key).detach().cpu()
        tensors[name] = entry
    inner = _inner(engine)
    steps = [[inner.state.get(p, {}).get("step") for p in group["params"]] for group in inner.param_groups]
    # The groups' settings as they are now (lr: the scheduler's current value, which DeepSpeed's
    # module file does not hold and the scheduler sets again only after the next step).
    groups = [{k: v for k, v in group.items() if k != "params"} for group in inner.param_groups]
    if is_main:
        torch.save({"tensors": tensors, "keys": keys, "steps": steps, "groups": groups}, folder / FILE)


def load_full(engine: Any, folder: Path) -> None:
    """Every rank: its fragments of the saved whole state, and the groups' step counts."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

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
    for group, steps in zip(inner.param_groups, data["steps"]):
        for flat, step in zip(group["params"], steps):
            state = inner.state[flat]
            for key in data["keys"]:
                state.setdefault(key, torch.zeros_like(flat))
            if step is not None:
                state["step"] = step.clone() if torch.is_tensor(step) else step
    _relink(engine)
    for name, param in params.items():
        entry = data["tensors"][name]
        safe_set_full_fp32_param(param, entry["fp32"])
        for key in data["keys"]:
            safe_set_full_optimizer_state(param, entry[key], key)

