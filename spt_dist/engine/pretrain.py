"""Supervised pretraining of a small backbone (the embedded demo's), single process.

No ViT weights can be downloaded on the machines this project targets, so the demo's
frozen backbone is pretrained here: vit_tiny_p7_28 on Fashion-MNIST classes 0-4, then
prompt-tuned on classes 5-9 (disjoint classes, like a downstream task). This is the default
recipe of `spt pretrain`; the self-supervised one (`--recipe mae`) is in pretrain_mae.py.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict

import torch
from torch.nn import functional as F
from tqdm import tqdm

from .optim import lr_factor


def pretrain(shards: str, out: str, epochs: int = 3, batch_size: int = 128, lr: float = 1e-3,
             seed: int = 0, backbone: str = "vit_tiny_p7_28", weight_decay: float = 0.05,
             progress: bool = True) -> Dict[str, Any]:
    """Train backbone + head on `shards` (train split), report test top-1, save the backbone."""
    from spt_dist.config.schema import DataConfig
    from spt_dist.data import EvalData, ShardIndex, TrainData
    from spt_dist.model import PromptedViT, backbone_spec, build_backbone, normalization, save_backbone_weights
    from spt_dist.model.weights import weights_hash

    from .evaluate import evaluate

    torch.manual_seed(seed)
    index = ShardIndex.load(shards)
    spec = backbone_spec(backbone)
    mean, std = normalization(backbone)
    data_cfg = DataConfig(root=shards, batch_size=batch_size, preset="small", shuffle_buffer=2000)
    train_data = TrainData(data_cfg, index, spec.img_size, mean, std, 0, 1, seed)
    test_data = EvalData(data_cfg, index, "test", spec.img_size, mean, std, 0, 1)
    model = PromptedViT(build_backbone(backbone), index.num_classes, train_backbone=True)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    total = epochs * train_data.batches_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, total // 10, 0.0))
    t0, step = time.perf_counter(), 0
    with tqdm(total=total, desc=f"pretrain {backbone}", unit="step", disable=not progress) as bar:
        for epoch in range(epochs):
            model.train()
            for images, labels, _ in train_data.epoch(epoch):
                loss = F.cross_entropy(model(images), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.perf_counter() - t0
    test = evaluate(model, test_data, torch.device("cpu"), torch.float32)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"backbone": backbone, "pretrain_shards": str(shards), "classes": ",".join(index.classes),
            "epochs": str(epochs), "test_top1": f"{test['top1']:.2f}"}
    save_backbone_weights(model.backbone, out, metadata=meta)
    return {"out": str(out), "test_top1": test["top1"], "test_total": test["total"], "steps": step,
            "train_s": round(train_s, 1), "train_samples": train_data.num_samples,
            "weights_hash": weights_hash(model.backbone), "bytes": Path(out).stat().st_size}
