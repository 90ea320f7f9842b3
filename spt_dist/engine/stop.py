"""Preemption: SIGTERM / SIGUSR2 only raise a flag; the loop saves at the next step boundary.

Saving is collective, so it never happens inside a handler: each step the ranks OR their
flags with one tiny all-reduce and all stop at the same step.
"""
from __future__ import annotations

import signal
import threading
from typing import Dict

SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class StopFlag:
    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: Dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def install(self) -> "StopFlag":
        # Signal handlers can only be set from the main thread (a thread-run train() skips this).
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
