"""SIGTERM as a flag: the handler records the request (and runs its hook) without touching any lock."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from node.signals import Termination


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_sigterm_ends_the_wait_and_runs_the_hook(restore_handlers: None) -> None:
    hooked: list[bool] = []
    termination = Termination(lambda: hooked.append(True))
    assert termination.wait(0.2) is False and not termination.requested
    # the signal arrives while the main thread waits, sent from another thread as a supervisor would
    threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGTERM)).start()
    assert termination.wait(30) is True
    assert termination.requested and hooked == [True]
    assert termination.wait(5) is True  # stays requested


def test_the_hook_may_interrupt_the_main_thread(restore_handlers: None) -> None:
    class Interrupted(BaseException):
        pass

    def interrupt() -> None:
        raise Interrupted

    Termination(interrupt)
    threading.Timer(0.2, os.kill, args=(os.getpid(), signal.SIGINT)).start()
    with pytest.raises(Interrupted):
        threading.Event().wait(30)
