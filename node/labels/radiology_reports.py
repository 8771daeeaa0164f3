"""Radiology reports as records: match one to its study, keep it with its labels, audit it; read them back.

Matching (the same for HL7 and DICOM reports), in this order:

1. A Study Instance UID the report carries names the study with that ``study_instance_uid``.
2. Otherwise the accession-number candidates, in the order the caller gives them (for HL7: OBR-3 filler
   order number, OBR-18 placer field 1, OBR-2 placer order number, ORC-3, ORC-2), are looked up among the
   identifier values the receiver kept per study (``patient_identifier``); the first candidate that matches
   anything decides. With a UID that matched, only the first accession candidate is checked: when it
   names another study, the report is refused.

One study: recorded. None, or several (an accession two studies share, or an identifier value that is
another patient's ID: the table keeps values, not which attribute they came from), or a UID and an
accession that name different studies: refused, audited, and the report is still kept (``study_id`` None,
not current) so that nothing that arrived is lost.

A newer report of a study supersedes the older (``current``), except that a preliminary (result status P)
never supersedes a final (F) or corrected (C) report: a late preliminary is kept but not current.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from pydicom import Dataset
from sqlalchemy import Connection, Engine, func, insert, select, update

from detector.labels.tid1500 import is_measurement_report
from node.config import DEFAULT_UID_ROOT
from node.db import audit, identifiers
from node.db.schema import PatientIdentifier, ReportLabel, Study, StudyReport
from node.events import AuditKind, ReportLabelValue, ReportSource
from node.labels.extract import study_labels as extract_labels
from node.logging import identifier_terms

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
TEXT_SR_CLASSES = frozenset({BASIC_TEXT_SR, ENHANCED_SR})
FINAL_STATUSES = frozenset({"F", "C"})
PRELIMINARY = "P"


@dataclass(frozen=True)
class IncomingReport:
    """A report as it arrived, before it is matched: its text and what may name its study."""

    text: str
    source: ReportSource
    study_instance_uids: Sequence[str] = ()
    accession_numbers: Sequence[str] = ()  # in order of preference
    control_id: str | None = None  # MSH-10 of an HL7 message
    sop_instance_uid: str | None = None  # of a DICOM report
    result_status: str | None = None  # OBR-25, or an SR's completion flag as F/P
    path: str | None = None  # where the bytes as received are kept
    identifiers: Sequence[str] = field(default=())  # patient identifiers it carries, kept for the scrubber


@dataclass(frozen=True)
class Recorded:
    """What became of one report: its row, its study (None when refused) and its labels, or the refusal."""

    report_id: int
    study_id: int | None
    study_instance_uid: str | None
    labels: dict[str, str]
    current: bool
    refused: str | None = None  # why no study was matched


@contextmanager
def _transaction(target: Engine | Connection) -> Iterator[Connection]:
    if isinstance(target, Engine):
        with target.begin() as conn:
            yield conn
    else:
        yield target


def _studies_with(conn: Connection, value: str) -> list[int]:
    return sorted(conn.execute(select(PatientIdentifier.study_id).distinct()
                               .where(PatientIdentifier.value == value)).scalars())


def _match(conn: Connection, report: IncomingReport) -> tuple[int | None, str | None, str | None]:
    """(study id, study uid, refusal reason): one of the two first, or the reason alone."""
    by_uid: list[tuple[int, str]] = []
    uids = [u.strip() for u in report.study_instance_uids if u and u.strip()]
    if uids:
        by_uid = [(r.id, r.study_instance_uid) for r in
                  conn.execute(select(Study.id, Study.study_instance_uid).where(Study.study_instance_uid.in_(uids)))]
        if len(by_uid) > 1:
            return None, None, f"its Study Instance UIDs name {len(by_uid)} studies"
    candidates = [c.strip() for c in report.accession_numbers if identifier_terms((c or "").strip())]
    # blank and too-short values are never kept by the receiver either
    if by_uid:
        study_id, uid = by_uid[0]
        primary = _studies_with(conn, candidates[0]) if candidates else []
        if primary and study_id not in primary:
            return None, None, "its Study Instance UID and its accession number name different studies"
        return study_id, uid, None
    by_accession: list[int] = []
    for candidate in candidates:
        by_accession = _studies_with(conn, candidate)
        if by_accession:
            break
    if len(by_accession) > 1:
        return None, None, f"its accession number matches {len(by_accession)} studies"
    if not by_accession:
        named = "Study Instance UID or accession number" if uids else "accession number"
        return None, None, f"no study with its {named}"
    uid = conn.execute(select(Study.study_instance_uid).where(Study.id == by_accession[0])).scalar_one()
    return by_accession[0], uid, None


def record_report(target: Engine | Connection, report: IncomingReport) -> Recorded:
    """Match ``report`` to its study, store it with its labels and audit it (REPORT_RECORDED), or store it
    unmatched and audit REPORT_REFUSED with the reason. In one transaction (the caller's, given a Connection).
    Raises what the database raises."""
    with _transaction(target) as conn:
        study_id, study_uid, refused = _match(conn, report)
        row = {"source": str(report.source), "control_id": (report.control_id or None) and report.control_id[:64],
               "sop_instance_uid": report.sop_instance_uid, "result_status": report.result_status or None,
               "text": report.text, "path": report.path}
        if refused is not None:
            report_id = conn.execute(insert(StudyReport).values(
                **row, study_id=None, study_instance_uid=None, current=False).returning(StudyReport.id)).scalar_one()
            audit.record(conn, AuditKind.REPORT_REFUSED, path=report.path,
                         detail={"report_id": report_id, "source": str(report.source), "reason": refused,
                                 "control_id": report.control_id, "sop_instance_uid": report.sop_instance_uid})
            return Recorded(report_id, None, None, {}, False, refused)
        assert study_id is not None
        current = not (report.result_status == PRELIMINARY and conn.execute(
            select(func.count()).select_from(StudyReport).where(
                StudyReport.study_id == study_id, StudyReport.current.is_(True),
                StudyReport.result_status.in_(FINAL_STATUSES))).scalar_one())
        superseded: list[int] = []
        if current:
            superseded = list(conn.execute(
                update(StudyReport).where(StudyReport.study_id == study_id, StudyReport.current.is_(True))
                .values(current=False).returning(StudyReport.id)).scalars())
        report_id = conn.execute(insert(StudyReport).values(
            **row, study_id=study_id, study_instance_uid=study_uid, current=current)
            .returning(StudyReport.id)).scalar_one()
        labels = extract_labels(report.text)
        for label in labels.values():
            sentence = label.evidence.sentence
            conn.execute(insert(ReportLabel).values(
                report_id=report_id, finding_type=label.finding_type, value=str(label.value),
                span_start=sentence.start, span_end=sentence.end, evidence=sentence.text, rule=label.evidence.rule))
        identifiers.record(conn, study_id, report.identifiers)
        values = {ft: str(label.value) for ft, label in labels.items()}
        audit.record(conn, AuditKind.REPORT_RECORDED, study_instance_uid=study_uid, path=report.path,
                     sop_instance_uid=report.sop_instance_uid,
                     detail={"report_id": report_id, "source": str(report.source), "control_id": report.control_id,
                             "result_status": report.result_status, "current": current,
                             "superseded": sorted(superseded),
                             "labels": [f"{ft}:{value}" for ft, value in sorted(values.items())]})
        return Recorded(report_id, study_id, study_uid, values, current)


# --- reading ----------------------------------------------------------------------------------------------

def study_labels(engine: Engine, study_id: int) -> dict[str, ReportLabelValue]:
    """What the study's current report says, per finding type it mentions ({} without a current report)."""
    with engine.connect() as conn:
        rows = conn.execute(select(ReportLabel.finding_type, ReportLabel.value).join(
            StudyReport, StudyReport.id == ReportLabel.report_id).where(
            StudyReport.study_id == study_id, StudyReport.current.is_(True))).all()
    return {row.finding_type: ReportLabelValue(row.value) for row in rows}


@dataclass(frozen=True)
class ReportSummary:
    """One stored report as `ctnode reports list` shows it (never its text)."""

    id: int
    study_instance_uid: str | None
    source: str
    control_id: str | None
    sop_instance_uid: str | None
    result_status: str | None
    received_at: datetime
    current: bool
    labels: dict[str, str]


def list_reports(engine: Engine, study_uid: str | None = None, unmatched: bool = False,
                 limit: int = 200) -> list[ReportSummary]:
    """Stored reports, newest first: of one study, or only those that matched no study, or all."""
    query = select(StudyReport).order_by(StudyReport.id.desc()).limit(limit)
    if study_uid is not None:
        query = query.where(StudyReport.study_instance_uid == study_uid)
    if unmatched:
        query = query.where(StudyReport.study_id.is_(None))
    with engine.connect() as conn:
        reports = conn.execute(query).all()
        labels: dict[int, dict[str, str]] = {}
        ids = [r.id for r in reports]
        if ids:
            for row in conn.execute(select(ReportLabel.report_id, ReportLabel.finding_type, ReportLabel.value)
                                    .where(ReportLabel.report_id.in_(ids))):
                labels.setdefault(row.report_id, {})[row.finding_type] = row.value
    return [ReportSummary(r.id, r.study_instance_uid, r.source, r.control_id, r.sop_instance_uid, r.result_status,
                          r.received_at, r.current, labels.get(r.id, {})) for r in reports]


def get_report(engine: Engine, report_id: int) -> tuple[StudyReport, list[ReportLabel]] | None:
    """One stored report with its labels, or None."""
    with engine.connect() as conn:
        report = conn.execute(select(StudyReport).where(StudyReport.id == report_id)).first()
        if report is None:
            return None
        labels = conn.execute(select(ReportLabel).where(ReportLabel.report_id == report_id)
                              .order_by(ReportLabel.id)).all()
    return report, labels


# --- DICOM text reports -----------------------------------------------------------------------------------

def _texts(items: Sequence[Dataset]) -> Iterator[str]:
    """TEXT items of a content tree in document order (depth first), each led by its concept name."""
    for item in items:
        if item.get("ValueType") == "TEXT" and str(item.get("TextValue", "")).strip():
            name = item.get("ConceptNameCodeSequence")
            meaning = str(name[0].get("CodeMeaning", "")).strip() if name else ""
            text = str(item.TextValue).strip()
            yield f"{meaning}: {text}" if meaning else text
        yield from _texts(item.get("ContentSequence", []))


def sr_result_status(ds: Dataset) -> str:
    """An SR's completion as an HL7 result status: P for a partial document, else F (C is HL7's alone)."""
    return PRELIMINARY if str(ds.get("CompletionFlag", "")).upper() == "PARTIAL" else "F"


def report_text_from_sr(ds: Dataset, uid_root: str = DEFAULT_UID_ROOT) -> str | None:
    """The report text of a Basic Text or Enhanced SR: its TEXT items in document order, each led by its
    concept name ("Findings: ...") and separated by blank lines. None for any other SOP class, a TID 1500
    measurement report (a viewer's review or a CAD result), ctnode's own SRs (SOP Instance UID under
    ``uid_root``) and an SR with no TEXT content."""
    if str(ds.get("SOPClassUID", "")) not in TEXT_SR_CLASSES or is_measurement_report(ds):
        return None
    if str(ds.get("SOPInstanceUID", "")).startswith(uid_root + "."):
        return None
    texts = list(_texts(ds.get("ContentSequence", [])))
    return "\n\n".join(texts) if texts else None
