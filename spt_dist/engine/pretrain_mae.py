"""Self-supervised pretraining with MAE's recipe (`spt pretrain --recipe mae`), single process.

The recipe's values are MAE's (facebookresearch/mae PRETRAIN.md and main_pretrain.py; He et
al., arXiv 2111.06377): 75 % of the patches masked per sample, loss on per-patch normalised
pixels over the masked patches, AdamW betas (0.9, 0.95), weight decay 0.05 on weights only,
per-iteration warmup from 0 then half-cycle cosine to 0, ImageNet input statistics. What a
few-minute CPU run cannot copy (800 epochs, 40 warmup, blr 1.5e-4, a 512-wide 8-block decoder,
random-resized-crop augmentation) is scaled down and named in MAE_RECIPE's notes. The file is
written in MAE's own layout (spt_dist.model.mae) and loads as format `mae`.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict

import torch
from tqdm import tqdm

from .optim import lr_factor

# Pinned against their sources in tests/test_engine_pretrain_mae.py.
MAE_RECIPE = {
    "mask_ratio": 0.75,          # main_pretrain.py --mask_ratio default; paper Sec. 4.1
    "norm_pix_loss": True,       # PRETRAIN.md command (--norm_pix_loss)
    "betas": (0.9, 0.95),        # main_pretrain.py: AdamW(param_groups, lr, betas=(0.9, 0.95))
    "weight_decay": 0.05,        # main_pretrain.py --weight_decay default; PRETRAIN.md
    "warmup_fraction": 40 / 800,  # PRETRAIN.md: --warmup_epochs 40 of --epochs 800
    "min_lr": 0.0,               # main_pretrain.py --min_lr default
    "blr": 1.5e-4,               # PRETRAIN.md; lr = blr * batch / 256 (kept for the record: see lr below)
}


def pretrain_mae(shards: str, out: str, epochs: int = 5, batch_size: int = 128, lr: float = 1.5e-3,
                 seed: int = 0, backbone: str = "vit_tiny_p7_28", decoder_dim: int = 64,
                 decoder_depth: int = 2, decoder_heads: int = 4, dtype: str = "float16",
                 max_steps: int = 0, progress: bool = True) -> Dict[str, Any]:
    """Train an MAE on `shards` (train split, labels unused); save it in MAE's layout.

    `lr` is absolute (not blr-scaled): MAE's blr 1.5e-4 x 128 / 256 = 7.5e-5 is meant for 800
    epochs. `max_steps` > 0 stops early (tests). Returns the figures also stored in the file.
    """
    from spt_dist.config.schema import DataConfig
    from spt_dist.data import EvalData, ShardIndex, TrainData
    from spt_dist.model import backbone_spec, build_backbone, normalization
    from spt_dist.model.mae import MaskedAutoencoder, save_mae_checkpoint

    torch.manual_seed(seed)
    index = ShardIndex.load(shards)
    spec = backbone_spec(backbone)
    mean, std = normalization(backbone, "mae")  # MAE normalises with ImageNet statistics
    data_cfg = DataConfig(root=shards, batch_size=batch_size, preset="small", shuffle_buffer=2000)
    train_data = TrainData(data_cfg, index, spec.img_size, mean, std, 0, 1, seed)
    model = MaskedAutoencoder(build_backbone(backbone), decoder_dim, decoder_depth, decoder_heads,
                              MAE_RECIPE["mask_ratio"], MAE_RECIPE["norm_pix_loss"])
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # MAE (timm's add_weight_decay): no decay on biases and 1-d tensors; the class and mask tokens
    # (3-d) are decayed, the fixed position embeddings are not trained.
    decay = [p for n, p in trainable if p.ndim > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in trainable if p.ndim <= 1 or n.endswith(".bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": MAE_RECIPE["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=MAE_RECIPE["betas"])
    total = epochs * train_data.batches_per_epoch
    if max_steps:
        total = min(total, max_steps)
    warmup = int(round(total * MAE_RECIPE["warmup_fraction"]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, 0.0, from_zero=True))
    losses = []
    t0 = time.perf_counter()
    with tqdm(total=total, desc=f"pretrain mae {backbone}", unit="step", disable=not progress) as bar:
        for epoch in range(epochs):
            model.train()
            for images, _, _ in train_data.epoch(epoch):
                if len(losses) == total:
                    break
                loss = model(images)[0]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.perf_counter() - t0
    test_loss = _test_loss(model, EvalData(data_cfg, index, "test", spec.img_size, mean, std, 0, 1), seed)
    window = max(1, min(train_data.batches_per_epoch, len(losses)) // 10)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    meta = {"recipe": "mae", "backbone": backbone, "pretrain_shards": str(shards),
            "classes": ",".join(index.classes), "epochs": str(epochs), "steps": str(len(losses)),
            "batch_size": str(batch_size), "lr": str(lr), "seed": str(seed),
            "decoder": f"{decoder_dim} wide, {decoder_depth} blocks, {decoder_heads} heads",
            "train_s": f"{train_s:.1f}", "train_loss_first": f"{first:.4f}", "train_loss_last": f"{last:.4f}",
            "test_reconstruction_loss": f"{test_loss:.4f}",
            "metric": "norm-pix MSE on the 75 % masked patches (test: masks drawn from seed)"}
    args = {"model": f"mae_{backbone}", "input_size": spec.img_size, "batch_size": batch_size,
            "epochs": epochs, "mask_ratio": MAE_RECIPE["mask_ratio"], "norm_pix_loss": MAE_RECIPE["norm_pix_loss"],
            "weight_decay": MAE_RECIPE["weight_decay"], "lr": lr, "min_lr": MAE_RECIPE["min_lr"],
            "warmup_steps": warmup, "seed": seed}
    save_mae_checkpoint(model, out, args, meta, getattr(torch, dtype))
    return {"out": str(out), "recipe": "mae", "steps": len(losses), "train_s": round(train_s, 1),
            "train_loss_first": round(first, 4), "train_loss_last": round(last, 4),
            "test_reconstruction_loss": round(test_loss, 4), "train_samples": train_data.num_samples,
            "bytes": Path(out).stat().st_size}


@torch.no_grad()
def _test_loss(model, batches, seed: int) -> float:
    """Mean reconstruction loss over the test split, masks from a generator seeded by `seed`."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    for images, _, _ in batches:
        total += model(images, generator=gen)[0].item() * len(images)
        n += len(images)
    return total / n if n else math.nan
