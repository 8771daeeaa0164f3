"""The Storage + Verification SCP: accepts associations, answers C-ECHO and C-STORE, audits each association."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from node.config import DicomConfig, TLSConfig
from node.db import audit
from node.db.associations import close_association, open_association
from node.dicom.access import AccessPolicy
from node.dicom import seams
from node.dicom.chunked import SPOOLING, DirectFragments, SpoolRoute, close_unfinished, route_spools, spool_for
from node.dicom.contexts import add_scp_contexts
from node.dicom.connection_guard import ConnectionGate, GateLimits, GuardedSocket
from node.dicom.occupancy import Occupancy, Seat
from node.dicom.reactor import wake_on_work
from node.dicom.receive import OutcomeKind, Received, Receiver
from node.dicom.reconcile import RECONCILE_GRACE_S, Reconciliation, reconcile
from node.dicom.status import StoreStatus
from node.events import AssociationOutcome, AuditKind
from node.logging import get_logger
from node.storage.spool import SpoolError
from node.storage.store import InstanceStore

log = get_logger(__name__)


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
        """Install the receiver's seams into pynetdicom (node.dicom.seams) and listen in the background; returns
        the server (``.shutdown()`` stops it).

        ``listening``: a sibling receiver process accepts on the socket the first receiver bound (the least
        busy process takes each connection). Otherwise the socket is bound with SO_REUSEPORT, so separately
        started receivers (``serve --role receiver``) can share the port too. ``seat``: this process's place
        in the node-wide counts of open associations (default: counted in this process alone).
        """
        seams.install(SPOOLING)
        if seat is not None:
            self.seat = seat
        self.recover_stale_spools()
        try:
            self.reconcile()
        except SQLAlchemyError as exc:  # serve anyway: every C-STORE then gets its precise 0xA700
            log.error("store not reconciled: database unavailable", error=type(exc).__name__)
        address = (host or self.config.host, self.config.port if port is None else port)
        server_class = type("GatedServer", (seams.ReceiverServer,),
                            {"gate": ConnectionGate(self.limits, self._on_connection_refused),
                             "listening": listening})
        server = self.ae.make_server(address, evt_handlers=self.handlers,  # type: ignore[arg-type]
                                     ssl_context=tls_context(self.config.tls), server_class=server_class)
        threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True).start()
        log.info("listening", ae_title=self.config.ae_title, host=address[0], port=server.server_address[1],
                 tls=self.config.tls.enabled, pid=os.getpid())
        return server

    def recover_stale_spools(self, older_than_s: float | None = None) -> int:
        """Keep aside the spool files a dead receiver left behind (never acknowledged); returns how many."""
        limit = time.time() - (self.config.network_timeout_s if older_than_s is None else older_than_s)
        moved = 0
        for path in self.store.stale_spools():
            try:
                if path.stat().st_mtime > limit:
                    continue
                self._keep_incomplete(path)
            except FileNotFoundError:  # taken meanwhile by a sibling receiver
                continue
            moved += 1
        return moved

    def _keep_incomplete(self, path: Path, association_id: int | None = None) -> None:
        """Keep aside the bytes of a data set whose transfer never completed (audited)."""
        size = path.stat().st_size
        self.receiver.keep_aside(path, "incomplete", AuditKind.SPOOL_RECOVERED,
                                 {"reason": "incomplete transfer", "size": size}, association_id=association_id)

    def reconcile(self, older_than_s: float = RECONCILE_GRACE_S) -> Reconciliation:
        """Reconcile the store with the index (see node.dicom.reconcile)."""
        return reconcile(self.store, self.engine, older_than_s)

    def _on_connection_refused(self, peer: tuple[str, int], reason: str, repeats: int) -> None:
        """Audit a refused connection, or (``repeats`` > 0) how many more of the peer's were refused for the reason
        within the gate's window (a flood costs a row per window, not a row per connection)."""
        detail: dict[str, object] = {"host": peer[0], "reason": reason}
        detail.update({"repeats": repeats} if repeats else {"port": peer[1]})
        log.warning("connection refused before associating", **detail)
        audit.record_or_log(self.engine, AuditKind.CONNECTION_REFUSED, detail=detail)

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

        def opened(conn: Connection) -> int:
            row_id = open_association(conn, calling, called, host, port, rejection.reason if rejection else None)
            if rejection:
                audit.record(conn, AuditKind.ASSOCIATION_REJECTED, association_id=row_id,
                             detail={"reason": rejection.reason, "calling_ae": calling, "host": host})
            return row_id

        # Without a database, accept anyway when allowed: every C-STORE then gets 0xA700, a precise answer each.
        row_id = audit.write_or_log(self.engine, "association", opened)
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
            seams.wait_until_rejected(assoc, self.config.acse_timeout_s)
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
        if outcome.kind is OutcomeKind.DUPLICATE:
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
            with contextlib.suppress(FileNotFoundError):
                self._keep_incomplete(spool.path, row_id)

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

        row_id = state.row_id

        def closed(conn: Connection) -> None:
            close_association(conn, row_id, state.outcome, state.stored, state.duplicate, state.failed, state.bytes)
            if state.outcome is AssociationOutcome.ABORTED:
                audit.record(conn, AuditKind.ASSOCIATION_ABORTED, association_id=row_id,
                             detail={"stored": state.stored, "failed": state.failed, "reason": breach})

        audit.write_or_log(self.engine, "association end", closed)
        log.info("association ended", association_id=row_id, outcome=str(state.outcome), stored=state.stored,
                 duplicate=state.duplicate, failed=state.failed, bytes=state.bytes, pid=os.getpid())
