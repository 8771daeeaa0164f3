"""Every audit event kind and state name of the node, in one place."""

from __future__ import annotations

from enum import StrEnum


class OutputKind(StrEnum):
    """The kinds of object a run emits, as the run_output rows store them."""

    SR = "SR"
    SC = "SC"
    GSPS = "GSPS"
    KOS = "KOS"


class AuditKind(StrEnum):
    """What an audit_event row records."""

    ASSOCIATION_REJECTED = "association.rejected"
    ASSOCIATION_ABORTED = "association.aborted"
    INSTANCE_QUARANTINED = "instance.quarantined"
    INSTANCE_CONFLICT = "instance.conflict"
    STORE_REFUSED = "store.refused"
    SPOOL_RECOVERED = "spool.recovered"
    CONNECTION_REFUSED = "connection.refused"  # dropped before associating: silent, not an A-ASSOCIATE-RQ, too long
    STORE_ORPHAN = "store.orphan"  # a store file no instance row names, moved aside by reconciliation
    STORE_MISSING = "store.missing"  # an instance row whose file is not in the store
    DELIVERY_WARNING = "delivery.warning"
    DELIVERY_DEAD_LETTER = "delivery.dead_letter"
    DELIVERY_REQUEUED = "delivery.requeued"
    RUN_QUEUED = "run.queued"
    RUN_SKIPPED = "run.skipped"
    RUN_UNCHANGED = "run.unchanged"  # a study settled again with exactly the inputs of its last run: no new run
    RUN_RECLAIMED = "run.reclaimed"  # a run whose worker stopped heartbeating was claimed again
    RUN_RELEASED = "run.released"  # a worker shutting down gave its run back to the queue
    RUN_RETRY = "run.retry"
    RUN_FAILED = "run.failed"
    RUN_DONE = "run.done"
    RUN_DEGRADED = "run.degraded"  # the objects leave out what the source images lack (e.g. 3D coordinates)
    RUN_TRUNCATED = "run.truncated"  # more findings passed the operating point than the per-study cap reports
    RUN_REQUEUED = "run.requeued"
    RUN_YIELDED = "run.yielded"  # a shadow run gave its worker up to a live or silent run that fell due; queued again
    LOOP_FAILED = "loop.failed"  # a round of a long-lived loop raised; the loop backed off and went on
    LEASE_LOST = "lease.lost"  # a run's lease could not be renewed in time: its worker stopped writing
    FEEDBACK_RECORDED = "feedback.recorded"  # a reader's SR on one of our runs was matched to its findings
    FEEDBACK_REFUSED = "feedback.refused"  # a reader's SR that names no run of ours, or cannot be read
    REPORT_RECORDED = "report.recorded"  # a radiology report (HL7 or DICOM text) labelled a study
    REPORT_REFUSED = "report.refused"  # a report message that was malformed or matched no study
    DRIFT_ALARM = "drift.alarm"  # a watched input, output or outcome left its control limits
    MODEL_COMPARED = "model.compared"  # a candidate's paired figures against a route's live model were kept
    MODEL_PROMOTED = "model.promoted"  # a route's live model was replaced by a compared candidate (the evidence)
    MODEL_ROLLED_BACK = "model.rolled_back"  # a route's last promotion was undone: its previous live model again
    NOTIFICATION_QUEUED = "notification.queued"  # a run's result is to be told to a channel (original or correction)
    NOTIFICATION_UNCHANGED = "notification.unchanged"  # a later version said what the channel was told: not resent
    NOTIFICATION_ACKNOWLEDGED = "notification.acknowledged"  # the channel acknowledged it (HL7 AA/CA, HTTP 2xx)
    NOTIFICATION_FAILED = "notification.failed"  # one attempt failed (refused, wrong ACK, timeout): retried
    NOTIFICATION_DEAD_LETTER = "notification.dead_letter"  # max attempts failed; `ctnode notifications retry`
    NOTIFICATION_REQUEUED = "notification.requeued"


class AssociationOutcome(StrEnum):
    """How an association ended."""

    OPEN = "open"
    RELEASED = "released"
    ABORTED = "aborted"
    REJECTED = "rejected"


class DeliveryState(StrEnum):
    """Where one (object, destination) row of the outbox stands."""

    PENDING = "pending"  # waiting for its next attempt (first or retry)
    DELIVERED = "delivered"  # the destination answered Success or Warning
    DEAD = "dead"  # max attempts failed; only `ctnode deliveries retry` sends it again


class AttemptOutcome(StrEnum):
    """What one C-STORE attempt of a delivery came to."""

    SUCCESS = "success"
    WARNING = "warning"  # stored by the destination, with a Warning status: delivered, and audited
    FAILURE = "failure"  # a Failure status, no association, or no response: retried


class RunStatus(StrEnum):
    """Where one detection run stands."""

    QUEUED = "queued"  # ready, waiting for a worker (first try or retry)
    RUNNING = "running"  # claimed by a worker under a lease
    DONE = "done"  # findings recorded, reports built and queued for delivery
    FAILED = "failed"  # gave up: bad input, or max attempts; the error says which
    SKIPPED = "skipped"  # no model applies to the study; the trigger says why


class RunMode(StrEnum):
    """What a run's results are for (a route's ``mode``, or one of its ``shadows``)."""

    LIVE = "live"  # delivered to the clinical destinations, as results
    SILENT = "silent"  # runs and records everything; delivered only to the route's review destination, if any
    SHADOW = "shadow"  # a candidate model on the same series after the live run, at lower priority; as silent

    @property
    def clinical(self) -> bool:
        """Whether the run's objects go to the clinical destinations (the PACS)."""
        return self is RunMode.LIVE

    @property
    def notice(self) -> str | None:
        """What a non-clinical run's objects state, in their series descriptions, TID 4019 and overlays."""
        return None if self.clinical else f"{self.value.upper()} - not for clinical use"


class DocumentKind(StrEnum):
    """What an SR the PACS sent us turned out to be (the feedback stage examines each once)."""

    READER_REVIEW = "reader_review"  # a reader's TID 1500 SR on one of our runs: feedback
    REPORT = "report"  # a radiology report (Basic Text or Enhanced SR): study labels
    OWN = "own"  # one of our own objects, sent back to us
    OTHER = "other"  # anything else (a dose report, another vendor's CAD): stored as usual
    REFUSED = "refused"  # looked like feedback or a report but could not be used; the reason says why


class FeedbackVerdict(StrEnum):
    """What a reader's SR says of one finding of ours, or of a lesion we did not report."""

    CONFIRMED = "confirmed"  # kept as we drew it
    REJECTED = "rejected"  # deleted by the reader
    EDITED = "edited"  # kept, with the reader's own geometry
    MISSED = "missed"  # drawn by the reader, matching none of our findings


class ReportLabelValue(StrEnum):
    """What a report says of one finding type."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    UNCERTAIN = "uncertain"


class ReportSource(StrEnum):
    """How a radiology report reached the node."""

    HL7 = "hl7"
    DICOM = "dicom"


class RouteChange(StrEnum):
    """What a route_model row records: a change of a route's live model."""

    PROMOTED = "promoted"  # a candidate became the live model, on the evidence of a comparison
    ROLLED_BACK = "rolled_back"  # the last promotion not yet undone was undone


class ModelRole(StrEnum):
    """What a model is to a route now (`ctnode models list`)."""

    LIVE = "live"  # the route's model: its runs are the route's results (live or silent, as the route's mode)
    SHADOW = "shadow"  # a candidate reading the route's series after it, never delivered clinically
    RETIRED = "retired"  # was the route's live model, replaced by a promotion (or a rolled-back candidate)
