"""PromptBank: one frozen backbone, any number of prompt packs, mixed-task batches in one pass.

Invariant: every pack in the bank was trained on the bank's backbone weights (sha256 of the
tensors) and reads its inputs as the bank does (registry backbone, image size, channels,
mean / std, transform preset, precision); a pack that differs in any of these, or whose
tensors do not fit the backbone, is refused with PackMismatchError naming what differs, and
the bank is left as it was. Adding or removing a pack swaps one immutable snapshot (the
MultiPromptViT and the task order), so a forward already running finishes on the snapshot
it started with, and the backbone is never copied.

Device: the backbone, the stacked prompts and the heads live on the bank's device (`auto`:
the first CUDA GPU when there is one, else the CPU); images are decoded on the host and sent
per batch (from pinned memory, without blocking, on CUDA); logits come back as float32 on the
host. Precision stays the packs' (`dtype`): a bf16 pack runs in bf16 on any device.
"""
from __future__ import annotations

import io
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from spt_dist.engine.export import DTYPES, PackMismatchError, read_prompt_pack
from spt_dist.errors import SptError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Fields every pack must share with the bank: they fix how an image becomes the backbone's input.
INPUT_FIELDS = ("backbone", "img_size", "in_chans", "mean", "std", "preset", "dtype")
DEFAULTS = {"in_chans": "0", "preset": "small", "dtype": "fp32"}  # packs written before these fields
MAX_PIXELS = 40_000_000  # a small file can still decode to gigabytes (decompression bombs)


def resolve_device(spec: Union[str, torch.device] = "auto") -> torch.device:
    """`auto` -> cuda (the current GPU) when CUDA is available, else cpu; `cpu`, `cuda`, `cuda:N`
    as given, refused (SptError naming --device) when this machine cannot run them."""
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", spec):
        raise SptError(f"--device {spec!r}: allowed: auto, cpu, cuda, cuda:N")
    device = torch.device(spec)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SptError(f"--device {spec}: this machine has no CUDA GPU; allowed here: auto, cpu")
        if device.index is not None and device.index >= count:
            raise SptError(f"--device {spec}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


class BadImageError(SptError, ValueError):
    """Bytes that are not an image the bank can read."""


class UnknownTaskError(SptError, LookupError):
    """A task name that is not in the bank."""


class TaskNameError(SptError, ValueError):
    """A task name that cannot be used."""


class TaskExistsError(TaskNameError):
    """A task name already served (add with replace=True to swap its pack)."""


@dataclass(frozen=True)
class Task:
    """What the bank knows about one pack."""
    name: str
    classes: Tuple[str, ...]
    prompt_length: int
    deep: bool
    pool: str
    method: str
    source: str

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "num_classes": len(self.classes), "classes": list(self.classes),
                "prompt_length": self.prompt_length, "deep": self.deep, "pool": self.pool,
                "method": self.method, "source": self.source}


class _Snapshot(NamedTuple):
    model: Any  # MultiPromptViT, None while the bank is empty
    order: Dict[str, int]  # task name -> index into the model's stack
    tasks: Dict[str, Task]


def task_name_for(path: Union[str, Path]) -> str:
    """runs/<run>/prompt_pack.safetensors -> <run>; any other file -> its stem."""
    p = Path(path)
    return p.parent.name if p.name == "prompt_pack.safetensors" and p.parent.name else p.stem


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(float(x) == float(y) for x, y in zip(a, b))
    return str(a) == str(b)


class PromptBank:
    """Load with `PromptBank.open(backbone_file, {name: pack_path})`; `classify(images, tasks)`."""

    def __init__(self, backbone_checkpoint: str, inputs: Mapping[str, Any], lengths: str = "group",
                 device: Union[str, torch.device] = "auto") -> None:
        from spt_dist.data import build_transform
        from spt_dist.model import build_backbone, weights_hash

        self.inputs = {k: inputs.get(k, DEFAULTS.get(k)) for k in INPUT_FIELDS}
        self.dtype = DTYPES[self.inputs["dtype"]]
        self.lengths = lengths
        self.device = resolve_device(device)
        backbone = build_backbone(self.inputs["backbone"], img_size=int(self.inputs["img_size"]),
                                  in_chans=int(self.inputs["in_chans"] or 0) or None, checkpoint=backbone_checkpoint)
        self.weights_hash = weights_hash(backbone)  # of the fp32 file, as packs record it
        self.backbone = backbone.requires_grad_(False).to(self.device, self.dtype).eval()
        self.backbone_checkpoint = str(backbone_checkpoint)
        self._transform = build_transform(self.inputs["preset"], int(self.inputs["img_size"]),
                                          self.inputs["mean"], self.inputs["std"], train=False)
        self._sets: Dict[str, Any] = {}
        self._lock = threading.Lock()
        self._snap = _Snapshot(None, {}, {})

    @classmethod
    def open(cls, backbone_checkpoint: str, packs: Union[Mapping[str, str], Sequence[str]],
             lengths: str = "group", device: Union[str, torch.device] = "auto") -> "PromptBank":
        """A bank whose input settings are the first pack's; every pack must agree with them.
        `device`: auto (CUDA when available, else the CPU), cpu, cuda or cuda:N."""
        named = dict(packs) if isinstance(packs, Mapping) else {task_name_for(p): str(p) for p in packs}
        if not isinstance(packs, Mapping) and len(named) != len(packs):
            raise TaskNameError(f"two packs would get the same task name: {list(packs)}; name them NAME=PATH")
        if not named:
            raise SptError("a prompt bank needs at least one prompt pack (it names the backbone)")
        _, meta = read_prompt_pack(next(iter(named.values())))
        bank = cls(backbone_checkpoint, meta, lengths, device)
        for name, path in named.items():
            bank.add(name, path)
        return bank

    # -- packs ---------------------------------------------------------------------------------
    def add(self, name: str, pack: str, replace: bool = False, source: Optional[str] = None) -> Task:
        """Check pack file `pack` against the bank and serve it as task `name` (`source`: what
        the task listing names as its origin; the path by default)."""
        from spt_dist.model.prompt_stack import PromptSet, check_prompt_set

        if not NAME.match(name):
            raise TaskNameError(f"task name {name!r}: use letters, digits, '.', '_', '-' (at most 100)")
        tensors, meta = read_prompt_pack(pack)
        self._check_meta(pack, meta)
        head_w, head_b = tensors.get("head.weight"), tensors.get("head.bias")
        extra = sorted(set(tensors) - {"prompts", "head.weight", "head.bias"})
        if head_w is None or head_b is None or extra:
            raise PackMismatchError(f"{pack}: a pack holds prompts and head.weight / head.bias; it has "
                                    f"{sorted(tensors)}")
        s = PromptSet(tensors.get("prompts"), head_w, head_b, bool(meta["deep"]), meta["pool"])
        why = check_prompt_set(s, len(self.backbone.blocks), self.backbone.embed_dim)
        if why is None and s.prompt_length != meta["prompt_length"]:
            why = f"{s.prompt_length} prompts, its metadata says {meta['prompt_length']}"
        if why is None and head_w.shape[0] != len(meta["classes"]):
            why = f"a head of {head_w.shape[0]} classes for {len(meta['classes'])} class names"
        if why is None and s.pool == "token" and not self.backbone.has_class_token:
            why = "pool 'token' on a backbone without a class token"
        if why:
            raise PackMismatchError(f"{pack} does not fit the bank's backbone: {why}")
        task = Task(name, tuple(meta["classes"]), s.prompt_length, s.deep, s.pool, meta["method"], source or str(pack))
        with self._lock:
            if name in self._sets and not replace:
                raise TaskExistsError(f"task {name!r} is already served (from {self._snap.tasks[name].source})")
            sets = dict(self._sets, **{name: (s, task)})
            self._snap = self._build(sets)
            self._sets = sets
        return task

    def remove(self, name: str) -> Task:
        with self._lock:
            if name not in self._sets:
                raise UnknownTaskError(f"no task {name!r}; tasks: {', '.join(self._sets) or '(none)'}")
            task = self._sets[name][1]
            sets = {k: v for k, v in self._sets.items() if k != name}
            self._snap = self._build(sets)
            self._sets = sets
        return task

    def _check_meta(self, pack: str, meta: Mapping[str, Any]) -> None:
        if meta.get("method") == "full":
            raise PackMismatchError(f"{pack} comes from full fine-tuning: it tunes the backbone itself "
                                    "and cannot share the bank's frozen one")
        if meta["weights_hash"] != self.weights_hash:
            raise PackMismatchError(f"{pack} was trained on other backbone weights than {self.backbone_checkpoint}: "
                                    f"sha256 {meta['weights_hash'][:16]}... != {self.weights_hash[:16]}...")
        for key in INPUT_FIELDS:
            if not _same(meta.get(key, DEFAULTS.get(key)), self.inputs[key]):
                raise PackMismatchError(f"{pack}: {key} {meta.get(key)!r} differs from the bank's "
                                        f"{self.inputs[key]!r}")

    def _build(self, sets: Mapping[str, Tuple[Any, Task]]) -> _Snapshot:
        from spt_dist.model.prompt_stack import MultiPromptViT, PromptStack

        if not sets:
            return _Snapshot(None, {}, {})
        stack = PromptStack([s for s, _ in sets.values()], len(self.backbone.blocks), self.backbone.embed_dim)
        stack = stack.requires_grad_(False).to(self.device, self.dtype)
        model = MultiPromptViT(self.backbone, stack, self.lengths).eval()
        return _Snapshot(model, {n: i for i, n in enumerate(sets)}, {n: t for n, (_, t) in sets.items()})

    # -- inputs and outputs --------------------------------------------------------------------
    def tasks(self) -> List[Task]:
        return list(self._snap.tasks.values())

    def task(self, name: str) -> Task:
        snap = self._snap
        if name not in snap.tasks:
            raise UnknownTaskError(f"no task {name!r}; tasks: {', '.join(snap.tasks) or '(none)'}")
        return snap.tasks[name]

    def prompt_length(self, name: str) -> int:
        """The task's prompt length (-1 when unknown): what decides how samples share a pass."""
        task = self._snap.tasks.get(name)
        return -1 if task is None else task.prompt_length

    def preprocess(self, data: bytes) -> torch.Tensor:
        """Image file bytes -> the backbone's normalised float32 input (3, s, s)."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
            if w * h > MAX_PIXELS:
                raise BadImageError(f"image of {w}x{h} pixels: at most {MAX_PIXELS} are decoded")
            return self._transform(data)
        except BadImageError:
            raise
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad bytes
            raise BadImageError(f"not an image that can be read ({type(exc).__name__})") from None

    def logits(self, images: torch.Tensor, tasks: Sequence[str]) -> List[torch.Tensor]:
        """Per sample, float32 logits (on the host) over its task's classes; images (B, 3, s, s)
        on the host or the bank's device, one pass."""
        snap = self._snap  # one snapshot for the whole batch
        missing = sorted({t for t in tasks if t not in snap.order})
        if missing:
            raise UnknownTaskError(f"no task {', '.join(map(repr, missing))}; tasks: "
                                   f"{', '.join(snap.order) or '(none)'}")
        return self._forward(snap, images, tasks)

    def _forward(self, snap: _Snapshot, images: torch.Tensor, tasks: Sequence[str]) -> List[torch.Tensor]:
        if len(tasks) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images for {len(tasks)} task names")
        index = torch.tensor([snap.order[t] for t in tasks], dtype=torch.long)
        with torch.inference_mode():
            out = snap.model(self.to_device(images), index).float().cpu()
        return [out[i, :len(snap.tasks[t].classes)] for i, t in enumerate(tasks)]

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """A batch on the bank's device in its precision; from the host through pinned memory on CUDA,
        so that the copy does not block the host (the cast runs on the device)."""
        if self.device.type == "cuda" and images.device.type == "cpu":
            images = (images if images.is_pinned() else images.pin_memory()).to(self.device, non_blocking=True)
        return images.to(self.device, self.dtype)

    def classify(self, images: torch.Tensor, tasks: Sequence[str], top_k: Union[int, Sequence[int]] = 5
                 ) -> List[List[Dict[str, Any]]]:
        """Per sample: its task's top-k classes, [{"index", "label", "score" (softmax)}], best first."""
        results = self.classify_each(images, tasks, top_k)
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    def classify_each(self, images: torch.Tensor, tasks: Sequence[str], top_k: Union[int, Sequence[int]] = 5
                      ) -> List[Union[List[Dict[str, Any]], UnknownTaskError]]:
        """As classify, but a sample of an unknown task gets an UnknownTaskError in its place and
        the others are still answered, from one snapshot (a task removed meanwhile is unknown)."""
        snap = self._snap
        ks = [top_k] * len(tasks) if isinstance(top_k, int) else list(top_k)
        known = [i for i, t in enumerate(tasks) if t in snap.order]
        out: List[Any] = [UnknownTaskError(f"no task {t!r}; tasks: {', '.join(snap.order) or '(none)'}")
                          for t in tasks]
        if not known:
            return out
        rows = self._forward(snap, images[known] if len(known) < len(tasks) else images, [tasks[i] for i in known])
        for i, logits in zip(known, rows):
            probs = logits.softmax(dim=0)
            score, idx = probs.topk(max(1, min(int(ks[i]), probs.numel())))
            names = snap.tasks[tasks[i]].classes
            out[i] = [{"index": c, "label": names[c], "score": p} for c, p in zip(idx.tolist(), score.tolist())]
        return out

    def memory_bytes(self) -> Dict[str, int]:
        """Bytes of the shared backbone and of the stacked prompts and heads."""
        snap = self._snap
        nbytes = lambda m: sum(t.numel() * t.element_size() for t in m.parameters())  # noqa: E731
        return {"backbone": nbytes(self.backbone), "stack": 0 if snap.model is None else nbytes(snap.model.stack)}
