"""Offline prediction with a PromptBank: image files, and whole shard splits of several tasks.

Invariant: the tasks' samples are interleaved into one stream and batched as the server batches
(schedule.py: samples of one prompt length together, several tasks per pass); each sample is
scored against its own task's labels only, and per task the figures are those `evaluate`
reports for the pack alone (top1, correct, total, loss, bad_samples).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple, Union

import torch
from torch.nn import functional as F

from spt_dist.engine.export import PackMismatchError
from spt_dist.errors import SptError

from .bank import PromptBank
from .schedule import scheduled


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


def _interleaved(streams: Dict[str, Iterator[Tuple[torch.Tensor, int]]]) -> Iterator[Tuple[str, torch.Tensor, int]]:
    """(task, image, label): one sample of each unfinished task in turn."""
    active = list(streams)
    while active:
        for task in list(active):
            item = next(streams[task], None)
            if item is None:
                active.remove(task)
            else:
                yield task, item[0], item[1]


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
    stream = _interleaved({t: _samples(d) for t, d in data.items()})
    for batch in scheduled(stream, batch_size, key=lambda item: bank.prompt_length(item[0])):
        tasks, labels = [t for t, _, _ in batch], [y for _, _, y in batch]
        rows = bank.logits(torch.stack([x for _, x, _ in batch]), tasks)
        for task in set(tasks):
            mine = [i for i, t in enumerate(tasks) if t == task]
            logits, y = torch.stack([rows[i] for i in mine]), torch.tensor([labels[i] for i in mine])
            stats[task] += torch.tensor([(logits.argmax(1) == y).sum().item(), len(mine),
                                         F.cross_entropy(logits, y, reduction="sum").item()], dtype=torch.float64)
    out = {}
    for task, (correct, total, loss) in ((t, s.tolist()) for t, s in stats.items()):
        if total == 0:
            raise SptError(f"split {split!r} of {roots[task]} is empty")
        out[task] = {"top1": 100.0 * correct / total, "correct": int(correct), "total": int(total),
                     "loss": loss / total, "bad_samples": int(getattr(data[task], "bad_samples", 0))}
    return out
