"""An independent reference for accuracy tests and benchmarks: a plain PyTorch loop over an
image-folder tree, decoded by torchvision, with a fresh torch.randperm every epoch.

Only the model (PromptedViT around the same backbone file) is shared with the code under
test; data order, decoding, batching, optimizer steps and the cosine schedule are its own.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch


def plain_top1(tree: Path, backbone: Path, method: str, epochs: int, batch: int, lr: float, seed: int = 0,
               name: str = "vit_tiny_p7_28") -> float:
    """Test top-1 (%) of `method` ("linear" or "full") trained on tree/train, scored on tree/test."""
    from torchvision import datasets, transforms

    from spt_dist.model import PromptedViT, build_backbone, normalization

    mean, std = normalization(name)
    tf = transforms.Compose([transforms.Grayscale(3), transforms.ToTensor(), transforms.Normalize(mean, std)])
    train_set, test_set = datasets.ImageFolder(str(tree / "train"), tf), datasets.ImageFolder(str(tree / "test"), tf)
    torch.manual_seed(seed)
    model = PromptedViT(build_backbone(name, checkpoint=backbone), num_classes=len(train_set.classes),
                        train_backbone=method == "full")
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * (len(train_set) // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    xs = torch.stack([x for x, _ in train_set])
    ys = torch.tensor([y for _, y in train_set])
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(ys))
        for i in range(0, len(perm) - batch + 1, batch):
            idx = perm[i:i + batch]
            loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        xt = torch.stack([x for x, _ in test_set])
        yt = torch.tensor([y for _, y in test_set])
        return 100.0 * float((model(xt).argmax(1) == yt).float().mean())
