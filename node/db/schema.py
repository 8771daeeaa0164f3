"""The audit database schema; the only module that defines tables."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp; SQLite, which stores none, reads back as UTC like PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


UID = String(64)
AE = String(16)
SHA256 = String(64)
IDENTIFIER_CHARS = 512  # longer values are kept to this prefix (a unique index bounds them)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Association(Base):
    """One DICOM association (accepted or rejected) and what it carried."""

    __tablename__ = "association"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae: Mapped[str] = mapped_column(AE)
    called_ae: Mapped[str] = mapped_column(AE)
    peer_host: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str] = mapped_column(String(16))
    reject_reason: Mapped[str | None] = mapped_column(Text)
    instances_stored: Mapped[int] = mapped_column(Integer, default=0)
    instances_duplicate: Mapped[int] = mapped_column(Integer, default=0)
    instances_failed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_stored: Mapped[int] = mapped_column(BigInteger, default=0)


class Study(Base):
    """A study the node has received instances of."""

    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # bumped by every newly stored instance; the pipeline settles a study by copying the value it acted on
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    settled_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.series_number")


class PatientIdentifier(Base):
    """A patient identifier value (name, ID, birth date, accession number) seen in a study.

    Kept only so that every process's log scrubber knows what to hide; never logged, never exported.
    """

    __tablename__ = "patient_identifier"
    __table_args__ = (UniqueConstraint("study_id", "value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    value: Mapped[str] = mapped_column(String(IDENTIFIER_CHARS))


class Series(Base):
    """A series within a study."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    body_part: Mapped[str | None] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One stored version of a SOP instance. A resend with other bytes adds a version; the newest is current."""

    __tablename__ = "instance"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("association.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(SHA256)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)  # relative to the store directory
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)

    series: Mapped[Series] = relationship(back_populates="instances")


class AuditEvent(Base):
    """Something an auditor must be able to find: rejections, quarantines, conflicts, refusals."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_kind_at", "kind", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    association_id: Mapped[int | None] = mapped_column(ForeignKey("association.id"), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    status: Mapped[int | None] = mapped_column(Integer)  # the DICOM status we answered, when there was one
    path: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)


class Delivery(Base):
    """The outbox: one object we produced, to be sent to one destination, and where that stands."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "destination"),
        Index("ix_delivery_destination_state_due", "destination", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(Integer, index=True)
    destination: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)  # absolute path of the Part 10 file
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # since it was (re)queued
    last_status: Mapped[int | None] = mapped_column(Integer)  # the last C-STORE response status, when one came
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claim_token: Mapped[str | None] = mapped_column(String(32))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    attempt_log: Mapped[list[DeliveryAttempt]] = relationship(order_by="DeliveryAttempt.id")


class DeliveryAttempt(Base):
    """One try at sending a delivery's object: when, what the destination answered, what went wrong."""

    __tablename__ = "delivery_attempt"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("delivery.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16))
    status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class Run(Base):
    """One detection run: a version of a study read by one model, its queue state and its whole audit trail."""

    __tablename__ = "run"
    __table_args__ = (
        UniqueConstraint("study_id", "model", "version"),
        Index("ix_run_status_not_before", "status", "not_before"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    model: Mapped[str] = mapped_column(String(256))  # as routed: a shipped model name or a card path
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per study and model
    predecessor_id: Mapped[int | None] = mapped_column(ForeignKey("run.id"))
    status: Mapped[str] = mapped_column(String(16))
    # what the results are for (events.RunMode): live ones are delivered clinically, silent and shadow ones never
    mode: Mapped[str] = mapped_column(String(8), default="live", server_default="live")
    trigger: Mapped[str] = mapped_column(Text)  # why the study was ready (or why it was skipped)
    routing: Mapped[list[str]] = mapped_column(JSON, default=list)  # which series the route matched, and why
    # the queue: attempts so far, not retried before not_before, held by claim_token until lease_until
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claim_token: Mapped[str | None] = mapped_column(String(32))
    worker: Mapped[str | None] = mapped_column(String(128))  # host:pid of the last claimer
    error: Mapped[str | None] = mapped_column(Text)
    # what it read and what it used
    input_digest: Mapped[str] = mapped_column(SHA256)  # sha256 over the sorted (SOP Instance UID, sha256) inputs
    instance_count: Mapped[int] = mapped_column(Integer)
    series_instance_uid: Mapped[str | None] = mapped_column(UID)  # the series the detector chose
    selection: Mapped[list[str]] = mapped_column(JSON, default=list)  # the detector's selection reasons
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(32))
    weights_sha256: Mapped[str | None] = mapped_column(SHA256)
    findings: Mapped[list[dict[str, object]]] = mapped_column(JSON, default=list)
    # what the read series was (scanner model, kernel, slice thickness, contrast, HU histogram of the body), for drift
    input_facts: Mapped[dict[str, object]] = mapped_column(JSON, default=dict, server_default="{}")
    # the study context from the read series' headers (detector.io.context): age, sex, the referral. The referral is
    # free text that may name the patient: shown to operators (``ctnode runs show``), never logged
    context: Mapped[dict[str, object]] = mapped_column(JSON, default=dict, server_default="{}")
    # the study-level triage decision (detector.triage.Decision) and why; None until the run ends
    decision: Mapped[str | None] = mapped_column(String(24))
    decision_reason: Mapped[str | None] = mapped_column(Text)
    # per-stage timestamps
    first_instance_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_instance_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ready_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    inference_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    inference_ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reports_built_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    inputs: Mapped[list[RunInput]] = relationship(order_by="RunInput.instance_id")
    outputs: Mapped[list[RunOutput]] = relationship(order_by="RunOutput.id")


class Notification(Base):
    """The notification outbox: one run's study-level result, to be told to one channel (a RIS over HL7, a FHIR
    server, a webhook), exactly once per run (a study version), and where that stands.

    ``revision``: original, correction (a later version changed the result told before) or withdrawal (a later
    version no longer stands by it); ``replaces_id`` the notification it corrects. ``payload`` holds no patient
    identifier: the sender reads those from the run's images when the channel carries them.
    """

    __tablename__ = "notification"
    __table_args__ = (
        UniqueConstraint("run_id", "channel"),
        Index("ix_notification_channel_state_due", "channel", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id"), index=True)
    channel: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # hl7, fhir, webhook
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    decision: Mapped[str] = mapped_column(String(24))
    revision: Mapped[str] = mapped_column(String(16))
    replaces_id: Mapped[int | None] = mapped_column(ForeignKey("notification.id"))
    payload: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16))  # events.DeliveryState: pending, delivered (acknowledged), dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    acknowledgement: Mapped[dict[str, object] | None] = mapped_column(JSON)  # what the destination answered
    last_image_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # the study's last image, for the timing
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claim_token: Mapped[str | None] = mapped_column(String(32))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    attempt_log: Mapped[list[NotificationAttempt]] = relationship(order_by="NotificationAttempt.id")

    @property
    def notify_s(self) -> float | None:
        """Seconds from the study's last image to the channel's acknowledgement (None until acknowledged)."""
        if self.acknowledged_at is None or self.last_image_at is None:
            return None
        return round((self.acknowledged_at - self.last_image_at).total_seconds(), 3)


class NotificationAttempt(Base):
    """One try at telling a channel: when, what came back (or did not), and why it failed."""

    __tablename__ = "notification_attempt"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notification.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    response: Mapped[str | None] = mapped_column(Text)  # the reply, abridged (an ACK, an HTTP status line)


class RunInput(Base):
    """An instance a run read (its digest is the instance row's sha256)."""

    __tablename__ = "run_input"

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id"), primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id"), primary_key=True, index=True)

    instance: Mapped[Instance] = relationship()


class RunOutput(Base):
    """A DICOM object a run produced (SR, SC, GSPS, KOS) and where its file is."""

    __tablename__ = "run_output"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)  # absolute path of the Part 10 file
    sha256: Mapped[str] = mapped_column(SHA256)


class InboundDocument(Base):
    """An SR the PACS sent us, as the feedback stage classified it (each examined once): a reader's review of
    one of our runs, a radiology report, one of our own objects coming back, or anything else (stored as usual)."""

    __tablename__ = "inbound_document"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id"), unique=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    examined_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Feedback(Base):
    """A reader's verdict on one run's findings, read from the TID 1500 SR their viewer saved into the PACS.

    The reader's name and ID come from the SR's observer context: a patient-safety record, kept here and
    never logged. A later SR of the same reader on the same run supersedes the earlier one (``current``).
    """

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instance.id"), unique=True)  # the SR as stored
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    reader: Mapped[str] = mapped_column(String(256))  # Person Observer Name (PN), "" when the SR names none
    reader_id: Mapped[str | None] = mapped_column(String(64))  # Person Identification Code, when given
    content_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # the SR's Content Date/Time
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    current: Mapped[bool] = mapped_column(Boolean, default=True)
    superseded_by_id: Mapped[int | None] = mapped_column(ForeignKey("feedback.id"))
    confirmed: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    edited: Mapped[int] = mapped_column(Integer, default=0)
    missed: Mapped[int] = mapped_column(Integer, default=0)

    items: Mapped[list[FeedbackItem]] = relationship(order_by="FeedbackItem.id")


class FeedbackItem(Base):
    """One verdict of a feedback: on one of the run's findings (confirmed, rejected, edited), or a lesion the
    reader drew that the run missed."""

    __tablename__ = "feedback_item"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feedback_id: Mapped[int] = mapped_column(ForeignKey("feedback.id"), index=True)
    verdict: Mapped[str] = mapped_column(String(16))
    finding_index: Mapped[int | None] = mapped_column(Integer)  # into run.findings; None for a missed lesion
    matched_by: Mapped[str | None] = mapped_column(String(16))  # "tracking uid" or "geometry"
    label: Mapped[str | None] = mapped_column(String(64))  # the reader's finding type (code meaning)
    centre_mm: Mapped[list[float] | None] = mapped_column(JSON)  # the reader's lesion, LPS mm
    diameter_mm: Mapped[float | None] = mapped_column(Float)
    regions: Mapped[list[dict[str, object]]] = mapped_column(JSON, default=list)  # the reader's 2D regions


class StudyReport(Base):
    """A radiology report of a study (HL7 ORU from the RIS, or a text SR from the PACS), as received.

    The text is a clinical record: kept, never logged. A newer report of the same study supersedes the older.
    """

    __tablename__ = "study_report"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("study.id"), index=True)  # None: matched no study
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    source: Mapped[str] = mapped_column(String(8))  # "hl7" or "dicom"
    control_id: Mapped[str | None] = mapped_column(String(64))  # MSH-10 of an HL7 message
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)  # of a DICOM report
    result_status: Mapped[str | None] = mapped_column(String(4))  # OBR-25 / SR completion: F, P, C ...
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    text: Mapped[str] = mapped_column(Text)
    path: Mapped[str | None] = mapped_column(Text)  # the message's bytes on disk
    current: Mapped[bool] = mapped_column(Boolean, default=True)

    labels: Mapped[list[ReportLabel]] = relationship(order_by="ReportLabel.id")


class ReportLabel(Base):
    """What a report says of one finding type (positive, negative, uncertain), with the text span it came from."""

    __tablename__ = "report_label"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("study_report.id"), index=True)
    finding_type: Mapped[str] = mapped_column(String(32))
    value: Mapped[str] = mapped_column(String(12))
    span_start: Mapped[int] = mapped_column(Integer)
    span_end: Mapped[int] = mapped_column(Integer)
    evidence: Mapped[str] = mapped_column(Text)  # the sentence, as written
    rule: Mapped[str] = mapped_column(String(64))


class ModelComparison(Base):
    """A candidate model against a route's live model on the studies both read: agreement, the paired differences
    with their bootstrap CIs (``figures``), time per study; the report (JSON, FROC plot) is under ``report_path``.
    Promotion names the comparison it rests on."""

    __tablename__ = "model_comparison"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    route: Mapped[str] = mapped_column(String(64), index=True)
    live_model: Mapped[str] = mapped_column(String(256))  # as the routes name it: a shipped name or a card path
    live_name: Mapped[str] = mapped_column(String(64))
    live_version: Mapped[str] = mapped_column(String(32))
    live_weights_sha256: Mapped[str] = mapped_column(SHA256)
    candidate_model: Mapped[str] = mapped_column(String(256))
    candidate_name: Mapped[str] = mapped_column(String(64))
    candidate_version: Mapped[str] = mapped_column(String(32))
    candidate_weights_sha256: Mapped[str] = mapped_column(SHA256)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    studies: Mapped[int] = mapped_column(Integer)  # studies both read
    figures: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    report_path: Mapped[str | None] = mapped_column(Text)


class RouteModel(Base):
    """One change of a route's live model (append-only): a promotion, or a rollback of the last promotion not yet
    undone. With no row a route runs its configured model; otherwise the promotions left after the rollbacks say
    which model is live. Who, when, why and on which comparison are kept with what was replaced."""

    __tablename__ = "route_model"
    __table_args__ = (UniqueConstraint("route", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    route: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per route: two changes made at once cannot both be n
    change: Mapped[str] = mapped_column(String(16))  # events.RouteChange
    model: Mapped[str] = mapped_column(String(256))  # the live model from this change on
    replaced: Mapped[str] = mapped_column(String(256))  # the live model before it
    comparison_id: Mapped[int | None] = mapped_column(ForeignKey("model_comparison.id"))
    undoes_id: Mapped[int | None] = mapped_column(ForeignKey("route_model.id"))  # a rollback: the promotion undone
    by: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")
