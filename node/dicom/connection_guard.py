"""Connection guard below pynetdicom: pending-connection limit and timer, PDU length limits, deadlines.

pynetdicom starts an association thread for every TCP connection and counts it against the
association limit before the peer has said a word, reads whatever PDU length the peer declares,
and has no deadline beyond the idle timer. The gate sits between the listening socket and
pynetdicom:

* a connection is handed to pynetdicom only once its whole A-ASSOCIATE-RQ has arrived (within
  ``pending_timeout_s``), no longer than ``max_request_pdu_bytes``;
  at most ``max_pending_connections`` wait for that, the oldest is dropped for a newcomer;
* every byte pynetdicom reads passes through a :class:`GuardedSocket`, which checks each PDU header
  (P-DATA no longer than the maximum PDU we announced, any other PDU no longer than
  ``max_request_pdu_bytes``) before the body is read, and follows the P-DATA fragments of each
  data set, reading each PDU's body in as few calls as it arrives in (pynetdicom's reactors wait on it:
  node.dicom.reactor);
* a watchdog aborts (A-ABORT, then the connection is shut) an association older than
  ``association_deadline_s`` and a data set still arriving after ``instance_deadline_s``.
"""

from __future__ import annotations

import hashlib
import math
import select
import socket
import ssl
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_RQ

from node.dicom import seams
from node.dicom.reactor import Waker

# A-ABORT PDU from the service provider (source 2): reason 0 not specified, 6 invalid PDU parameter value.
_ABORT = struct.Struct(">BBLBBBB")
REASON_NOT_SPECIFIED, REASON_UNRECOGNISED_PDU, REASON_UNEXPECTED_PDU, REASON_INVALID_PARAMETER = 0x00, 0x01, 0x02, 0x06
_A_ASSOCIATE_RQ, _P_DATA_TF = 0x01, 0x04


def abort_pdu(reason: int) -> bytes:
    return _ABORT.pack(0x07, 0, 4, 0, 0, 0x02, reason)


@dataclass(frozen=True)
class GateLimits:
    """The limits the gate enforces (0 for a PDU length means no limit)."""

    max_pending: int
    pending_timeout_s: float
    max_request_pdu_bytes: int
    max_pdata_pdu_bytes: int
    association_deadline_s: float
    instance_deadline_s: float


_DECODABLE_KEPT = 256


class Breach(OSError):
    """The peer broke a limit; pynetdicom sees a closed connection, the receiver audits ``reason``."""


class GuardedSocket:
    """A connected socket that checks the PDU stream pynetdicom reads from it (thread-safe for the watchdog).

    It stands in for the socket object pynetdicom wraps; ``__class__`` reports the wrapped socket's class
    so pynetdicom's ``isinstance(sock, ssl.SSLSocket)`` check (for TLS's buffered bytes) still holds.
    """

    def __init__(self, sock: socket.socket, limits: GateLimits, peer: tuple[str, int]) -> None:
        self._sock = sock
        self._limits = limits
        self.peer = peer
        self.opened = time.monotonic()
        self.breach: str | None = None
        self.instance_started: float | None = None  # a data set is arriving since then
        self._send_lock = threading.Lock()
        # stream parser: bytes of a PDU header (6) or PDV item header (6) still to collect, and bytes to skip
        self._header = bytearray()
        self._pdu_left = 0  # bytes of the current PDU's body still to come
        self._in_pdata = False
        self._skip = 0  # bytes of the current PDV's value (or non-P-DATA body) still to come
        self.waker: Waker | None = None  # what pynetdicom's reactor waits on beside this socket, once it does
        self.before_pdu: Callable[[], None] | None = None  # called before pynetdicom reads each PDU (see read)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D105
        return type(self._sock)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def recv(self, size: int, flags: int = 0) -> bytes:
        data = self._sock.recv(size, flags)
        if data and self.breach is None and not flags & socket.MSG_PEEK:
            self._feed(data)
        return data

    def read(self, size: int) -> bytearray:
        """``size`` bytes (fewer only when the peer closed): how pynetdicom's transport reads a PDU header or body
        once :meth:`read_for` put it in charge. Its own loop asks for 4 KiB per call, so a 64 KiB PDU took 16
        calls through two layers of Python; this takes whatever has arrived per call. It never reads past the
        PDU, so the next one stays in the kernel, where ``select`` sees it. Before a PDU header is read,
        ``before_pdu`` may take PDUs itself (node.dicom.chunked.DirectFragments)."""
        if size == 6 and self.before_pdu is not None and self._pdu_left == 0 and not self._header:  # a PDU's start
            self.before_pdu()
        data = bytearray()
        while len(data) < size:
            chunk = self.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes, left in the kernel; waits until they have all arrived (or the peer closed).
        Nothing under TLS, which cannot peek."""
        if isinstance(self._sock, ssl.SSLSocket):
            return b""
        return self._sock.recv(size, socket.MSG_PEEK | socket.MSG_WAITALL)

    def read_for(self, transport: Any) -> None:
        """Serve the reads of ``transport`` (pynetdicom's AssociationSocket over this socket) with :meth:`read`."""
        seams.serve_reads(transport, self.read)

    def buffered(self) -> bool:
        """Whether bytes already read from the connection wait in TLS, where ``select`` cannot see them."""
        return isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0

    def close(self) -> None:
        if self.waker is not None:
            self.waker.close()
        self._sock.close()

    def send(self, data: bytes, flags: int = 0) -> int:
        with self._send_lock:
            return self._sock.send(data, flags)

    def sendall(self, data: bytes, flags: int = 0) -> None:
        with self._send_lock:
            self._sock.sendall(data, flags)

    def abort(self, reason: str, code: int = REASON_NOT_SPECIFIED) -> None:
        """Send an A-ABORT and shut the connection; pynetdicom then sees it closed (the first reason is kept)."""
        if self.breach is None:
            self.breach = reason
        try:
            with self._send_lock:
                self._sock.settimeout(1.0)
                self._sock.sendall(abort_pdu(code))
        except OSError:
            pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
                self._pdu_left -= step
                view = view[step:]
                continue
            if self._pdu_left == 0:  # a PDU header
                need = 6 - len(self._header)
                self._header += view[:need]
                view = view[need:]
                if len(self._header) == 6:
                    pdu_type, _, length = struct.unpack(">BBL", self._header)
                    self._header.clear()
                    self._start_pdu(pdu_type, length)
                continue
            # inside a P-DATA PDU: a PDV item header (length, context id, message control header)
            need = 6 - len(self._header)
            self._header += view[:need]
            view = view[need:]
            if len(self._header) == 6:
                item_length, _, control = struct.unpack(">LBB", self._header)
                self._header.clear()
                self._pdu_left -= 6
                if item_length < 2 or item_length - 2 > self._pdu_left:
                    self._fail("PDV item length inconsistent with its PDU")
                self._skip = item_length - 2
                self._on_pdv(control)

    def _start_pdu(self, pdu_type: int, length: int) -> None:
        limit = self._limits.max_pdata_pdu_bytes if pdu_type == _P_DATA_TF else self._limits.max_request_pdu_bytes
        if limit and length > limit:
            self._fail(f"PDU type 0x{pdu_type:02X} declares {length} bytes, over the limit of {limit}")
        self._in_pdata = pdu_type == _P_DATA_TF
        self._pdu_left = length
        if not self._in_pdata:
            self._skip = length

    def _on_pdv(self, control: int) -> None:
        if control & 0x01:  # a command fragment
            return
        if self.instance_started is None:
            self.instance_started = time.monotonic()
        if control & 0x02:  # the data set's last fragment
            self.instance_started = None

    def _fail(self, reason: str) -> None:
        self.abort(reason, REASON_INVALID_PARAMETER)
        raise Breach(reason)

    def expired(self, now: float) -> str | None:
        """Why this connection must be aborted now, or None."""
        if now - self.opened > self._limits.association_deadline_s:
            return f"association deadline of {self._limits.association_deadline_s:g} s passed"
        started = self.instance_started
        if started is not None and now - started > self._limits.instance_deadline_s:
            return f"instance deadline of {self._limits.instance_deadline_s:g} s passed"
        return None


RefusalHook = Callable[[tuple[str, int], str, int], None]
"""Called with the peer, the reason, and how many more refusals of that peer for that reason the call stands for."""

REFUSAL_WINDOW_S = 10.0
_MAX_WINDOWS = 4096


class _RefusalLedger:
    """Reports the first refusal of each (host, reason) per window at once and counts the rest, so that a flood of
    connections costs one audit row per window, not one each. ``closed`` hands over the counts of ended windows."""

    def __init__(self, window_s: float = REFUSAL_WINDOW_S) -> None:
        self._window_s = window_s
        self._windows: dict[tuple[str, str], list[float]] = {}  # (host, reason) -> [opened at, refusals since]
        self._lock = threading.Lock()

    def first(self, host: str, reason: str, now: float) -> bool:
        """Count a refusal; True when it opens a window (report it now)."""
        with self._lock:
            key = (host, reason) if len(self._windows) < _MAX_WINDOWS else ("many hosts", reason)
            window = self._windows.get(key)
            if window is None:
                self._windows[key] = [now, 0]
                return True
            window[1] += 1
            return False

    def closed(self, now: float) -> list[tuple[str, str, int]]:
        """(host, reason, refusals not yet reported) of every window older than the window length, or of all."""
        with self._lock:
            ended = [k for k, (opened, _) in self._windows.items() if now - opened >= self._window_s]
            counts = [(host, reason, int(self._windows.pop((host, reason))[1])) for host, reason in ended]
        return [c for c in counts if c[2]]


class ConnectionGate:
    """Admits connections to pynetdicom and watches the admitted ones (one per listening server)."""

    def __init__(self, limits: GateLimits, on_refused: RefusalHook) -> None:
        self.limits = limits
        self._on_refused = on_refused
        self._refusals = _RefusalLedger()
        self._pending: OrderedDict[GuardedSocket, float] = OrderedDict()  # socket -> when it connected
        self._live: weakref.WeakSet[GuardedSocket] = weakref.WeakSet()
        self._decodable: OrderedDict[bytes, None] = OrderedDict()  # digests of requests pynetdicom decoded
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name="dicom-gate-watchdog", daemon=True).start()

    def stop(self) -> None:
        """Stop the watchdog, drop the connections still waiting to associate, report the refusals still counted."""
        self._stop.set()
        with self._lock:
            pending = list(self._pending)
        for guard in pending:
            guard.abort("the receiver is stopping")
        self._report_counted(math.inf)

    def _refused(self, peer: tuple[str, int], reason: str) -> None:
        if self._refusals.first(peer[0], reason, time.monotonic()):
            self._on_refused(peer, reason, 0)

    def _report_counted(self, now: float) -> None:
        for host, reason, count in self._refusals.closed(now):
            self._on_refused((host, 0), reason, count)

    def admit(self, sock: socket.socket, peer: tuple[str, int]) -> GuardedSocket | None:
        """Wait (in the connection's own thread) for a whole, decodable A-ASSOCIATE-RQ; None if refused."""
        guard = GuardedSocket(sock, self.limits, peer)
        with self._lock:
            self._pending[guard] = time.monotonic()
            waiting = [g for g in self._pending if g.breach is None]
            evicted = waiting[:max(0, len(waiting) - self.limits.max_pending)]
        for old in evicted:  # the oldest silent connections make room for a newcomer
            old.abort("dropped: too many connections waiting to associate")
        try:
            refusal = self._first_pdu(guard)
        finally:
            with self._lock:
                self._pending.pop(guard, None)
        if guard.breach is not None or refusal is not None:
            reason, code = (guard.breach, REASON_NOT_SPECIFIED) if guard.breach else refusal or ("", 0)
            if reason:
                guard.abort(reason, code)
                self._refused(peer, reason)
            sock.close()
            return None
        with self._lock:
            self._live.add(guard)
        return guard

    def _first_pdu(self, guard: GuardedSocket) -> tuple[str, int] | None:
        """None when an acceptable A-ASSOCIATE-RQ is waiting; else why not and the A-ABORT reason to send
        (an empty reason for a silent port probe, which is neither answered nor audited)."""
        sock = guard._sock
        timeout = self.limits.pending_timeout_s
        silent = (f"no A-ASSOCIATE-RQ within {timeout:g} s", REASON_NOT_SPECIFIED)
        deadline = time.monotonic() + timeout
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.settimeout(timeout)
                sock.do_handshake()
                remaining = max(0.0, deadline - time.monotonic())
                if not sock.pending() and not select.select([sock], [], [], remaining)[0]:
                    return silent
                return None  # the guard checks the header as pynetdicom reads it
            want = 6
            while True:  # peek, so pynetdicom still reads the whole PDU itself
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return silent
                sock.settimeout(remaining)
                header = sock.recv(want, socket.MSG_PEEK)
                if not header:
                    break
                if len(header) >= 6 and want == 6:
                    pdu_type, _, length = struct.unpack(">BBL", header[:6])
                    if pdu_type != _A_ASSOCIATE_RQ or length > self.limits.max_request_pdu_bytes:
                        break
                    # the whole request before pynetdicom sees it, so a peer that stops mid-request waits
                    # here, not in an association slot (the receive buffer is made to hold it)
                    want = 6 + length
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < 2 * want:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * want)
                    continue  # most peers send the request in one write: look for all of it at once
                if len(header) >= want or guard.breach is not None:  # complete, or dropped meanwhile
                    break
                time.sleep(0.01)  # part of the request: wait for the rest
        except (TimeoutError, socket.timeout):
            return silent
        except (OSError, ValueError) as exc:
            return f"connection failed before associating: {type(exc).__name__}", REASON_NOT_SPECIFIED
        finally:
            try:
                sock.settimeout(None)
            except OSError:
                pass
        if not header:
            return "", 0  # connected and closed without a byte: a port probe
        if len(header) < 6:
            return "closed in the middle of a PDU header", REASON_NOT_SPECIFIED
        pdu_type, _, length = struct.unpack(">BBL", header[:6])
        if pdu_type != _A_ASSOCIATE_RQ:
            code = REASON_UNEXPECTED_PDU if 0x01 <= pdu_type <= 0x07 else REASON_UNRECOGNISED_PDU
            return f"first PDU is type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ", code
        if length > self.limits.max_request_pdu_bytes:
            return (f"A-ASSOCIATE-RQ PDU declares {length} bytes, over the limit of "
                    f"{self.limits.max_request_pdu_bytes}", REASON_INVALID_PARAMETER)
        if len(header) < 6 + length:
            return silent  # never completed (or dropped meanwhile)
        return self._undecodable(bytes(header[:6 + length]))

    def _undecodable(self, request: bytes) -> tuple[str, int] | None:
        """Why pynetdicom could not decode ``request`` (it would leave the association slot taken for acse_timeout),
        or None. A sender repeats the same request each time, so requests that decoded are remembered by digest:
        decoding one with a hundred presentation contexts costs about 10 ms of CPU."""
        digest = hashlib.sha256(request).digest()
        with self._lock:
            if digest in self._decodable:
                self._decodable.move_to_end(digest)
                return None
        try:
            pdu = A_ASSOCIATE_RQ()
            pdu.decode(request)
            pdu.to_primitive()
        except Exception as exc:  # untrusted bytes: whatever the decoder raises means "invalid"
            return f"A-ASSOCIATE-RQ cannot be decoded: {type(exc).__name__}", REASON_INVALID_PARAMETER
        with self._lock:
            self._decodable[digest] = None
            if len(self._decodable) > _DECODABLE_KEPT:
                self._decodable.popitem(last=False)
        return None

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            self._report_counted(now)
            with self._lock:
                pending = [g for g, since in self._pending.items() if now - since > self.limits.pending_timeout_s]
                live = list(self._live)
            for guard in pending:  # a peek stuck past its timeout (e.g. a TLS handshake that never ends)
                guard.abort(f"no A-ASSOCIATE-RQ within {self.limits.pending_timeout_s:g} s")
            for guard in live:
                if guard.breach is None and guard.fileno() != -1 and (reason := guard.expired(now)) is not None:
                    guard.abort(reason)
