"""Every place the receiver works below pynetdicom's public API (and pydicom's UID validator), in one module.

What is here depends on how the pinned libraries (pynetdicom 3.0.4, pydicom 3) are built inside, so nothing
else in the node touches a private name of pynetdicom, patches it or subclasses it (a test scans for that).
:func:`install` puts the process-wide seams in place; only the receiver does (``StorageSCP.start``), so a
worker or delivery process runs the libraries as shipped. :func:`verify` checks each seam against the installed
libraries; :func:`install` runs it first, and so do the tests, so a changed library stops the receiver with the
seam's name instead of making it quietly slower or wrong.

The seams (``SEAMS`` names them):

* ``clock``: the ``time`` module inside pynetdicom's dul and association modules is replaced by a clock whose
  ``sleep`` runs, in a thread given a wait of its own (:func:`replace_sleep`), that wait instead; every other
  thread sleeps as before. node.dicom.reactor gives an accepted association's two reactors waits for work.
* ``reactor state``: whether the DUL or the association reactor is stopping or has work queued, and the DUL's
  ``send_pdu`` wrapped per association (:func:`dul_has_work`, :func:`association_stopping`, :func:`after_send`).
* ``transport``: an association socket's reads served by the connection guard (:func:`serve_reads`), and the
  DUL's idle timer restarted for a PDU read below it (:func:`restart_idle_timer`).
* ``spooling``: C-STORE data sets spooled in chunks into the files of node.dicom.chunked (pynetdicom's
  ``STORE_RECV_CHUNKED_DATASET`` and its dimse_messages' file, file meta and writer), the file of the data set
  being spooled (:func:`spooling_file`), and the association whose DUL thread is running (:func:`dul_association`).
* ``validators``: the UI validators of pynetdicom's ``_config.VALIDATORS`` and pydicom's ``valuerep.VALIDATORS``
  remember their answers for recent values.
* ``contexts``: the server's supported contexts, deep-copied for every association, share their UID objects.
* ``server``: pynetdicom's threaded association server, subclassed (:class:`ReceiverServer`).
* ``rejection``: waiting for the DUL to put a queued A-ASSOCIATE-RJ on the wire (:func:`wait_until_rejected`).
"""

from __future__ import annotations

import copy
import functools
import inspect
import socket
import socketserver
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from pydicom import valuerep
from pynetdicom import AE, _config, association, dimse_messages, dul, fsm, transport
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

SEAMS = ("clock", "reactor state", "transport", "spooling", "validators", "contexts", "server", "rejection")
REMEMBERED = 8192  # UID validation answers kept (per validator)


class SeamBroken(RuntimeError):
    """The installed pynetdicom or pydicom no longer has the shape a seam relies on."""

    def __init__(self, seam: str, what: str) -> None:
        super().__init__(f"receiver seam {seam!r} broken by the installed library: {what}")
        self.seam = seam


def _require(seam: str, holds: bool, what: str) -> None:
    if not holds:
        raise SeamBroken(seam, what)


def _source(obj: Any) -> str:
    return inspect.getsource(obj)


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# --- clock and reactor state ---------------------------------------------------------------------------------

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


_CLOCKED: tuple[ModuleType, ...] = (dul, association)


def replace_sleep(thread: threading.Thread, wait: Callable[[float], None]) -> None:
    """Run ``wait`` instead of each sleep ``thread`` (an association or its DUL) takes in pynetdicom's reactors."""
    _waits[thread] = wait


def dul_has_work(provider: DULServiceProvider) -> bool:
    """Whether the DUL reactor has something to do without waiting: stopping, or a primitive or event queued."""
    return bool(provider._kill_thread or provider.to_provider_queue.queue or provider.event_queue.queue)


def association_stopping(assoc: Association) -> bool:
    """Whether the association reactor has been told to stop."""
    return assoc._kill


def after_send(provider: DULServiceProvider, then: Callable[[], None]) -> None:
    """Call ``then`` after each primitive this DUL is given to send."""
    send_pdu = provider.send_pdu

    def send_then(primitive: Any) -> None:
        send_pdu(primitive)
        then()

    provider.send_pdu = send_then  # type: ignore[method-assign]


def _verify_clock() -> None:
    for module in _CLOCKED:
        _require("clock", module.time is time or isinstance(module.time, _Clock),
                 f"{module.__name__}.time is not the time module")
    _require("clock", "time.sleep(self._run_loop_delay)" in _source(DULServiceProvider.run_reactor),
             "the DUL reactor no longer sleeps through its module's time")
    _require("clock", "time.sleep(" in _source(Association._run_reactor),
             "the association reactor no longer sleeps through its module's time")


def _verify_reactor_state() -> None:
    assoc = Association(AE(), MODE_ACCEPTOR)
    provider = assoc.dul
    for name in ("_kill_thread", "to_provider_queue", "event_queue", "_idle_timer"):
        _require("reactor state", hasattr(provider, name), f"the DUL has no {name}")
    _require("reactor state", isinstance(assoc._kill, bool), "the association has no _kill flag")
    _require("reactor state", hasattr(assoc.dimse.msg_queue, "not_empty"),
             "the DIMSE message queue is not a queue.Queue")
    _require("reactor state", _parameters(provider.send_pdu) == ["primitive"], "the DUL's send_pdu changed")
    _require("reactor state", dul_has_work(provider) is False and association_stopping(assoc) is False,
             "a new association's reactors look busy")


# --- transport -----------------------------------------------------------------------------------------------

def serve_reads(sock: AssociationSocket, read: Callable[[int], bytearray]) -> None:
    """Serve the reads of ``sock`` (what the DUL reads each PDU's header and body through) with ``read``."""
    sock.recv = read  # type: ignore[method-assign]


def restart_idle_timer(assoc: Association) -> None:
    """Restart the DUL's idle timer, as it does itself for each PDU it reads (for a PDU read below it)."""
    assoc.dul._idle_timer.restart()


def _verify_transport() -> None:
    _require("transport", _parameters(AssociationSocket.recv) == ["self", "nr_bytes"], "AssociationSocket.recv changed")
    reads = _source(DULServiceProvider._read_pdu_data)
    _require("transport", "self.socket.recv(6)" in reads and "self.socket.recv(pdu_length)" in reads,
             "the DUL no longer reads PDUs through its socket's recv")
    _require("transport", "isinstance(self.socket, ssl.SSLSocket)" in _source(AssociationSocket.ready.fget),
             "the socket's TLS check changed (the guarded socket reports the wrapped socket's class for it)")
    _require("transport", "self._idle_timer.restart()" in _source(DULServiceProvider.run_reactor),
             "the DUL no longer restarts its idle timer per PDU")


# --- spooling ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spooling:
    """What a chunked C-STORE's data set is written with, in place of pynetdicom's own."""

    open_file: Callable[..., Any]  # called as NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    create_file_meta: Callable[..., Any]  # called with sop_class_uid, sop_instance_uid, transfer_syntax
    write_file_meta_info: Callable[[Any, Any], None]  # (file, what create_file_meta returned)


_SPOOLED = ("NamedTemporaryFile", "create_file_meta", "write_file_meta_info")


def dul_association() -> Association | None:
    """The association whose DUL thread is the current thread, or None."""
    thread = threading.current_thread()
    return thread.assoc if isinstance(thread, DULServiceProvider) else None


def spooling_file(assoc: Association) -> Any:
    """The file the data set of the message ``assoc`` is decoding is spooled to, or None."""
    message = assoc.dimse.message
    return getattr(message, "_data_set_file", None) if message is not None else None


def _verify_spooling() -> None:
    _require("spooling", isinstance(_config.STORE_RECV_CHUNKED_DATASET, bool), "no STORE_RECV_CHUNKED_DATASET")
    decoding = _source(dimse_messages.DIMSEMessage.decode_msg)
    for name in _SPOOLED:
        _require("spooling", hasattr(dimse_messages, name) and f"{name}(" in decoding,
                 f"dimse_messages no longer spools through its module's {name}")
    _require("spooling", 'NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")' in decoding,
             "the spool file is opened differently")
    _require("spooling", "self._data_set_file" in decoding, "the spooled data set's file is no longer _data_set_file")
    _require("spooling", issubclass(DULServiceProvider, threading.Thread)
             and isinstance(DULServiceProvider.assoc, property), "the DUL is not a thread holding its association")


# --- validators ----------------------------------------------------------------------------------------------

def _remembering(validate: Callable[..., tuple[bool, str]]) -> Callable[..., tuple[bool, str]]:
    remembered = functools.lru_cache(maxsize=REMEMBERED)(validate)

    @functools.wraps(validate)
    def check(*args: Any) -> tuple[bool, str]:
        try:
            return remembered(*args)
        except TypeError:  # an unhashable value: validated as before
            return validate(*args)

    check.remembered = remembered  # type: ignore[attr-defined]
    return check


def _with_conformance(validate: Callable[[Any], tuple[bool, str]]) -> Callable[[Any], tuple[bool, str]]:
    """pynetdicom's validator also depends on ``_config.ENFORCE_UID_CONFORMANCE``: part of what is remembered."""
    keyed = _remembering(lambda value, _enforced: validate(value))

    def check(value: Any) -> tuple[bool, str]:
        return keyed(value, _config.ENFORCE_UID_CONFORMANCE)

    check.remembered = keyed.remembered  # type: ignore[attr-defined]
    check.original = validate  # type: ignore[attr-defined]
    return check


def remember_uid_validation() -> None:
    """Install the remembering UID validators in this process (idempotent).

    pynetdicom checks every UID it sets on a primitive three times (pydicom's UID constructor, its own ``UI``
    validator, and ``UID.is_valid``), each a regular expression match: an association request proposing a
    hundred contexts validates about a thousand UIDs, and each C-STORE its two UIDs again for the request, the
    response and their encodings. The answers depend on the value alone (and pynetdicom's on its conformance
    setting); what is valid, warned about and refused stays exactly as it was.
    """
    if not hasattr(_config.VALIDATORS["UI"], "remembered"):
        _config.VALIDATORS["UI"] = _with_conformance(_config.VALIDATORS["UI"])
    if not hasattr(valuerep.VALIDATORS["UI"], "remembered"):
        valuerep.VALIDATORS["UI"] = _remembering(valuerep.VALIDATORS["UI"])


def _verify_validators() -> None:
    ours = _config.VALIDATORS.get("UI")
    _require("validators", ours is not None and isinstance(_config.ENFORCE_UID_CONFORMANCE, bool),
             "pynetdicom has no UI validator or conformance setting")
    _require("validators", len(_parameters(getattr(ours, "original", ours))) == 1,
             "pynetdicom's UI validator no longer takes the value alone")
    pydicoms = valuerep.VALIDATORS.get("UI")
    _require("validators", pydicoms is not None and _parameters(pydicoms) == ["vr", "value"],
             "pydicom's UI validator no longer takes (vr, value)")


# --- contexts and the server ---------------------------------------------------------------------------------

class SharedUIDContexts(list[PresentationContext]):
    """A server's supported contexts whose per-association deep copy shares the (immutable) UIDs.

    pynetdicom deep-copies the acceptor's contexts for every association; a deep copy rebuilds every UID
    through pydicom's regex validation, 171 SOP classes x 12 transfer syntaxes: about 9 ms of CPU, under
    the GIL, per association. This copy gives each association its own contexts and transfer syntax
    lists (what negotiation changes) around the same UID objects.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for context in self:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies


class Admission(Protocol):
    """What lets a connection through to pynetdicom (node.dicom.connection_guard.ConnectionGate)."""

    def admit(self, sock: socket.socket, peer: tuple[str, int]) -> Any:
        """The socket pynetdicom is to use (after the first PDU arrived), or None when the connection is refused."""

    def stop(self) -> None:
        """Stop watching the admitted connections."""


class ReceiverServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, bound with SO_REUSEPORT so sibling receiver processes share the port,
    handing each connection to pynetdicom only once the gate admits it (in the connection's own thread)."""

    gate: Admission
    listening: socket.socket | None = None  # set in sibling receivers: the socket the first one bound
    request_queue_size = 128  # connections the kernel completes before we accept them (socketserver's: 5)
    daemon_threads = True  # admission threads: a peer waiting to associate never delays shutdown

    @property
    def contexts(self) -> list[PresentationContext]:
        """The supported contexts, copied cheaply for each association (see SharedUIDContexts)."""
        return self._shared_contexts

    @contexts.setter
    def contexts(self, value: list[PresentationContext]) -> None:
        self._shared_contexts = SharedUIDContexts(value)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept without a TLS handshake: the gate does it in the connection's thread, under its timer."""
        client, address = self.socket.accept()  # type: ignore[union-attr]
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        guard = self.gate.admit(request, client_address)
        if guard is not None:
            super().finish_request(guard, client_address)

    def server_bind(self) -> None:
        if self.listening is not None:  # a sibling receiver: accept on the first receiver's socket
            self.socket.close()
            self.socket = self.listening
            self.server_address = self.socket.getsockname()
            return
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()
        # Non-blocking: every receiver process sharing this socket polls it, and the one that accepts first
        # (the least busy) takes the connection; the others' accept finds nothing and returns.
        self.socket.setblocking(False)

    def server_activate(self) -> None:
        if self.listening is None:
            super().server_activate()

    def shutdown(self) -> None:
        """Stop serving and close the socket (made with make_server, so not in the AE's own server list)."""
        socketserver.TCPServer.shutdown(self)
        self.gate.stop()
        self.server_close()


def _verify_contexts() -> None:
    _require("contexts", isinstance(PresentationContext()._transfer_syntax, list),
             "a presentation context's transfer syntaxes are no longer the list _transfer_syntax")
    _require("contexts", "deepcopy(self.server.contexts)" in _source(transport.RequestHandler._create_association),
             "the server's contexts are no longer deep-copied for each association")


def _verify_server() -> None:
    _require("server", "self.contexts = contexts" in _source(ThreadedAssociationServer.__init__)
             and "self.ssl_context = ssl_context" in _source(ThreadedAssociationServer.__init__),
             "the server no longer keeps its contexts and TLS context as attributes")
    for name in ("get_request", "finish_request", "server_bind", "server_activate", "shutdown"):
        _require("server", callable(getattr(ThreadedAssociationServer, name, None)), f"the server has no {name}")
    _require("server", "ssl_context.wrap_socket" in _source(ThreadedAssociationServer.get_request),
             "the server no longer does the TLS handshake in get_request")
    _require("server", "server_class" in _parameters(AE.make_server), "AE.make_server takes no server_class")


# --- rejection -----------------------------------------------------------------------------------------------

def wait_until_rejected(assoc: Association, timeout_s: float) -> None:
    """Block until the DUL has put the queued A-ASSOCIATE-RJ on the wire (state Sta13, or the DUL stopped).

    pynetdicom closes the socket as soon as the EVT_REQUESTED handler returns, which would otherwise
    race the DUL thread: the peer saw a closed connection ("Peer aborted") instead of the rejection.
    """
    deadline = time.monotonic() + timeout_s
    while assoc.dul.is_alive() and assoc.dul.state_machine.current_state != "Sta13":
        if time.monotonic() > deadline:
            return
        time.sleep(0.001)


def _verify_rejection() -> None:
    _require("rejection", Association(AE(), MODE_ACCEPTOR).dul.state_machine.current_state == "Sta1",
             "the DUL state machine no longer names its states Sta1..Sta13")
    _require("rejection", fsm.TRANSITION_TABLE.get(("Evt8", "Sta3")) == "AE-8"
             and 'return "Sta13"' in _source(fsm.AE_8),
             "sending an A-ASSOCIATE-RJ no longer leads to Sta13")


# --- all of them ---------------------------------------------------------------------------------------------

_CHECKS: dict[str, Callable[[], None]] = {
    "clock": _verify_clock, "reactor state": _verify_reactor_state, "transport": _verify_transport,
    "spooling": _verify_spooling, "validators": _verify_validators, "contexts": _verify_contexts,
    "server": _verify_server, "rejection": _verify_rejection,
}


def verify(seams: tuple[str, ...] = SEAMS) -> None:
    """Check that the installed libraries still have the shape each of ``seams`` relies on; raises SeamBroken."""
    for seam in seams:
        try:
            _CHECKS[seam]()
        except SeamBroken:
            raise
        except (AttributeError, TypeError, OSError) as exc:  # a name gone, a signature or source unreadable
            raise SeamBroken(seam, f"{type(exc).__name__}: {exc}") from exc


def install(spooling: Spooling) -> None:
    """Put the process-wide seams in place (idempotent): the reactor clock, chunked spooling with ``spooling``,
    the remembering UID validators. Only the receiver calls this; it verifies every seam first."""
    with _install_lock:
        verify()
        for module in _CLOCKED:
            if not isinstance(module.time, _Clock):
                module.time = _Clock()  # type: ignore[attr-defined]
        _config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = spooling.open_file  # type: ignore[assignment]
        dimse_messages.create_file_meta = spooling.create_file_meta  # type: ignore[assignment]
        dimse_messages.write_file_meta_info = spooling.write_file_meta_info  # type: ignore[assignment]
        remember_uid_validation()
