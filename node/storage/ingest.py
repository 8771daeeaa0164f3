"""The store stage: validate a spooled data set, put it in the store, index it, and say which status to answer."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import UID
from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from node.db import audit
from node.db.upsert import insert_ignore
from node.db.schema import Instance, Series, Study, utcnow
from node.dicom.header import WANTED, scan
from node.dicom.status import StoreStatus
from node.events import AuditKind
from node.logging import get_logger, phi_registry
from node.storage.store import InstanceStore

log = get_logger(__name__)

REQUIRED_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID")
Header = dict[str, str]


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


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance: the status to answer and the audit facts."""

    status: StoreStatus
    kind: str  # stored | duplicate | conflict | quarantined | refused
    reason: str = ""
    instance_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class Refused(Exception):
    """The data set is not acceptable; carries the status to answer."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _text(header: Header, keyword: str, limit: int = 64) -> str | None:
    return header.get(keyword, "")[:limit] or None


def _int(header: Header, keyword: str) -> int | None:
    try:
        return int(header.get(keyword, ""))
    except ValueError:
        return None


def _header_with_pydicom(item: Received) -> Header:
    ds = dcmread(item.path, stop_before_pixels=True, specific_tags=list(WANTED.values()))
    return {kw: str(ds.get(kw)).strip() for kw in WANTED.values() if ds.get(kw) not in (None, "")}


def read_header(item: Received) -> Header:
    """Decode the identifying attributes and check the UIDs; raises Refused with the precise status."""
    try:
        header = scan(item.path, item.transfer_syntax_uid) or _header_with_pydicom(item)
    except Exception as exc:  # any parser failure on untrusted bytes means "cannot understand"
        raise Refused(StoreStatus.CANNOT_PARSE, f"data set cannot be decoded: {type(exc).__name__}") from exc
    phi_registry.remember(*(header.get(k) for k in ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate")))
    for keyword in REQUIRED_UIDS:
        value = header.get(keyword, "")
        if not value:
            raise Refused(StoreStatus.MISSING_UID, f"{keyword} is missing")
        if not UID(value).is_valid:
            raise Refused(StoreStatus.INVALID_UID, f"{keyword} is not a valid UID")
    if header["SOPClassUID"] != item.sop_class_uid:
        raise Refused(StoreStatus.SOP_CLASS_MISMATCH, "SOPClassUID differs from the C-STORE command")
    if header["SOPInstanceUID"] != item.sop_instance_uid:
        raise Refused(StoreStatus.SOP_INSTANCE_MISMATCH, "SOPInstanceUID differs from the C-STORE command")
    return header


# Statements built once: the hot path only binds parameters.
_VERSIONS = select(Instance.id, Instance.sha256).where(Instance.sop_instance_uid == bindparam("sop"))
_INSERT_INSTANCE = insert(Instance).returning(Instance.id)
_BUMP_STUDY = update(Study).where(Study.id == bindparam("study_id")).values(generation=Study.generation + 1)
_SUPERSEDE = update(Instance).where(Instance.sop_instance_uid == bindparam("sop")).values(is_current=False)


class Ingestor:
    """Turns received spool files into stored, indexed instances (thread-safe; one per receiver process)."""

    def __init__(self, store: InstanceStore, engine: Engine) -> None:
        self.store = store
        self.engine = engine
        self._series_ids: dict[str, tuple[int, int]] = {}  # series UID -> (series id, study id)
        self._lock = threading.Lock()

    def ingest(self, item: Received) -> Outcome:
        """Store one instance; never raises. Success only after the file is fsynced and its row committed."""
        try:
            header = read_header(item)
        except Refused as refused:
            return self._quarantine(item, refused)
        if not self.store.has_room():
            self.store.discard(item.path)
            return self._refuse(item, "disk below the free-space watermark", header)
        try:
            return self._index(item, header)
        except IntegrityError:
            # A concurrent association stored the same bytes first: that is a duplicate, answered as such.
            try:
                return self._index(item, header)
            except SQLAlchemyError as exc:
                return self._db_failure(item, exc)
        except SQLAlchemyError as exc:
            return self._db_failure(item, exc)
        except OSError as exc:
            self.store.discard(item.path)
            return self._refuse(item, f"write failed: {exc.strerror}", header)

    def _index(self, item: Received, header: Header) -> Outcome:
        sop = item.sop_instance_uid
        new_series: tuple[str, tuple[int, int]] | None = None
        with self.engine.begin() as conn:
            versions = conn.execute(_VERSIONS, {"sop": sop}).all()
            same = next((v for v in versions if v.sha256 == item.sha256), None)
            if same is not None:
                self.store.discard(item.path)
                return Outcome(StoreStatus.SUCCESS, "duplicate", "identical bytes already stored", same.id)
            series_uid = header["SeriesInstanceUID"]
            ids = self._series_ids.get(series_uid)
            if ids is None:
                ids = self._ensure_series(conn, header)
                new_series = (series_uid, ids)
            series_id, study_id = ids
            relative = self.store.relative_path(header["StudyInstanceUID"], series_uid, sop, item.sha256)
            self.store.commit_file(item.path, relative)
            if versions:
                conn.execute(_SUPERSEDE, {"sop": sop})
                audit.record(conn, AuditKind.INSTANCE_CONFLICT, association_id=item.association_id,
                             study_instance_uid=header["StudyInstanceUID"], sop_instance_uid=sop, path=relative,
                             detail={"sha256": item.sha256, "earlier_sha256": [v.sha256 for v in versions]})
            instance_id = conn.execute(_INSERT_INSTANCE, {
                "series_id": series_id, "association_id": item.association_id, "sop_instance_uid": sop,
                "sop_class_uid": item.sop_class_uid, "transfer_syntax_uid": item.transfer_syntax_uid,
                "instance_number": _int(header, "InstanceNumber"), "sha256": item.sha256, "size_bytes": item.size,
                "path": relative, "received_at": utcnow(), "is_current": True,
            }).scalar_one()
            conn.execute(_BUMP_STUDY, {"study_id": study_id})  # last: the study row is locked until commit
        if new_series is not None:
            with self._lock:
                self._series_ids[new_series[0]] = new_series[1]
        kind = "conflict" if versions else "stored"
        return Outcome(StoreStatus.SUCCESS, kind, instance_id=instance_id, detail={"path": relative})

    def _ensure_series(self, conn: Connection, header: Header) -> tuple[int, int]:
        study_uid = header["StudyInstanceUID"]
        insert_ignore(conn, Study, "study_instance_uid", {
            "study_instance_uid": study_uid, "study_date": _text(header, "StudyDate", 8),
            "study_description": _text(header, "StudyDescription"), "first_received_at": utcnow(),
        })
        study_id = conn.execute(select(Study.id).where(Study.study_instance_uid == study_uid)).scalar_one()
        series_uid = header["SeriesInstanceUID"]
        insert_ignore(conn, Series, "series_instance_uid", {
            "study_id": study_id, "series_instance_uid": series_uid, "modality": _text(header, "Modality", 16),
            "series_number": _int(header, "SeriesNumber"), "series_description": _text(header, "SeriesDescription"),
            "body_part": _text(header, "BodyPartExamined", 16), "first_received_at": utcnow(),
        })
        row = conn.execute(select(Series.id, Series.study_id).where(Series.series_instance_uid == series_uid)).one()
        return row.id, row.study_id

    def _quarantine(self, item: Received, refused: Refused) -> Outcome:
        detail = {"reason": refused.reason, "status": int(refused.status), "sha256": item.sha256,
                  "command_sop_instance_uid": item.sop_instance_uid, "transfer_syntax_uid": item.transfer_syntax_uid}
        kept = self.store.quarantine(item.path, refused.status.name.lower(), detail)
        try:
            with self.engine.begin() as conn:
                audit.record(conn, AuditKind.INSTANCE_QUARANTINED, association_id=item.association_id,
                             sop_instance_uid=_valid_or_none(item.sop_instance_uid), status=int(refused.status),
                             path=str(kept), detail=detail)
        except SQLAlchemyError as exc:
            log.error("audit write failed", kind=str(AuditKind.INSTANCE_QUARANTINED), error=type(exc).__name__)
        log.warning("instance quarantined", status=f"0x{refused.status:04X}", reason=refused.reason,
                    sop_instance_uid=item.sop_instance_uid, path=str(kept))
        return Outcome(refused.status, "quarantined", refused.reason, detail={"path": str(kept)})

    def _refuse(self, item: Received, reason: str, header: Header) -> Outcome:
        try:
            with self.engine.begin() as conn:
                audit.record(conn, AuditKind.STORE_REFUSED, association_id=item.association_id,
                             study_instance_uid=header["StudyInstanceUID"], sop_instance_uid=item.sop_instance_uid,
                             status=int(StoreStatus.OUT_OF_RESOURCES), detail={"reason": reason})
        except SQLAlchemyError as exc:
            log.error("audit write failed", kind=str(AuditKind.STORE_REFUSED), error=type(exc).__name__)
        log.warning("instance refused", status="0xA700", reason=reason, sop_instance_uid=item.sop_instance_uid)
        return Outcome(StoreStatus.OUT_OF_RESOURCES, "refused", reason)

    def _db_failure(self, item: Received, exc: SQLAlchemyError) -> Outcome:
        # The file may already be in the store under its content-derived name; a resend indexes it.
        self.store.discard(item.path)
        log.error("database unavailable, instance refused", status="0xA700", error=type(exc).__name__,
                  sop_instance_uid=item.sop_instance_uid)
        return Outcome(StoreStatus.OUT_OF_RESOURCES, "refused", f"database error: {type(exc).__name__}")


def _valid_or_none(uid: str) -> str | None:
    return uid if uid and UID(uid).is_valid else None
