"""The Storage + Verification SCP: accepts associations, answers C-ECHO and C-STORE, audits each association."""

from __future__ import annotations

import os
import socket
import socketserver
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine, insert, update
from sqlalchemy.exc import SQLAlchemyError

from node.config import DicomConfig, TLSConfig
from node.db import audit
from node.db.schema import Association as AssociationRow
from node.db.schema import utcnow
from node.dicom.access import AccessPolicy
from node.dicom.chunked import DirectFragments, SpoolRoute, close_unfinished, route_spools, spool_for
from node.dicom.contexts import SharedUIDContexts, add_scp_contexts
from node.dicom.connection_guard import ConnectionGate, GateLimits, GuardedSocket
from node.dicom.occupancy import Occupancy, Seat
from node.dicom.reactor import wake_on_work
from node.dicom.receive import Received, Receiver
from node.dicom.reconcile import RECONCILE_GRACE_S, Reconciliation, reconcile
from node.dicom.status import StoreStatus
from node.dicom.validators import remember_uid_validation
from node.events import AssociationOutcome, AuditKind
from node.logging import get_logger
from node.storage.spool import SpoolError
from node.storage.store import InstanceStore

log = get_logger(__name__)


def _wait_until_sent(assoc: Association, timeout_s: float) -> None:
    """Block until the DUL has put the queued A-ASSOCIATE-RJ on the wire (state Sta13, or the DUL stopped).

    pynetdicom closes the socket as soon as the EVT_REQUESTED handler returns, which would otherwise
    race the DUL thread: the peer saw a closed connection ("Peer aborted") instead of the rejection.
    """
    deadline = time.monotonic() + timeout_s
    while assoc.dul.is_alive() and assoc.dul.state_machine.current_state != "Sta13":
        if time.monotonic() > deadline:
            return
        time.sleep(0.001)


@dataclass
class _AssociationState:
    row_id: int | None
    calling_ae: str = ""
    guard: GuardedSocket | None = None
    outcome: AssociationOutcome = AssociationOutcome.OPEN
    stored: int = 0
    duplicate: int = 0
    failed: int = 0
    bytes: int = 0
    closed: bool = False
    counted: bool = False  # in the node's open associations (the seat's counts)


class _SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, bound with SO_REUSEPORT so sibling receiver processes share the port,
    handing each connection to pynetdicom only once the gate admits it (in the connection's own thread)."""

    gate: ConnectionGate
    listening: socket.socket | None = None  # set in sibling receivers: the socket the first one bound
    request_queue_size = 128  # connections the kernel completes before we accept them (socketserver's: 5)
    daemon_threads = True  # admission threads: a peer waiting to associate never delays shutdown

    @property
    def contexts(self) -> list[PresentationContext]:
        """The supported contexts, copied cheaply for each association (see SharedUIDContexts)."""
        return self._contexts

    @contexts.setter
    def contexts(self, value: list[PresentationContext]) -> None:
        self._contexts = SharedUIDContexts(value)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept without a TLS handshake: the gate does it in the connection's thread, under its timer."""
        client, address = self.socket.accept()  # type: ignore[union-attr]
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        guard = self.gate.admit(request, client_address)
        if guard is not None:
            super().finish_request(guard, client_address)  # type: ignore[arg-type]

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


def tls_context(config: TLSConfig) -> ssl.SSLContext | None:
    if not config.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.cert_file), str(config.key_file))
    if config.ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(config.ca_file))
    return context


class StorageSCP:
    """One receiver: a pynetdicom AE wired to the store, the ingest stage and the audit database."""

    def __init__(self, config: DicomConfig, store: InstanceStore, engine: Engine) -> None:
        self.config = config
        self.store = store
        self.engine = engine
        self.policy = AccessPolicy(config)
        self.seat = Occupancy(1, self.policy.limited_aes()).seat(0)  # start() may give it a node-wide seat
        self.receiver = Receiver(store, engine)
        self.ae = AE(ae_title=config.ae_title)
        self.ae.maximum_pdu_size = config.max_pdu_bytes
        self.ae.maximum_associations = config.max_associations
        self.ae.acse_timeout = config.acse_timeout_s
        self.ae.dimse_timeout = config.dimse_timeout_s
        self.ae.network_timeout = config.network_timeout_s
        add_scp_contexts(self.ae)
        route_spools(self.ae, SpoolRoute(store.incoming, store.spool_refusal))
        remember_uid_validation()
        self.limits = GateLimits(
            max_pending=config.max_pending_connections, pending_timeout_s=config.pending_timeout_s,
            max_request_pdu_bytes=config.max_request_pdu_bytes, max_pdata_pdu_bytes=config.max_pdu_bytes,
            association_deadline_s=config.association_deadline_s, instance_deadline_s=config.instance_deadline_s)
        self._states: weakref.WeakKeyDictionary[Association, _AssociationState] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @property
    def handlers(self) -> list[tuple[evt.EventType, object]]:
        return [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACSE_SENT, self._on_acse_sent),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]

    def start(self, host: str | None = None, port: int | None = None, listening: socket.socket | None = None,
              seat: Seat | None = None) -> ThreadedAssociationServer:
        """Listen in the background; returns the server (``.shutdown()`` stops it).

        ``listening``: a sibling receiver process accepts on the socket the first receiver bound (the least
        busy process takes each connection). Otherwise the socket is bound with SO_REUSEPORT, so separately
        started receivers (``serve --role receiver``) can share the port too. ``seat``: this process's place
        in the node-wide counts of open associations (default: counted in this process alone).
        """
        if seat is not None:
            self.seat = seat
        self.recover_stale_spools()
        try:
            self.reconcile()
        except SQLAlchemyError as exc:  # serve anyway: every C-STORE then gets its precise 0xA700
            log.error("store not reconciled: database unavailable", error=type(exc).__name__)
        address = (host or self.config.host, self.config.port if port is None else port)
        server_class = type("GatedServer", (_SharedPortServer,),
                            {"gate": ConnectionGate(self.limits, self._on_connection_refused),
                             "listening": listening})
        server = self.ae.make_server(address, evt_handlers=self.handlers,  # type: ignore[arg-type]
                                     ssl_context=tls_context(self.config.tls), server_class=server_class)
        threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True).start()
        log.info("listening", ae_title=self.config.ae_title, host=address[0], port=server.server_address[1],
                 tls=self.config.tls.enabled, pid=os.getpid())
        return server

    def recover_stale_spools(self, older_than_s: float | None = None) -> int:
        """Quarantine spool files a dead receiver left behind (never acknowledged); returns how many."""
        limit = time.time() - (self.config.network_timeout_s if older_than_s is None else older_than_s)
        moved = 0
        for path in self.store.stale_spools():
            try:
                if path.stat().st_mtime > limit:
                    continue
                kept = self.store.quarantine(path, "incomplete", {"size": path.stat().st_size})
            except FileNotFoundError:
                continue
            with self.engine.begin() as conn:
                audit.record(conn, AuditKind.SPOOL_RECOVERED, path=str(kept), detail={"reason": "incomplete transfer"})
            moved += 1
        return moved

    def reconcile(self, older_than_s: float = RECONCILE_GRACE_S) -> Reconciliation:
        """Reconcile the store with the index (see node.dicom.reconcile)."""
        return reconcile(self.store, self.engine, older_than_s)

    def _on_connection_refused(self, peer: tuple[str, int], reason: str, repeats: int) -> None:
        """Audit a refused connection, or (``repeats`` > 0) how many more of the peer's were refused for the reason
        within the gate's window (a flood costs a row per window, not a row per connection)."""
        detail: dict[str, object] = {"host": peer[0], "reason": reason}
        detail.update({"repeats": repeats} if repeats else {"port": peer[1]})
        log.warning("connection refused before associating", **detail)
        try:
            with self.engine.begin() as conn:
                audit.record(conn, AuditKind.CONNECTION_REFUSED, detail=detail)
        except SQLAlchemyError as exc:
            log.error("audit write failed", kind=str(AuditKind.CONNECTION_REFUSED), error=type(exc).__name__)

    def _state(self, assoc: Association) -> _AssociationState:
        with self._lock:
            state = self._states.get(assoc)
            if state is None:
                state = self._states[assoc] = _AssociationState(row_id=None)
            return state

    def _on_requested(self, event: Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = str(request.calling_ae_title) if request else ""
        called = str(request.called_ae_title) if request else ""
        host, port = assoc.requestor.address, assoc.requestor.port
        with self._lock:  # the count, the decision and this association's place in the count are one step
            open_in_all, held = self.seat.enter(calling.strip())
            rejection = self.policy.check(calling, called, host, held, open_in_all)
            state = self._states.setdefault(assoc, _AssociationState(row_id=None))
            state.calling_ae, state.closed, state.counted = calling.strip(), rejection is not None, rejection is None
            if rejection is not None:
                self.seat.leave(state.calling_ae)
        outcome = AssociationOutcome.REJECTED if rejection else AssociationOutcome.OPEN
        try:
            with self.engine.begin() as conn:
                row_id = conn.execute(insert(AssociationRow).values(
                    calling_ae=calling[:16], called_ae=called[:16], peer_host=host, peer_port=port, started_at=utcnow(),
                    outcome=str(outcome), reject_reason=rejection.reason if rejection else None,
                    ended_at=utcnow() if rejection else None,
                ).returning(AssociationRow.id)).scalar_one()
                if rejection:
                    audit.record(conn, AuditKind.ASSOCIATION_REJECTED, association_id=row_id,
                                 detail={"reason": rejection.reason, "calling_ae": calling, "host": host})
        except SQLAlchemyError as exc:
            # Accept anyway when allowed: every C-STORE then gets 0xA700, a precise answer per instance.
            log.error("database unavailable, association not audited", error=type(exc).__name__)
            row_id = None
        state.row_id = row_id
        sock = getattr(assoc.dul.socket, "socket", None)
        state.guard = sock if type(sock) is GuardedSocket else None
        if state.guard is not None:
            state.guard.read_for(assoc.dul.socket)
            state.guard.before_pdu = DirectFragments(assoc, state.guard)
            state.guard.waker = wake_on_work(assoc, state.guard, state.guard.buffered)
        if rejection:
            state.outcome = AssociationOutcome.REJECTED
            log.warning("association rejected", association_id=row_id, calling_ae=calling, host=host,
                        reason=rejection.reason)
            assoc.acse.send_reject(rejection.result, rejection.source, rejection.diagnostic)
            _wait_until_sent(assoc, self.config.acse_timeout_s)
            return
        log.info("association requested", association_id=row_id, calling_ae=calling, host=host, pid=os.getpid())

    def _on_echo(self, event: Event) -> int:
        return 0x0000

    def _on_store(self, event: Event) -> int:
        state = self._state(event.assoc)
        try:
            request = event.request
            if event.dataset_path is None:  # the command said no data set follows
                state.failed += 1
                return int(self.receiver.refuse_invalid(state.row_id, "C-STORE request without a data set").status)
            path = Path(event.dataset_path)
            try:
                sha256, size = spool_for(path).complete()
            except SpoolError as exc:  # ENOSPC, EIO, or no room before the first byte: nothing was kept
                outcome = self.receiver.refuse(state.row_id, str(request.AffectedSOPInstanceUID), exc.reason)
            else:
                outcome = self.receiver.receive(Received(
                    path=path, sha256=sha256, size=size, sop_class_uid=str(request.AffectedSOPClassUID),
                    sop_instance_uid=str(request.AffectedSOPInstanceUID),
                    transfer_syntax_uid=str(event.context.transfer_syntax), association_id=state.row_id,
                ))
        except Exception as exc:  # the node never crashes and never answers Success on an unexpected error
            log.exception("C-STORE failed unexpectedly", association_id=state.row_id, error=type(exc).__name__)
            state.failed += 1
            return int(StoreStatus.OUT_OF_RESOURCES)
        if outcome.kind == "duplicate":
            state.duplicate += 1
        elif outcome.status.is_success:
            state.stored += 1
            state.bytes += size
        else:
            state.failed += 1
        return int(outcome.status)

    def _on_acse_sent(self, event: Event) -> None:
        """Released once our A-RELEASE-RP is queued: the peer may close the connection as soon as it has it,
        before pynetdicom's reactor announces the release."""
        if isinstance(event.primitive, A_RELEASE) and event.primitive.result is not None:
            self._state(event.assoc).outcome = AssociationOutcome.RELEASED

    def _on_aborted(self, event: Event) -> None:
        self._state(event.assoc).outcome = AssociationOutcome.ABORTED

    def _keep_partials(self, assoc: Association, row_id: int | None) -> None:
        """Close the spools of data sets cut off mid-transfer and keep their bytes aside (audited)."""
        for spool in close_unfinished(assoc):
            if not spool.path.exists():
                continue
            size = spool.path.stat().st_size
            why_not = self.store.quarantine_refusal(size)
            try:
                kept = None if why_not else str(self.store.quarantine(spool.path, "incomplete", {"size": size}))
            except OSError as exc:
                kept, why_not = None, f"quarantine write failed: {exc.strerror}"
            if kept is None:
                self.store.discard(spool.path)
            try:
                with self.engine.begin() as conn:
                    audit.record(conn, AuditKind.SPOOL_RECOVERED, association_id=row_id, path=kept,
                                 detail={"reason": "incomplete transfer", "size": size, "not_kept": why_not})
            except SQLAlchemyError as exc:
                log.error("audit write failed", kind=str(AuditKind.SPOOL_RECOVERED), error=type(exc).__name__)

    def _on_close(self, event: Event) -> None:
        state = self._state(event.assoc)
        with self._lock:
            if state.counted:
                state.counted = False
                self.seat.leave(state.calling_ae)
        self._keep_partials(event.assoc, state.row_id)
        if state.closed or state.row_id is None:
            state.closed = True
            return
        state.closed = True
        breach = state.guard.breach if state.guard is not None else None
        if breach is not None:
            state.outcome = AssociationOutcome.ABORTED
        if state.outcome is AssociationOutcome.OPEN:  # the connection dropped before the reactor saw why
            released = event.assoc.is_released or event.assoc.acse.is_release_requested()
            state.outcome = AssociationOutcome.RELEASED if released else AssociationOutcome.ABORTED
        try:
            with self.engine.begin() as conn:
                conn.execute(update(AssociationRow).where(AssociationRow.id == state.row_id).values(
                    outcome=str(state.outcome), ended_at=utcnow(), instances_stored=state.stored,
                    instances_duplicate=state.duplicate, instances_failed=state.failed, bytes_stored=state.bytes,
                ))
                if state.outcome is AssociationOutcome.ABORTED:
                    audit.record(conn, AuditKind.ASSOCIATION_ABORTED, association_id=state.row_id,
                                 detail={"stored": state.stored, "failed": state.failed, "reason": breach})
        except SQLAlchemyError as exc:
            log.error("association audit update failed", association_id=state.row_id, error=type(exc).__name__)
        log.info("association ended", association_id=state.row_id, outcome=str(state.outcome), stored=state.stored,
                 duplicate=state.duplicate, failed=state.failed, bytes=state.bytes, pid=os.getpid())
