"""Offline prediction with a PromptBank: image files, and whole shard splits of several tasks.

Invariant: a batch is filled from every task's stream in turn, so tasks share forward passes,
and each sample is scored against its own task's labels only; per task the figures are those
`evaluate` reports for the pack alone (top1, correct, total, loss, bad_samples).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple, Union

import torch
from torch.nn import functional as F

from spt_dist.engine.export import PackMismatchError

from .bank import PromptBank


def classify_files(bank: PromptBank, files: Sequence[str], tasks: Union[str, Sequence[str]], top_k: int = 1,
                   batch_size: int = 64) -> List[List[Dict[str, Any]]]:
    """Per file, its task's top-k (see PromptBank.classify); `tasks` is one name or one per file."""
    names = [tasks] * len(files) if isinstance(tasks, str) else list(tasks)
    out: List[List[Dict[str, Any]]] = []
    for i in range(0, len(files), batch_size):
        chunk = files[i:i + batch_size]
        images = torch.stack([bank.preprocess(Path(f).read_bytes()) for f in chunk])
        out.extend(bank.classify(images, names[i:i + batch_size], top_k))
    return out


def _samples(data: Any) -> Iterator[Tuple[torch.Tensor, int]]:
    for images, labels, _ in data:
        yield from zip(images, labels.tolist())


def _mixed(streams: Dict[str, Iterator[Tuple[torch.Tensor, int]]], batch_size: int
           ) -> Iterator[Tuple[torch.Tensor, List[int], List[str]]]:
    """Batches of up to batch_size samples, one from each unfinished task in turn."""
    active = list(streams)
    while active:
        images, labels, tasks = [], [], []
        while active and len(tasks) < batch_size:
            for task in list(active):
                item = next(streams[task], None)
                if item is None:
                    active.remove(task)
                    continue
                images.append(item[0])
                labels.append(item[1])
                tasks.append(task)
                if len(tasks) == batch_size:
                    break
        if tasks:
            yield torch.stack(images), labels, tasks


def score_shards(bank: PromptBank, roots: Mapping[str, str], split: str = "test",
                 batch_size: int = 128) -> Dict[str, Dict[str, Any]]:
    """{task: {top1, correct, total, loss, bad_samples}} of each task on `split` of its shard folder."""
    from spt_dist.config.schema import DataConfig
    from spt_dist.data import EvalData, ShardIndex

    inputs, data = bank.inputs, {}
    for task, root in roots.items():
        classes = bank.task(task).classes
        index = ShardIndex.load(root)
        if tuple(index.classes) != tuple(classes):
            raise PackMismatchError(f"{root} has classes {list(index.classes)}, task {task!r} was trained on "
                                    f"{list(classes)}")
        cfg = DataConfig(root=root, preset=inputs["preset"], eval_batch_size=batch_size)
        data[task] = EvalData(cfg, index, split, int(inputs["img_size"]), inputs["mean"], inputs["std"], 0, 1)
    stats = {task: torch.zeros(3, dtype=torch.float64) for task in data}  # correct, total, summed loss
    for images, labels, tasks in _mixed({t: _samples(d) for t, d in data.items()}, batch_size):
        rows = bank.logits(images, tasks)
        for task in set(tasks):
            mine = [i for i, t in enumerate(tasks) if t == task]
            logits, y = torch.stack([rows[i] for i in mine]), torch.tensor([labels[i] for i in mine])
            stats[task] += torch.tensor([(logits.argmax(1) == y).sum().item(), len(mine),
                                         F.cross_entropy(logits, y, reduction="sum").item()], dtype=torch.float64)
    out = {}
    for task, (correct, total, loss) in ((t, s.tolist()) for t, s in stats.items()):
        if total == 0:
            raise PackMismatchError(f"split {split!r} of {roots[task]} is empty")
        out[task] = {"top1": 100.0 * correct / total, "correct": int(correct), "total": int(total),
                     "loss": loss / total, "bad_samples": int(getattr(data[task], "bad_samples", 0))}
    return out
