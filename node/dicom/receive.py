"""The receive stage: validate a spooled data set, decide the status to answer, store it, index it, audit it."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from node.db import audit, identifiers
from node.db import instances as index
from node.db.engine import rerun_after
from node.db.group_commit import GroupCommit
from node.dicom.header import WANTED, scan
from node.dicom.status import StoreStatus
from node.events import AuditKind
from node.logging import IDENTIFIER_KEYWORDS, get_logger, phi_registry
from node.storage.store import InstanceStore

log = get_logger(__name__)

REQUIRED_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID")
Header = dict[str, str]
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_INT32 = 2**31 - 1
_UNAUDITED_MAX = 1000  # audit rows held for the database's return; beyond this only the log and the notes carry them


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a UID the node can use as a key and a file name (PS3.5 9.1), or None."""
    if not value:
        return "is empty"
    if len(value) > 64:
        return f"is {len(value)} characters, over 64"
    if not _UID.fullmatch(value):
        return "is not digits separated by single dots"
    return None


@dataclass(frozen=True)
class Received:
    """A complete spool file (not yet fsynced: the store does that) and what the C-STORE command said of it."""

    path: Path
    sha256: str
    size: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    association_id: int | None


class OutcomeKind(StrEnum):
    """What the receiver did with one instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # identical bytes already stored: answered Success, nothing new
    CONFLICT = "conflict"  # other bytes under a stored SOP Instance UID: both kept, the new one current
    QUARANTINED = "quarantined"  # refused, its bytes kept aside (within the quota)
    REFUSED = "refused"  # answered 0xA700: the sender still holds the data


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance: the status to answer and the audit facts."""

    status: StoreStatus
    kind: OutcomeKind
    reason: str = ""
    instance_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Indexed:
    """What a transaction indexed, and what to cache once it commits."""

    outcome: Outcome
    key: index.SeriesKey | None = None
    identified: tuple[str, ...] = ()


class Refused(Exception):
    """The data set is not acceptable; carries the status to answer."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _text(header: Header, keyword: str, limit: int = 64) -> str | None:
    return header.get(keyword, "")[:limit] or None


def _int(header: Header, keyword: str) -> int | None:
    """An IS value as an integer column takes it: None when absent, malformed or beyond 32 bits."""
    try:
        value = int(header.get(keyword, ""))
    except ValueError:
        return None
    return value if -_INT32 - 1 <= value <= _INT32 else None


def _header_with_pydicom(item: Received) -> Header:
    ds = dcmread(item.path, stop_before_pixels=True, specific_tags=list(WANTED.values()))
    return {kw: str(ds.get(kw)).strip() for kw in WANTED.values() if ds.get(kw) not in (None, "")}


def read_header(item: Received) -> Header:
    """Decode the identifying attributes and check the UIDs; raises Refused with the precise status."""
    try:
        header = scan(item.path, item.transfer_syntax_uid) or _header_with_pydicom(item)
    except Exception as exc:  # any parser failure on untrusted bytes means "cannot understand"
        raise Refused(StoreStatus.CANNOT_PARSE, f"data set cannot be decoded: {type(exc).__name__}") from exc
    phi_registry.remember(*(header.get(k) for k in IDENTIFIER_KEYWORDS))
    for keyword in REQUIRED_UIDS:
        value = header.get(keyword, "")
        if not value:
            raise Refused(StoreStatus.MISSING_UID, f"{keyword} is missing")
        if (problem := uid_problem(value)) is not None:
            raise Refused(StoreStatus.INVALID_UID, f"{keyword} {problem}")
    if (problem := uid_problem(item.sop_instance_uid)) is not None:
        raise Refused(StoreStatus.INVALID_UID, f"the C-STORE command's Affected SOP Instance UID {problem}")
    if header["SOPClassUID"] != item.sop_class_uid:
        raise Refused(StoreStatus.SOP_CLASS_MISMATCH, "SOPClassUID differs from the C-STORE command")
    if header["SOPInstanceUID"] != item.sop_instance_uid:
        raise Refused(StoreStatus.SOP_INSTANCE_MISMATCH, "SOPInstanceUID differs from the C-STORE command")
    return header


class Receiver:
    """Turns received spool files into stored, indexed instances (thread-safe; one per receiver process)."""

    def __init__(self, store: InstanceStore, engine: Engine) -> None:
        self.store = store
        self.engine = engine
        self._series: dict[str, index.SeriesKey] = {}  # series UID -> its row and study
        self._identified: set[tuple[str, ...]] = set()  # (study UID, identifier values) already recorded
        self._lock = threading.Lock()
        self._commits = GroupCommit(engine, isolate=(Refused, IntegrityError), name="receive-commit")
        self._ahead = False  # files go into place ahead of their rows: only while commits succeed
        self._names: dict[str, tuple[threading.Lock, int]] = {}  # store names being received, and how many wait
        self._unaudited: list[dict[str, Any]] = []  # audit rows a failed database could not take, written later

    def receive(self, item: Received) -> Outcome:
        """Store one instance; never raises. Success only after the file is fsynced and its row committed."""
        try:
            header = read_header(item)
        except Refused as refused:
            return self.quarantine(item, refused)
        if not self.store.has_room():
            self.store.discard(item.path)
            return self.refuse(item.association_id, item.sop_instance_uid, "disk below the free-space watermark",
                               header["StudyInstanceUID"])
        relative = self.store.relative_path(header["StudyInstanceUID"], header["SeriesInstanceUID"],
                                            item.sop_instance_uid, item.sha256)
        with self._holding(relative):
            return self._store(item, header, relative)

    @contextmanager
    def _holding(self, relative: str) -> Iterator[None]:
        """Receive one store name at a time in this process: identical bytes sent at once are stored in turn, so a
        failed batch never sets aside a file another of our C-STOREs has just indexed under the same name."""
        with self._lock:
            lock, users = self._names.get(relative, (threading.Lock(), 0))
            self._names[relative] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._names[relative]
                if users == 1:
                    del self._names[relative]
                else:
                    self._names[relative] = (lock, users - 1)

    def _store(self, item: Received, header: Header, relative: str) -> Outcome:
        """Put a decoded instance into the store under ``relative`` and commit its rows; never raises."""
        # A new name goes into place while the committer writes its row. A name the store already holds (an
        # indexed duplicate, or a file a failed row-first commit left) is decided row first, in a transaction of its own,
        # and so is every instance from a failed commit until one succeeds: an unreachable database never
        # fills the store with files no row names.
        placed = self._ahead and not (self.store.root / relative).exists()
        try:
            return self._index_grouped(item, header, relative) if placed else self._index(item, header, relative)
        except Refused as refused:
            return self.quarantine(replace(item, path=self.store.root / relative) if placed else item, refused)
        except IntegrityError:
            # A concurrent association stored the same bytes first: that is a duplicate, answered as such.
            try:
                return self._index(item, header, relative, placed)
            except SQLAlchemyError as exc:
                return self._db_failure(item, exc)
        except SQLAlchemyError as exc:
            return self._db_failure(item, exc)
        except OSError as exc:
            self.store.discard(item.path)
            return self.refuse(item.association_id, item.sop_instance_uid, f"write failed: {exc.strerror}",
                               header["StudyInstanceUID"])

    def _series_key(self, conn: Connection, header: Header) -> index.SeriesKey:
        series_uid, study_uid = header["SeriesInstanceUID"], header["StudyInstanceUID"]
        key = self._series.get(series_uid)
        if key is None:
            key = index.ensure_series(conn, {
                "study_instance_uid": study_uid, "study_date": _text(header, "StudyDate", 8),
                "study_description": _text(header, "StudyDescription"),
            }, {
                "series_instance_uid": series_uid, "modality": _text(header, "Modality", 16),
                "series_number": _int(header, "SeriesNumber"), "series_description": _text(header, "SeriesDescription"),
                "body_part": _text(header, "BodyPartExamined", 16),
            })
        if key.study_instance_uid != study_uid:
            raise Refused(StoreStatus.SERIES_IN_OTHER_STUDY,
                          "SeriesInstanceUID already belongs to another study")
        return key

    def _index_grouped(self, item: Received, header: Header, relative: str) -> Outcome:
        """Rename and fsync the file while the committer writes its row; the row commits once the file is durable.

        A batch that cannot commit has its file kept aside at once (audited), not left in the store without a row.
        """
        ticket = self._commits.submit(lambda conn: self._rows(conn, item, header, relative, placed=True))
        try:
            placed = self.store.commit_file(item.path, relative)
        except BaseException:
            ticket.fail()
            raise
        ticket.ready()
        inode = placed.stat().st_ino
        try:
            indexed = ticket.result()
        except (Refused, IntegrityError):
            raise
        except Exception as exc:  # the batch did not commit (the database down, locked, or its commit failed)
            # Only the file this C-STORE put there: a sibling receiver process that renamed the same bytes into
            # place since then (its own row to commit) keeps its file.
            try:
                ours = placed.stat().st_ino == inode
            except FileNotFoundError:
                ours = False
            return self._db_failure(item, exc, placed if ours else None)
        return self._remember(header, indexed)

    def _index(self, item: Received, header: Header, relative: str, placed: bool = False) -> Outcome:
        reruns = 0
        while True:
            try:
                with self.engine.begin() as conn:
                    indexed = self._rows(conn, item, header, relative, placed)
                return self._remember(header, indexed)
            except DBAPIError as exc:
                if not rerun_after(exc, reruns):
                    raise
                reruns += 1
                placed = placed or not item.path.exists()  # the rolled-back try may have put the file in place

    def _rows(self, conn: Connection, item: Received, header: Header, relative: str, placed: bool) -> _Indexed:
        """The instance's rows; unless ``placed`` (already durable in the store), its file goes into place first."""
        sop = item.sop_instance_uid
        versions = index.versions(conn, sop)
        same = next((v for v in versions if v.sha256 == item.sha256), None)
        if same is not None:
            if not placed:
                self.store.discard(item.path)
            return _Indexed(Outcome(StoreStatus.SUCCESS, OutcomeKind.DUPLICATE, "identical bytes already stored",
                                    same.id))
        key = self._series_key(conn, header)
        identified = (header["StudyInstanceUID"], *(header.get(k, "") for k in IDENTIFIER_KEYWORDS))
        if identified not in self._identified:
            identifiers.record(conn, key.study_id, identified[1:])
        if not placed:
            # Into place before the row: a commit that fails after this leaves an unindexed file (a resend
            # indexes it; reconciliation moves it aside), never a row without its file.
            self.store.commit_file(item.path, relative)
        if versions:
            audit.record(conn, AuditKind.INSTANCE_CONFLICT, association_id=item.association_id,
                         study_instance_uid=header["StudyInstanceUID"], sop_instance_uid=sop, path=relative,
                         detail={"sha256": item.sha256, "earlier_sha256": [v.sha256 for v in versions]})
        instance_id = index.add_instance(conn, {
            "series_id": key.series_id, "association_id": item.association_id, "sop_instance_uid": sop,
            "sop_class_uid": item.sop_class_uid, "transfer_syntax_uid": item.transfer_syntax_uid,
            "instance_number": _int(header, "InstanceNumber"), "sha256": item.sha256, "size_bytes": item.size,
            "path": relative,
        }, key.study_id, supersede=bool(versions))
        kind = OutcomeKind.CONFLICT if versions else OutcomeKind.STORED
        return _Indexed(Outcome(StoreStatus.SUCCESS, kind, instance_id=instance_id, detail={"path": relative}),
                        key, identified)

    def _remember(self, header: Header, indexed: _Indexed) -> Outcome:
        """After the commit: cache the series row and the identifiers recorded for its study."""
        self._ahead = True
        if self._unaudited:
            self._write_unaudited()
        if indexed.key is not None:
            with self._lock:
                self._series[header["SeriesInstanceUID"]] = indexed.key
                if len(self._identified) >= 65536:
                    self._identified.clear()
                self._identified.add(indexed.identified)
        return indexed.outcome

    def keep_aside(self, path: Path, reason: str, kind: AuditKind, detail: dict[str, Any],
                   **columns: Any) -> Path | None:
        """The receive stage's one way to keep bytes it does not index: into the quarantine under ``reason``, with
        ``detail`` as the note beside them, within the quarantine quota and the free-space watermark (else
        discarded, ``not_kept`` saying why), audited as ``kind`` with ``columns``. An audit row the database
        refuses is held until a commit of ours succeeds. Returns where the bytes were kept; FileNotFoundError
        when ``path`` is already gone (nothing is audited)."""
        why_not = self.store.quarantine_refusal(path.stat().st_size)
        kept: Path | None = None
        if why_not is None:
            try:
                kept = self.store.quarantine(path, reason, detail)
            except FileNotFoundError:
                raise
            except OSError as exc:
                why_not = f"quarantine write failed: {exc.strerror}"
        if kept is None:
            self.store.discard(path)
            detail = {**detail, "not_kept": why_not}
            log.warning("bytes not kept aside", kind=str(kind), not_kept=why_not)
        row = {"kind": kind, "path": str(kept) if kept else None, "detail": detail, **columns}
        if not audit.record_or_log(self.engine, **row):
            self._defer_audit(row)
        return kept

    def quarantine(self, item: Received, refused: Refused) -> Outcome:
        """Keep refused bytes aside and audit them (see keep_aside)."""
        detail: dict[str, Any] = {"reason": refused.reason, "status": int(refused.status), "sha256": item.sha256,
                                  "command_sop_instance_uid": item.sop_instance_uid,
                                  "transfer_syntax_uid": item.transfer_syntax_uid}
        kept = self.keep_aside(item.path, refused.status.name.lower(), AuditKind.INSTANCE_QUARANTINED, detail,
                               association_id=item.association_id, status=int(refused.status),
                               sop_instance_uid=item.sop_instance_uid if uid_problem(item.sop_instance_uid) is None
                               else None)
        log.warning("instance quarantined", status=f"0x{refused.status:04X}", reason=refused.reason,
                    path=str(kept) if kept else None)
        return Outcome(refused.status, OutcomeKind.QUARANTINED, refused.reason,
                       detail={"path": str(kept) if kept else None})

    def refuse(self, association_id: int | None, sop_instance_uid: str, reason: str,
               study_instance_uid: str | None = None) -> Outcome:
        """Answer 0xA700 (no room, a failed write) and audit it; the sender still holds the data."""
        valid_sop = sop_instance_uid if uid_problem(sop_instance_uid) is None else None
        audit.record_or_log(self.engine, AuditKind.STORE_REFUSED, association_id=association_id,
                            study_instance_uid=study_instance_uid, sop_instance_uid=valid_sop,
                            status=int(StoreStatus.OUT_OF_RESOURCES), detail={"reason": reason})
        log.warning("instance refused", status="0xA700", reason=reason, sop_instance_uid=valid_sop)
        return Outcome(StoreStatus.OUT_OF_RESOURCES, OutcomeKind.REFUSED, reason)

    def refuse_invalid(self, association_id: int | None, reason: str) -> Outcome:
        """Audit a C-STORE request answered 0xC000 before any data set (there are no bytes to keep)."""
        audit.record_or_log(self.engine, AuditKind.INSTANCE_QUARANTINED, association_id=association_id,
                            status=int(StoreStatus.CANNOT_PARSE), detail={"reason": reason, "not_kept": "no bytes"})
        log.warning("invalid C-STORE request", status="0xC000", reason=reason)
        return Outcome(StoreStatus.CANNOT_PARSE, OutcomeKind.QUARANTINED, reason)

    def _defer_audit(self, row: dict[str, Any]) -> None:
        """Hold an audit row the database refused until a commit succeeds again (the note beside a kept file and
        the error log carry it meanwhile)."""
        row["detail"] = {**row["detail"], "happened_at": datetime.now(UTC).isoformat()}
        with self._lock:
            if len(self._unaudited) < _UNAUDITED_MAX:
                self._unaudited.append(row)
                return
        log.error("audit rows held for the database are full, one dropped", kind=str(row["kind"]))

    def _write_unaudited(self) -> None:
        """Write the audit rows held while the database failed (after a commit of ours succeeded)."""
        with self._lock:
            rows, self._unaudited = self._unaudited, []
        written = audit.write_or_log(self.engine, f"{len(rows)} held audit rows",
                                     lambda conn: [audit.record(conn, **row) for row in rows])
        if written is None:
            with self._lock:
                self._unaudited[:0] = rows[:_UNAUDITED_MAX]

    def _db_failure(self, item: Received, exc: Exception, placed: Path | None = None) -> Outcome:
        """Answer 0xA700 for a row the database did not commit. ``placed``: the file this C-STORE put into the store
        ahead of its row (a failed group commit), kept aside now and audited."""
        self._ahead = False
        reason = f"database error: {type(exc).__name__}"
        log.error("database unavailable, instance refused", status="0xA700", error=type(exc).__name__,
                  sop_instance_uid=item.sop_instance_uid)
        if placed is not None:
            return self.quarantine(replace(item, path=placed), Refused(StoreStatus.OUT_OF_RESOURCES, reason))
        # A file the row-first path put into place before a failed commit stays under its content-derived name:
        # a resend indexes it, and reconciliation (at start, `ctnode store check`) moves it aside if none comes.
        self.store.discard(item.path)
        return Outcome(StoreStatus.OUT_OF_RESOURCES, OutcomeKind.REFUSED, reason)
