"""The optimisation settings of the protocols, pinned against the official rules written out here:
VPT's per-epoch warmup + cosine and its SGD weight decay without the head bias; SPT's
per-iteration schedule with a minimum lr."""
import math

import pytest
import torch

from spt_dist.config.schema import OptimConfig
from spt_dist.engine.optim import build_optimizer, build_scheduler, param_groups
from spt_dist.model import PromptedViT, build_backbone


def _lrs(cfg: OptimConfig, steps_per_epoch: float, peak: float = 1.0, final: float = 0.0):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=peak)
    sched = build_scheduler(opt, cfg, steps_per_epoch, peak, final)
    out = []
    for _ in range(int(cfg.epochs * steps_per_epoch)):
        out.append(opt.param_groups[0]["lr"])  # the lr the next optimizer step uses
        opt.step()
        sched.step()
    return out


def _vpt_epoch_factor(epoch: int, warmup: int = 10, total: int = 100) -> float:
    # KMnP/vpt src/solver/lr_scheduler.py WarmupCosineSchedule.lr_lambda, stepped once per epoch
    # (src/engine/trainer.py): epoch / warmup, then 0.5 (1 + cos(pi (epoch - warmup) / (total - warmup))).
    if epoch < warmup:
        return epoch / warmup
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (total - warmup))))


def test_per_epoch_schedule_is_vpts():
    cfg = OptimConfig(name="sgd", epochs=100, warmup_epochs=10, lr_schedule="per_epoch", warmup_from_zero=True)
    spe = 7
    lrs = _lrs(cfg, spe, peak=0.05)
    expected = [0.05 * _vpt_epoch_factor(s // spe) for s in range(100 * spe)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert lrs[:spe] == [0.0] * spe  # the whole first epoch at lr 0
    assert len(set(lrs[spe:2 * spe])) == 1 and lrs[spe] == pytest.approx(0.005)
    assert lrs[10 * spe] == pytest.approx(0.05)  # the peak: epoch 10
    # Without warmup_from_zero the first epoch already trains (1/10 of the peak).
    late = _lrs(OptimConfig(name="sgd", epochs=100, warmup_epochs=10, lr_schedule="per_epoch"), spe, peak=0.05)
    assert late[0] == pytest.approx(0.005) and late[9 * spe] == pytest.approx(0.05)


def test_per_iteration_schedule_is_spts():
    # WangYZ1608/Self-Prompt-Tuning utils.adjust_learning_rate at t = step / steps_per_epoch + epoch.
    lr, min_lr, epochs, warmup, spe = 1e-3, 1e-8, 20, 4, 5

    def spt(t: float) -> float:
        if t < warmup:
            return lr * t / warmup
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (epochs - warmup)))

    cfg = OptimConfig(epochs=epochs, warmup_epochs=warmup, min_lr=min_lr, lr=lr, warmup_from_zero=True)
    got = _lrs(cfg, spe, peak=lr, final=min_lr)
    assert got == pytest.approx([spt(s / spe) for s in range(epochs * spe)], rel=1e-9, abs=1e-15)
    assert got[0] == 0.0


def test_per_epoch_needs_whole_warmup_epochs():
    from spt_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="'optim.warmup_epochs'.*whole epochs"):
        load_config(None, ["optim.lr_schedule=per_epoch", "optim.warmup_epochs=0.5"])


def _model() -> PromptedViT:
    torch.manual_seed(0)
    return PromptedViT(build_backbone("vit_micro_p4_16"), 3, prompt_length=2, deep=True)


def test_sgd_decays_every_trainable_tensor_but_the_head_bias():
    # KMnP/vpt src/solver/optimizer.py: weight_decay for every trainable tensor, 0 for "last_layer.bias".
    model = _model()
    cfg = OptimConfig(name="sgd", weight_decay=0.1, momentum=0.9)
    groups = param_groups(model.named_parameters(), cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    assert decay == {0.1: ["head.weight", "prompts"], 0.0: ["head.bias"]}
    # Behaviour: with zero gradients one SGD step shrinks exactly the decayed tensors by 1 - lr x wd.
    opt = build_optimizer(groups, cfg, lr=0.5)
    before = {n: p.detach().clone() for n, p in model.named_trainable_parameters()}
    for p in model.trainable_parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_trainable_parameters():
        factor = 1.0 if n == "head.bias" else 1.0 - 0.5 * 0.1
        torch.testing.assert_close(p.detach(), before[n] * factor)
    # optim.sgd_no_decay=none: one weight decay for everything.
    flat = param_groups(model.named_parameters(), OptimConfig(name="sgd", weight_decay=0.1, sgd_no_decay="none"))
    assert len(flat) == 1 and len(flat[0]["params"]) == 3 and flat[0]["weight_decay"] == 0.1


def test_adamw_groups_are_spts():
    # SPT's utils.param_groups_weight_decay: prompts -> --weight_decay, head weight -> --wd_head,
    # biases and 1-d tensors -> none.
    model = _model()
    cfg = OptimConfig(name="adamw", weight_decay=3.0, prompt_weight_decay=0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    got = {g["group"]: (g["weight_decay"], [names[id(p)] for p in g["params"]])
           for g in param_groups(model.named_parameters(), cfg)}
    assert got == {"prompts": (0.01, ["prompts"]), "decay": (3.0, ["head.weight"]), "no_decay": (0.0, ["head.bias"])}


def test_prompt_weight_decay_with_sgd_is_refused():
    from spt_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="'optim.prompt_weight_decay'"):
        load_config(None, ["optim.name=sgd", "optim.prompt_weight_decay=0.01"])
