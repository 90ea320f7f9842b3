"""Stopping cleanly: SIGTERM, SIGUSR2 and SIGINT only raise a flag; the loop saves at the next
step boundary. And a rank follows its launcher: when the parent dies, the rank gets SIGTERM.

Saving is collective, so it never happens inside a handler: each step the ranks agree on
their flags with one tiny all-reduce and all stop at the same step. A second SIGINT is not
caught (the previous handler is back): Ctrl-C twice stops at once.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading
from typing import Dict

SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)
PR_SET_PDEATHSIG = 1


class StopFlag:
    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: Dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT and signum in self._previous:
            signal.signal(signum, self._previous.pop(signum))  # the next Ctrl-C is not caught

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


def follow_parent() -> bool:
    """Ask the kernel for SIGTERM when the parent process (torchrun, srun's step, submitit)
    dies, so that ranks never train on as orphans (Linux; elsewhere a no-op). Returns whether
    it is in place."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the request: act on it now
        os.kill(os.getpid(), signal.SIGTERM)
    return True
