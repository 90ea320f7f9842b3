"""metrics.jsonl (one JSON object per event, appended, flushed) and TensorBoard scalars.

Only rank 0 writes. Tools read these files, never the console output.
"""
from __future__ import annotations

import errno
import json
import time
from pathlib import Path
from typing import Any

from spt_dist.io import DiskFullError


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled
        self._file = None
        self._tb = None
        if enabled:
            self._file = open(Path(run_dir) / "metrics.jsonl", "a")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def log(self, event: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "step": step, "time": round(time.time(), 3), **values}
        try:
            self._file.write(json.dumps(record, sort_keys=True) + "\n")
            self._file.flush()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"no space left on {self.run_dir} while writing metrics.jsonl") from None
            raise
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{event}/{key}", value, step)

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._tb.close()
            self._file = self._tb = None
