"""metrics.jsonl (one JSON object per event, appended, flushed) and the run's trackers.

Only rank 0 writes. Every line is one whole record: a line left partial (a full disk, a kill
mid-write) is dropped when the log is opened again, before anything is appended. A resumed run
first cuts the log back to its checkpoint (`resume_at`): the records it writes again (every
step past the checkpoint's, the evaluation of an epoch the checkpoint has not finished, a
finished `end` whose results.json was lost) are dropped, so each step's records appear once.
Tools read metrics.jsonl, never the console output or a tracker; the trackers (run.loggers,
see loggers.py) get every numeric value as `<event>/<key>` at the event's step. A tracker that fails mid-run is switched off with one warning and never ends
the run: metrics.jsonl still holds every value.
"""
from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from spt_dist.io import DiskFullError, write_text_atomic

EPOCH_END = ("val", "test", "alignment")  # logged at the end of an epoch, with the epochs done


def _record(line: str) -> Optional[Dict[str, Any]]:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


def replayed(record: Dict[str, Any], step: int, epochs_done: int, fresh: bool = False) -> bool:
    """Whether a run resumed at `step` with `epochs_done` epochs evaluated writes `record` again;
    `fresh`: a start from step 0 with no checkpoint, which logs the initial alignment again."""
    if record["step"] != step:
        return record["step"] > step
    if fresh and record.get("event") == "alignment":
        return True
    if record.get("event") == "end":
        return record.get("status") == "finished"  # the re-entered run ends (and writes its results) again
    return record.get("event") in EPOCH_END and record.get("epoch", 0) > epochs_done


def _drop_partial_line(path: Path) -> None:
    """Cut a last line without its newline, so that the next record starts a line of its own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool, trackers: Sequence[Any] = ()) -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.path = self.run_dir / "metrics.jsonl"
        if enabled:
            _drop_partial_line(self.path)
        self._file = open(self.path, "a") if enabled else None
        self._trackers = list(trackers) if enabled else []

    def resume_at(self, step: int, epochs_done: int, fresh: bool = False) -> None:
        """Cut the log back to a checkpoint at `step` with `epochs_done` epochs evaluated (`fresh`:
        to the start, no checkpoint: a run killed before its first one, or whose checkpoints were
        all corrupt): the records of the segment that ran past it (and were lost with it) are
        dropped; so are lines that are not a whole record."""
        if not self.enabled:
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines
                if (r := _record(line)) is not None and not replayed(r, step, epochs_done, fresh)]
        if kept == lines:
            return
        self._file.close()
        write_text_atomic(self.path, "".join(kept))
        self._file = open(self.path, "a")

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
        scalars = {f"{event}/{k}": v for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if scalars:
            self._each("log", event, step, scalars)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self._trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker is a view; the run goes on without it
                self._trackers.remove(tracker)
                print(f"spt: warning: run.loggers: {tracker.name} failed ({type(exc).__name__}: {exc}); it is off "
                      f"for the rest of this run, metrics.jsonl keeps every value", file=sys.stderr, flush=True)

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            self.close("failed" if kind is not None else "finished")  # nothing left to do after a normal close
        except OSError:
            if kind is None:
                raise
            # the run already ends with its own error (e.g. a full disk found by log()); the file's
            # buffered bytes cannot be written either, and that must not hide the first error

    def _close_file(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"no space left on {self.run_dir} while writing metrics.jsonl") from None
            raise
        finally:
            self._file = None

    def close(self, status: str = "finished") -> None:
        """`status`: finished, interrupted (a stop signal; the run resumes later) or failed."""
        if self._file:
            self._close_file()
            self._each("close", status)
            self._trackers = []
