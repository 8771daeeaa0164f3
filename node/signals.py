"""SIGTERM/SIGINT as a flag that any loop can poll.

A handler runs in the main thread between two bytecodes, possibly while that thread is inside
``threading.Event.wait``; setting the same Event from the handler then needs the lock the waiting
thread is re-acquiring, and the process hangs (seen in tests). So the handler only assigns a bool
(and calls an optional hook), and the main thread polls it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable


class Termination:
    """Installs SIGTERM and SIGINT handlers that record the request; ``on_signal`` runs in the handler too."""

    def __init__(self, on_signal: Callable[[], None] | None = None) -> None:
        self.requested = False
        self._on_signal = on_signal
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, *_: object) -> None:
        self.requested = True
        if self._on_signal is not None:
            self._on_signal()

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s`` (in short steps), returning early with True once termination is requested."""
        deadline = time.monotonic() + timeout_s
        while not self.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.1, left))
        return True
