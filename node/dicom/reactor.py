"""Waits that end when there is work, for pynetdicom's two polling reactors of each accepted association.

pynetdicom runs two threads per association, and both poll: the DUL reactor sleeps ``_run_loop_delay`` (1 ms)
whenever a look at its queues and its socket found nothing, and the association reactor sleeps 1 ms before each
look for a decoded DIMSE message. Every PDU, every complete message and every response can wait up to a
millisecond for the next look; shorter sleeps spend CPU on looks that concurrent associations need.

For the associations the node accepts, those sleeps become waits that end as soon as there is work: the DUL
reactor waits on its socket and on an eventfd signalled whenever a primitive is queued for it to send; the
association reactor waits on its DIMSE message queue. Nothing else changes: every other thread that sleeps in
those two modules (the node's own associations as an SCU, when delivering) sleeps as before. What this reaches
into pynetdicom for (its reactors' sleeps, their state, the DUL's send) is node.dicom.seams'.
"""

from __future__ import annotations

import os
import select
import time
import weakref
from collections.abc import Callable
from typing import Any

from pynetdicom.association import Association

from node.dicom import seams

IDLE_WAIT_S = 0.005  # the longest wait: how late a timer (ARTIM, idle), a release request or a kill is seen


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
    waker = Waker()
    dul = assoc.dul
    seams.after_send(dul, waker.wake)

    def dul_wait(seconds: float) -> None:
        if seams.dul_has_work(dul) or buffered():
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
        if seams.association_stopping(assoc):  # stopping: pynetdicom's own sleeps while the DUL winds down
            time.sleep(seconds)
            return
        with messages.not_empty:
            if not messages.queue:
                messages.not_empty.wait(IDLE_WAIT_S)

    seams.replace_sleep(dul, dul_wait)
    seams.replace_sleep(assoc, association_wait)
    return waker
