"""Counting host syncs of code under test, with or without a GPU.

`HostSyncs` records, while active, every call that makes the host wait for the device on a
GPU: a read-back (`item`, `tolist`, `bool(t)`, `float(t)`, `int(t)`, `numpy`, `cpu`), a copy
`.to(device)` / `.cuda()` that does not say non_blocking=True, and a device-wide synchronize
(torch.cuda's or DeepSpeed's accelerator's). On a CPU-only machine none of these waits, but the
same calls are made, so the count says what a GPU run would pay; it over-counts (a read of a
CPU tensor, such as the optimizer's step counter, is no sync on a GPU either), except in the
data stage, which never holds a device tensor (spt_dist/data: not counted). Where CUDA
exists, `device_syncs` also counts what torch's sync debug mode reports: every synchronising
CUDA call, whoever makes it.
"""
from __future__ import annotations

import sys
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
         torch.Tensor.__int__, torch.Tensor.numpy, torch.Tensor.cpu}
COPIES = {torch.Tensor.to, torch.Tensor.cuda}  # copy_ between tensors of one device never waits


HOST_ONLY = str(Path(__file__).resolve().parents[1] / "spt_dist" / "data")
TORCH = str(Path(torch.__file__).parent)


def _names_a_device(args, kwargs) -> bool:
    return "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args[1:])


def _in_host_only_code() -> bool:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(TORCH):
        frame = frame.f_back
    return frame is not None and frame.f_code.co_filename.startswith(HOST_ONLY)


class HostSyncs(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READS and not _in_host_only_code():
            self.calls[func.__name__] += 1
        elif func in COPIES and not kwargs.get("non_blocking", False) and (
                func is not torch.Tensor.to or _names_a_device(args, kwargs)) and not _in_host_only_code():
            self.calls[f"blocking {func.__name__}"] += 1
        return func(*args, **kwargs)

    @contextmanager
    def device_syncs(self) -> Iterator["HostSyncs"]:
        """Also count torch.cuda.synchronize, DeepSpeed's accelerator synchronize and, with CUDA,
        the synchronising calls torch's sync debug mode warns about."""
        from deepspeed.accelerator import get_accelerator

        acc = get_accelerator()
        saved = acc.synchronize, torch.cuda.synchronize

        def counted(original):
            def sync(*args, **kwargs):
                self.calls["synchronize"] += 1
                return original(*args, **kwargs)
            return sync

        acc.synchronize, torch.cuda.synchronize = counted(saved[0]), counted(saved[1])
        cuda = torch.cuda.is_available()
        with warnings.catch_warnings():
            if cuda:
                warnings.showwarning = self._cuda_warning
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
            try:
                yield self
            finally:
                acc.synchronize, torch.cuda.synchronize = saved
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")

    def _cuda_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchronizing" in str(message):
            self.calls["cuda sync"] += 1
