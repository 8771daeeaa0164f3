"""The feedback stage: every SR the PACS sends is examined once and recorded as what it is.

A reader's TID 1500 review of one of our runs becomes feedback (a verdict per finding, plus the lesions we
missed); a radiology report (Basic Text or Enhanced SR with text) labels its study as an HL7 report does; our
own objects coming back and anything else (a dose report, another vendor's CAD) are stored as usual and only
classified. Each examination is one ``inbound_document`` row, claimed first, so any number
of stages may run against one database and none examines an SR twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from detector.io import read_headers
from detector.labels.lesions import planes_from_headers
from detector.labels.tid1500 import SrGroup, is_measurement_report, measurement_groups, observer
from node.config import Settings
from node.db import audit, identifiers
from node.db.schema import Feedback, FeedbackItem, InboundDocument, Instance, Run, RunOutput, Series, Study, utcnow
from node.events import AuditKind, DocumentKind, FeedbackVerdict, ReportSource, RunStatus
from node.feedback.match import OurFinding, Verdict, match_review
from node.labels.radiology_reports import IncomingReport, record_report, report_text_from_sr, sr_result_status
from node.logging import get_logger
from node.loops import report_failure, where
from node.reports.uids import Part, RunUids, run_key

log = get_logger(__name__)

SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
BATCH = 20


@dataclass(frozen=True)
class Inbound:
    """A stored SR not examined yet."""

    instance_id: int
    sop_instance_uid: str
    path: str
    study_id: int
    study_instance_uid: str


@dataclass(frozen=True)
class Outcome:
    """What an SR turned out to be, and why; ``feedback_id`` when it became feedback."""

    kind: DocumentKind
    reason: str
    feedback_id: int | None = None


class FeedbackStage:
    """Examines the SRs stored since the last round (a batch per round)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.store_dir = settings.storage.store_dir
        self.uid_root = settings.reports.uid_root

    def poll(self) -> list[Outcome]:
        """Examine up to BATCH new SRs; returns what each was."""
        pending = self._pending()
        if pending:
            identifiers.catch_up(self.engine)
        outcomes = []
        for inbound in pending:
            try:
                outcome = self.examine(inbound)
            except SQLAlchemyError:
                raise  # the database is away: the round waits, the SR stays unexamined
            except Exception as exc:  # one SR's unforeseen trouble must not hold back the others
                report_failure(self.engine, f"feedback instance {inbound.instance_id}", exc, 1)
                outcome = self._classify(inbound, Outcome(
                    DocumentKind.REFUSED, f"examination failed: {type(exc).__name__} at {where(exc)}"))
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _pending(self) -> list[Inbound]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Instance.id, Instance.sop_instance_uid, Instance.path, Study.id.label("study_id"),
                       Study.study_instance_uid)
                .join(Series, Instance.series_id == Series.id).join(Study, Series.study_id == Study.id)
                .outerjoin(InboundDocument, InboundDocument.instance_id == Instance.id)
                .where(InboundDocument.id.is_(None), Instance.is_current,
                       Instance.sop_class_uid.startswith(SR_CLASS_PREFIX))
                .order_by(Instance.id).limit(BATCH)).all()
        return [Inbound(r.id, r.sop_instance_uid, r.path, r.study_id, r.study_instance_uid) for r in rows]

    def examine(self, inbound: Inbound) -> Outcome | None:
        """Classify one SR and record what it says; None when another stage examined it first."""
        with self.engine.connect() as conn:
            ours = conn.execute(select(RunOutput.run_id).where(RunOutput.sop_instance_uid == inbound.sop_instance_uid)
                                ).first()
        if ours is not None:
            return self._classify(inbound, Outcome(DocumentKind.OWN, f"an object of our run {ours.run_id}"))
        try:
            ds = pydicom.dcmread(self.store_dir / inbound.path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            return self._refuse(inbound, f"unreadable SR: {type(exc).__name__}: {exc}")
        if not is_measurement_report(ds):
            text = report_text_from_sr(ds, self.uid_root)
            if text is not None:
                return self._report(inbound, ds, text)
            return self._classify(inbound, Outcome(DocumentKind.OTHER, f"neither a review nor a report ({_title(ds)})"))
        who = observer(ds)
        if who.device_only:
            return self._classify(inbound, Outcome(DocumentKind.OTHER,
                                                   f"a measurement report made by a device ({who.device_uid})"))
        groups = measurement_groups(ds)
        if not any(g.regions or g.points_mm for g in groups):
            return self._classify(inbound, Outcome(DocumentKind.OTHER, "a measurement report with no image region"))
        return self._review(inbound, ds, groups)

    def _review(self, inbound: Inbound, ds: Dataset, groups: list[SrGroup]) -> Outcome | None:
        referenced = {r.sop_instance_uid for g in groups for r in g.regions}
        with Session(self.engine) as session:
            runs = session.scalars(select(Run).where(Run.study_id == inbound.study_id,
                                                     Run.status == str(RunStatus.DONE)).order_by(Run.id)).all()
            conn = session.connection()
            if not runs:
                return self._refuse(inbound, "a reader's review of a study no run of ours completed")
            images = dict(conn.execute(
                select(Instance.sop_instance_uid, Series.series_instance_uid).join(Series)
                .where(Series.study_id == inbound.study_id, Instance.is_current,
                       Instance.sop_instance_uid.in_(referenced))).all()) if referenced else {}
            run, why = self._reviewed_run(runs, groups, set(images.values()))
            if run is None:
                return self._refuse(inbound, why)
            paths = conn.execute(select(Instance.path).join(Series).where(
                Series.series_instance_uid == run.series_instance_uid, Instance.is_current)).scalars().all()
        planes = planes_from_headers(read_headers([self.store_dir / p for p in paths]).headers)
        verdicts = match_review(self._findings(run), groups, planes)
        return self._record(inbound, ds, run, why, verdicts)

    def _reviewed_run(self, runs: Sequence[Run], groups: list[SrGroup], series: set[str]) -> tuple[Run | None, str]:
        """The run the reader reviewed: the one whose Tracking UIDs the SR carries (most of them), else the newest
        run that read a series the SR draws on."""
        uids = {g.tracking_uid for g in groups if g.tracking_uid}
        kept = [(len(uids & set().union(*(f.tracking_uids for f in self._findings(run)))), run) for run in runs]
        best = max(kept, key=lambda k: (k[0], k[1].id))
        if best[0]:
            return best[1], f"carries {best[0]} tracking UID(s) of run {best[1].id}"
        reading = [run for run in runs if run.series_instance_uid in series]
        if reading:
            return reading[-1], f"draws on series {reading[-1].series_instance_uid}, which run {reading[-1].id} read"
        return None, "a reader's review that draws on no series a run of ours read"

    def _findings(self, run: Run) -> list[OurFinding]:
        uids = RunUids(self.uid_root, run_key(run.id))
        found = []
        for n, f in enumerate(run.findings or []):
            slices = f["slices"]  # type: ignore[index]
            tracking = {str(uids.instance(Part.FINDING, n))} | {str(uids.region(n, k)) for k in range(len(slices))}
            found.append(OurFinding(frozenset(tracking), {s["sop_instance_uid"]: tuple(s["box_px"]) for s in slices},
                                    tuple(f["centre_mm"]), tuple(f["size_mm"])))  # type: ignore[arg-type,index]
        return found

    def _record(self, inbound: Inbound, ds: Dataset, run: Run, why: str, verdicts: list[Verdict]) -> Outcome | None:
        who = observer(ds)
        counts = {v: sum(1 for x in verdicts if x.verdict is v) for v in FeedbackVerdict}
        try:
            with self.engine.begin() as conn:
                if not self._claim(conn, inbound, Outcome(DocumentKind.READER_REVIEW, f"review of run {run.id}: {why}")):
                    return None
                feedback_id = conn.execute(insert(Feedback).returning(Feedback.id).values(
                    run_id=run.id, study_id=inbound.study_id, study_instance_uid=inbound.study_instance_uid,
                    instance_id=inbound.instance_id, sop_instance_uid=inbound.sop_instance_uid,
                    reader=who.person_name or "", reader_id=who.person_id, content_at=_content_at(ds),
                    received_at=utcnow(), current=True, superseded_by_id=None,
                    **{str(v): n for v, n in counts.items()})).scalar_one()
                if verdicts:
                    conn.execute(insert(FeedbackItem), [_item(feedback_id, v) for v in verdicts])
                superseded = _supersede(conn, run.id, who.person_name or "", who.person_id)
                audit.record(conn, AuditKind.FEEDBACK_RECORDED, study_instance_uid=inbound.study_instance_uid,
                             sop_instance_uid=inbound.sop_instance_uid,
                             detail={"run_id": run.id, "feedback_id": feedback_id, "matched": why,
                                     "superseded": superseded, **{str(v): n for v, n in counts.items()}})
        except IntegrityError:
            return None  # another stage recorded it first
        log.info("reader feedback recorded", run_id=run.id, feedback_id=feedback_id,
                 sop_instance_uid=inbound.sop_instance_uid, **{str(v): n for v, n in counts.items()})
        return Outcome(DocumentKind.READER_REVIEW, why, feedback_id)

    def _report(self, inbound: Inbound, ds: Dataset, text: str) -> Outcome | None:
        """Label the study from a text report, in the transaction that records the SR's examination."""
        report = IncomingReport(text=text, source=ReportSource.DICOM, study_instance_uids=(inbound.study_instance_uid,),
                                accession_numbers=(str(ds.get("AccessionNumber", "") or ""),),
                                sop_instance_uid=inbound.sop_instance_uid, result_status=sr_result_status(ds),
                                path=str(self.store_dir / inbound.path))
        try:
            with self.engine.begin() as conn:
                if not self._claim(conn, inbound, Outcome(DocumentKind.REPORT, "a radiology report")):
                    return None
                recorded = record_report(conn, report)
                if recorded.refused is not None:
                    conn.execute(update(InboundDocument).where(InboundDocument.instance_id == inbound.instance_id)
                                 .values(kind=str(DocumentKind.REFUSED), reason=f"a report: {recorded.refused}"))
        except IntegrityError:
            return None
        if recorded.refused is not None:
            return Outcome(DocumentKind.REFUSED, f"a report: {recorded.refused}")
        labels = ", ".join(f"{k}: {v}" for k, v in sorted(recorded.labels.items())) or "no finding type named"
        log.info("report labelled a study", sop_instance_uid=inbound.sop_instance_uid, report_id=recorded.report_id)
        return Outcome(DocumentKind.REPORT, f"report {recorded.report_id} ({labels})")

    def _refuse(self, inbound: Inbound, reason: str) -> Outcome | None:
        outcome = self._classify(inbound, Outcome(DocumentKind.REFUSED, reason))
        if outcome is not None:
            log.warning("SR not taken as feedback", sop_instance_uid=inbound.sop_instance_uid, reason=reason)
        return outcome

    def _classify(self, inbound: Inbound, outcome: Outcome) -> Outcome | None:
        try:
            with self.engine.begin() as conn:
                if not self._claim(conn, inbound, outcome):
                    return None
                if outcome.kind is DocumentKind.REFUSED:
                    audit.record(conn, AuditKind.FEEDBACK_REFUSED, study_instance_uid=inbound.study_instance_uid,
                                 sop_instance_uid=inbound.sop_instance_uid, detail={"reason": outcome.reason})
        except IntegrityError:
            return None
        return outcome

    @staticmethod
    def _claim(conn: Connection, inbound: Inbound, outcome: Outcome) -> bool:
        """Insert the SR's examination row; False when it exists (another stage got there first)."""
        exists = conn.execute(select(InboundDocument.id).where(InboundDocument.instance_id == inbound.instance_id)
                              ).first()
        if exists is not None:
            return False
        conn.execute(insert(InboundDocument).values(
            instance_id=inbound.instance_id, sop_instance_uid=inbound.sop_instance_uid,
            study_instance_uid=inbound.study_instance_uid, kind=str(outcome.kind), reason=outcome.reason,
            examined_at=utcnow()))
        return True


def _item(feedback_id: int, v: Verdict) -> dict[str, object]:
    return {"feedback_id": feedback_id, "verdict": str(v.verdict), "finding_index": v.finding_index,
            "matched_by": v.matched_by, "label": (v.label or None) and v.label[:64],
            "centre_mm": [round(c, 2) for c in v.centre_mm] if v.centre_mm is not None else None,
            "diameter_mm": round(v.diameter_mm, 2) if v.diameter_mm is not None else None,
            "regions": [{"sop_instance_uid": r.sop_instance_uid, "graphic_type": r.graphic_type,
                         "points": [list(p) for p in r.points]} for r in v.regions]}


def _supersede(conn: Connection, run_id: int, reader: str, reader_id: str | None) -> list[int]:
    """Keep only the reader's newest review of the run current (by content time, then arrival); returns the ids
    made not current now."""
    rows = conn.execute(select(Feedback.id, Feedback.content_at, Feedback.current).where(
        Feedback.run_id == run_id, Feedback.reader == reader,
        Feedback.reader_id.is_(None) if reader_id is None else Feedback.reader_id == reader_id)).all()
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    newest = max(rows, key=lambda r: (r.content_at or oldest, r.id))
    stale = [r.id for r in rows if r.id != newest.id and r.current]
    conn.execute(update(Feedback).where(Feedback.id == newest.id).values(current=True, superseded_by_id=None))
    if stale:
        conn.execute(update(Feedback).where(Feedback.id.in_(stale)).values(current=False, superseded_by_id=newest.id))
    return stale


def _content_at(ds: Dataset) -> datetime | None:
    """The SR's Content Date and Time (as UTC: the SR states no offset we rely on)."""
    date, time = str(ds.get("ContentDate", "") or ""), str(ds.get("ContentTime", "") or "")
    try:
        clock = time.split(".")[0].ljust(6, "0")[:6]
        return datetime.strptime(date + clock, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc) if date else None
    except ValueError:
        return None


def _title(ds: Dataset) -> str:
    names = ds.get("ConceptNameCodeSequence", [])
    return str(names[0].get("CodeMeaning", "no title")) if names else "no document title"

