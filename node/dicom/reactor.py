"""Waits that end when there is work, for pynetdicom's two polling reactors of each accepted association.

pynetdicom runs two threads per association, and both poll: the DUL reactor sleeps ``_run_loop_delay`` (1 ms)
whenever a look at its queues and its socket found nothing, and the association reactor sleeps 1 ms before each
look for a decoded DIMSE message. Every PDU, every complete message and every response can wait up to a
millisecond for the next look; shorter sleeps spend CPU on looks that concurrent associations need.

For the associations the node accepts, those sleeps become waits that end as soon as there is work: the DUL
reactor waits on its socket and on an eventfd signalled whenever a primitive is queued for it to send; the
association reactor waits on its DIMSE message queue. Nothing else changes: every other thread that sleeps in
those two modules (the node's own associations as an SCU, when delivering) sleeps as before.
"""

from __future__ import annotations

import os
import select
import threading
import time
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import Any

from pynetdicom import association as _association_module
from pynetdicom import dul as _dul_module
from pynetdicom.association import Association

IDLE_WAIT_S = 0.005  # the longest wait: how late a timer (ARTIM, idle), a release request or a kill is seen

_waits: weakref.WeakKeyDictionary[threading.Thread, Callable[[float], None]] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()


class _Clock:
    """Stands in for the ``time`` module inside pynetdicom's dul and association modules."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        wait = _waits.get(threading.current_thread())
        if wait is None:
            time.sleep(seconds)
        else:
            wait(seconds)


def _install() -> None:
    modules: tuple[ModuleType, ...] = (_dul_module, _association_module)
    with _install_lock:
        for module in modules:
            if not isinstance(module.time, _Clock):
                module.time = _Clock()  # type: ignore[attr-defined]


class Waker:
    """The eventfd one association's DUL reactor waits on beside its socket; closed with the socket."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._close = weakref.finalize(self, os.close, self.fd)

    def wake(self) -> None:
        try:
            os.eventfd_write(self.fd, 1)
        except OSError:  # closed, or the counter is full: the reactor is awake or gone either way
            pass

    def drain(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except OSError:
            pass

    def close(self) -> None:
        self._close()


def wake_on_work(assoc: Association, sock: Any, buffered: Callable[[], bool]) -> Waker:
    """Make ``assoc``'s two reactors wait for work instead of sleeping; returns the eventfd the DUL reactor waits
    on, for the owner of ``sock`` to close with it.

    ``sock`` is what the DUL reads from (anything with a ``fileno``); ``buffered`` says whether bytes were already
    read from it that ``select`` cannot see (TLS).
    """
    _install()
    waker = Waker()
    dul = assoc.dul
    send_pdu = dul.send_pdu

    def send_and_wake(primitive: Any) -> None:
        send_pdu(primitive)
        waker.wake()

    dul.send_pdu = send_and_wake  # type: ignore[method-assign]

    def dul_wait(seconds: float) -> None:
        if dul._kill_thread or dul.to_provider_queue.queue or dul.event_queue.queue or buffered():
            return
        try:
            ready = select.select([sock, waker.fd], [], [], IDLE_WAIT_S)[0]
        except (OSError, ValueError):  # the connection (or the eventfd) is closed: the reactor is ending
            time.sleep(seconds)
            return
        if waker.fd in ready:
            waker.drain()

    messages = assoc.dimse.msg_queue

    def association_wait(seconds: float) -> None:
        if assoc._kill:  # stopping: pynetdicom's own sleeps while the DUL winds down
            time.sleep(seconds)
            return
        with messages.not_empty:
            if not messages.queue:
                messages.not_empty.wait(IDLE_WAIT_S)

    _waits[dul] = dul_wait
    _waits[assoc] = association_wait
    return waker
