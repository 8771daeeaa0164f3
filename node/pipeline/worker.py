"""A detection worker: claim a run, read its series, detect, build the reports, queue their delivery.

Stages, in order, each timestamped on the run: claimed, inference started, inference ended (findings,
selection and model identity recorded), reports built (outputs recorded), done (deliveries queued).
A live run's objects go to the clinical destinations; a silent or shadow run's only to its route's
review destination, if it has one, marked as not for clinical use. A shadow run makes way for any
live or silent run that falls due while it runs: it goes back to the queue (audited) between two
slice batches, and is run again once no live or silent run is due.
A heartbeat thread renews the lease while the stages run; a worker that loses its claim stops
writing. UIDs derive from the run id, so a reclaimed run rebuilds byte-identical objects and the
outbox (unique per object and destination) never sends one twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from node.config import Route, Settings
from node.db import identifiers
from node.db.audit import record
from node.db.schema import Instance, Run, RunInput, RunOutput, utcnow
from node.db.upsert import insert_ignore
from node.delivery import enqueue
from node.delivery.destinations import destinations_for_study
from node.events import AuditKind, OutputKind, RunMode, RunStatus
from node.logging import get_logger
from node.loops import Progress, report_failure, run_guarded
from node.notify.outbox import channels_for, enqueue_run
from node.pipeline.assignment import current_routes
from node.pipeline.queue import (
    ClaimedRun,
    claim_run,
    clinical_run_due,
    fail_run,
    finish_run,
    heartbeat,
    release_run,
    skip_run,
    update_run,
    worker_name,
)
from node.reports import EarlierReport, ReportRun, report_stage
from node.reports.from_detection import options_for, report_run
from node.reports.uids import run_key

if TYPE_CHECKING:
    from detector.findings import Finding
    from detector.infer import LoadedModel
    from detector.registry import ModelCard
    from node.storage.objects import OutputObject

log = get_logger(__name__)

class ClaimLost(Exception):
    """Another worker holds the run now (this one's lease expired); stop without writing."""


class ModelUnavailable(Exception):
    """A routed model's card or weights do not load; the message says which and why."""


class ShadowYielded(Exception):
    """A live or silent run fell due while this shadow run held the worker: give the shadow run back."""


YIELD_CHECK_S = 0.25
"""How often (at most) a shadow run asks whether a live or silent run is due, between slice batches."""

SHADOW_BATCH_SLICES = 2
"""Slices per batch of a shadow run at most: the longest a live run that falls due waits is one such batch."""


def review_destination(routes: list[Route], model: str, mode: RunMode) -> str | None:
    """Where a silent or shadow run of ``model`` may send its objects under ``routes`` as they are now: the
    review destination of the first route that runs ``model`` in that mode (None: nowhere)."""
    for route in routes:
        runs_it = model in route.shadows if mode is RunMode.SHADOW else (route.model == model
                                                                          and route.run_mode is mode)
        if runs_it:
            return route.review_destination
    return None


class WorkerShutdown(BaseException):
    """Raised in the worker's main thread by its SIGTERM handler while a run is in progress.

    A BaseException, so that no stage's error handling mistakes it for a failure of the run.
    """


class Heartbeat:
    """Renews a claimed run's lease every ``heartbeat_s`` until stopped; remembers a lost claim.

    A renewal that fails (the database is away) is retried at the next beat; once the last renewal is so
    old that the lease may run out before the next beat, the claim counts as lost, so that this worker
    stops writing before another one can reclaim the run.
    """

    def __init__(self, engine: Engine, run: ClaimedRun, settings: Settings, progress: Progress | None = None) -> None:
        self._engine, self._run, self._config = engine, run, settings.pipeline
        self._progress = progress
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run.id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _beat(self) -> None:
        renewed = time.monotonic()
        failures = 0
        while not self._stop.wait(self._config.heartbeat_s):
            try:
                held = heartbeat(self._engine, self._run, self._config.lease_s)
            except Exception as exc:
                failures += 1
                report_failure(None, f"heartbeat-{self._run.id}", exc, failures)
                if time.monotonic() - renewed + self._config.heartbeat_s < self._config.lease_s:
                    continue
                held = False  # the lease may end before the next beat: another worker may take the run
            else:
                renewed, failures = time.monotonic(), 0
                if self._progress is not None:
                    self._progress.beat()
            if not held:
                self.lost = True
                log.warning("run claim lost", run_id=self._run.id, renewal_failures=failures)
                self._audit_lost(failures)
                return

    def _audit_lost(self, failures: int) -> None:
        try:
            with self._engine.begin() as conn:
                record(conn, AuditKind.LEASE_LOST, study_instance_uid=self._run.study_instance_uid,
                       detail={"run_id": self._run.id, "worker": worker_name(), "renewal_failures": failures})
        except SQLAlchemyError as exc:
            log.warning("lost claim not audited", run_id=self._run.id, error=type(exc).__name__)


class Worker:
    """Runs queued runs one at a time until ``stop`` is set; models are loaded once and kept."""

    def __init__(self, engine: Engine, settings: Settings, stop: threading.Event,
                 progress: Progress | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.stop = stop
        self.progress = progress
        self.name = worker_name()
        self.busy = False  # a run is in progress (a shutdown must interrupt it, not wait for it)
        self._models: dict[str, LoadedModel] = {}
        self._last_yield_check = float("-inf")

    def run_forever(self) -> None:
        """Load the routed models (so the first study does not wait for them), then work the queue."""

        routes = current_routes(self.engine, self.settings.pipeline.routes)  # live models first, then the shadows
        for model in dict.fromkeys([*(route.model for route in routes), *(m for r in routes for m in r.shadows)]):
            try:
                self._model(model)
            except ModelUnavailable as exc:  # its runs will fail with this error, audited
                log.error("model cannot be loaded", model=model, error=str(exc))
        log.info("worker running", worker=self.name, models=sorted(self._models))
        run_guarded("worker", self.run_once, self.stop, self.settings.pipeline.poll_interval_s, self.progress,
                    self.engine)

    def run_once(self) -> bool:
        """Claim and process one run; False when none was due."""
        identifiers.catch_up(self.engine)  # before the claim: a run's identifiers were recorded before it existed
        run = claim_run(self.engine, self.settings.pipeline, self.name)
        if run is None:
            return False
        self.process(run)
        return True

    def process(self, run: ClaimedRun) -> RunStatus | None:
        """All stages of one claimed run; returns where it ended (None when the claim was lost)."""
        from detector.infer import InferenceCancelled, OutOfDomainError
        from detector.io import SeriesInputError
        from detector.registry import ModelCardError

        try:
            self.busy = True
            try:
                with Heartbeat(self.engine, run, self.settings, self.progress) as beat:
                    self._stages(run, beat)
            except InferenceCancelled as exc:
                raise ShadowYielded(run.id) from exc
        except WorkerShutdown:
            release_run(self.engine, run)
            log.info("run given back to the queue: worker shutting down", run_id=run.id)
            raise
        except ClaimLost:
            log.warning("run abandoned: another worker holds it", run_id=run.id)
            return None
        except ShadowYielded:
            release_run(self.engine, run, AuditKind.RUN_YIELDED)
            log.info("shadow run gave way to a live or silent run", run_id=run.id, model=run.model)
            return RunStatus.QUEUED
        except OutOfDomainError as exc:
            reason = f"refused by the model's domain gate: {exc}"
            self._not_analysed(run, reason, exc.headers)
            return skip_run(self.engine, run, reason)
        except ModelUnavailable as exc:  # the operator may fix the model: retried, then failed with the reason
            return self._fail(run, str(exc), True)
        except (SeriesInputError, ModelCardError, LookupError) as exc:
            return self._fail(run, f"{type(exc).__name__}: {exc}", False)
        except Exception as exc:  # anything else may be passing (memory, a file system hiccup): retried
            log.exception("run attempt crashed", run_id=run.id)
            return self._fail(run, f"{type(exc).__name__}: {exc}", True)
        finally:
            self.busy = False
        return RunStatus.DONE

    def _fail(self, run: ClaimedRun, error: str, retryable: bool) -> RunStatus:
        """A failed attempt: retried while attempts remain; a run that fails for good is "not analysed"."""
        if not (retryable and run.attempts < self.settings.pipeline.max_attempts):
            self._not_analysed(run, f"the analysis failed: {error}")
        return fail_run(self.engine, run, error, retryable, self.settings.pipeline)

    def _not_analysed(self, run: ClaimedRun, reason: str, headers: Sequence[pydicom.Dataset] = ()) -> None:
        """Record that the study was not analysed, and why; tell the route's channels; and send the SR and SC page
        that say so into the study (before the run ends, so that a worker dying here leaves a run whose next
        attempt does it all again: the outboxes are idempotent). ``headers``: the series the detector read and
        refused, when it read one."""
        from detector.triage import not_analysed

        decision = not_analysed(reason)
        try:
            if not update_run(self.engine, run, decision=str(decision.decision), decision_reason=decision.reason):
                return
            self._notify(run)
            self._send_not_analysed(run, reason, headers)
        except Exception as exc:  # the run still ends skipped or failed; the audit says what was not sent
            log.error("not-analysed result not completed", run_id=run.id, error=type(exc).__name__)
            report_failure(self.engine, f"not-analysed-{run.id}", exc, 1)

    def _send_not_analysed(self, run: ClaimedRun, reason: str, headers: Sequence[pydicom.Dataset]) -> None:
        """Build the not-analysed SR and SC page over the series the detector refused (``headers``; else, when the
        detector read none, the run's largest input series, its headers read from the store) and queue them where
        the run's objects go; nothing when the model's card cannot be read (its identity would be unknown)."""
        from node.reports import build_not_analysed_objects, write_report_objects
        from node.reports.from_detection import algorithm_of

        model = self._models.get(run.model)
        if model is None:
            log.warning("no not-analysed objects: the model is not loaded", run_id=run.id, model=run.model)
            return
        sources = list(headers) or self._largest_input_series(run)
        if not sources:
            return
        report_run = ReportRun(run_key(run.id), sources, (), algorithm_of(model.card), created=self._ready_at(run),
                               notice=run.mode.notice)
        objects = build_not_analysed_objects(report_run, self.settings.reports, reason)
        written = write_report_objects(objects, self._outputs_dir(run))
        self._record_outputs(run, written)
        self._enqueue_outputs(run, written)

    def _largest_input_series(self, run: ClaimedRun) -> list[pydicom.Dataset]:
        """The headers of the run's input series with the most images (none when the run has no readable input)."""
        by_series: dict[str, list[pydicom.Dataset]] = {}
        for path in self._input_paths(run):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
        return max(by_series.values(), key=len, default=[])

    def _outputs_dir(self, run: ClaimedRun) -> Path:
        """Where this attempt of the run writes its objects (the storage configuration's folder for it)."""
        return self.settings.storage.attempt_outputs_dir(run.study_instance_uid, run.id, run.attempts)

    def _enqueue_outputs(self, run: ClaimedRun, written: list[OutputObject]) -> list[str]:
        """Queue the run's written objects for its destinations; returns the destinations."""
        destinations = self._destinations(run)
        for output in written:
            enqueue(self.engine, output, destinations, run.id)
        return destinations

    def _notify(self, run: ClaimedRun) -> None:
        """Queue the run's recorded decision for the notification channels of its live route (none for silent
        and shadow runs)."""
        if run.mode is not RunMode.LIVE:
            return
        channels = channels_for(current_routes(self.engine, self.settings.pipeline.routes), run.model)
        if channels:
            enqueue_run(self.engine, self.settings, run.id, channels)

    def _model(self, name: str) -> LoadedModel:
        """The routed model, loaded once; a model that does not load is tried again at its next run."""
        from detector.infer import load_model
        from detector.registry import ModelCardError

        if name not in self._models:
            try:
                self._models[name] = load_model(name)
            except (ModelCardError, LookupError, OSError) as exc:
                raise ModelUnavailable(f"model {name} cannot be loaded: {exc}") from exc
        return self._models[name]

    def _stage(self, run: ClaimedRun, beat: Heartbeat, **values: object) -> None:
        if beat.lost or not update_run(self.engine, run, **values):
            raise ClaimLost(run.id)

    def _stages(self, run: ClaimedRun, beat: Heartbeat) -> None:
        report_run, card = self._detect(run, beat)
        notice = run.mode.notice
        reports = options_for(card, self.settings.reports)
        if notice is not None:  # the overlays burn the notice in where the banner goes
            reports = reports.model_copy(update={"banner_text": notice})
        objects, written = report_stage(replace(report_run, notice=notice), reports, self._outputs_dir(run))
        if objects.omissions:
            with self.engine.begin() as conn:
                record(conn, AuditKind.RUN_DEGRADED, study_instance_uid=run.study_instance_uid,
                       detail={"run_id": run.id, "omitted": list(objects.omissions)})
        self._record_outputs(run, written)
        self._stage(run, beat, reports_built_at=utcnow())
        destinations = self._enqueue_outputs(run, written)
        if beat.lost or not finish_run(self.engine, run):
            raise ClaimLost(run.id)
        log.info("run done", run_id=run.id, mode=str(run.mode), findings=len(report_run.findings),
                 outputs=len(written), destinations=destinations)

    def _detect(self, run: ClaimedRun, beat: Heartbeat) -> tuple[ReportRun, ModelCard]:
        """The detect stage, its results recorded and told to the channels: the report stage's input (the read
        series' headers and its findings' key slices in HU, from the detector's volume, which goes with this
        frame) and the model's card."""
        import torch

        from detector.infer import InferenceOptions, detect_series
        from detector.infer.facts import series_facts
        from detector.io.context import study_context
        from detector.infer.inference import default_device
        from detector.triage import decide

        config = self.settings.pipeline
        model = self._model(run.model)
        card = model.card
        should_stop = self._clinical_due if run.mode is RunMode.SHADOW else None
        if should_stop is not None and should_stop():
            raise ShadowYielded(run.id)
        self._stage(run, beat, model_name=card.name, model_version=card.version, weights_sha256=card.weights_sha256,
                    inference_started_at=utcnow())
        device = default_device() if config.device == "auto" else torch.device(config.device)
        batch_slices = config.batch_slices if should_stop is None else min(config.batch_slices, SHADOW_BATCH_SLICES)
        options = InferenceOptions(batch_slices=batch_slices, device=device, threads=config.threads,
                                   should_stop=should_stop)
        result = detect_series(self._input_paths(run), model, options=options, max_findings=config.max_findings,
                               gate=config.domain_gate, anatomy=config.anatomy.get(run.model))
        decision = decide(card, result.findings)
        self._stage(run, beat, inference_ended_at=utcnow(), series_instance_uid=result.volume.series_instance_uid,
                    selection=list(result.selection.reasons),
                    findings=[{**asdict(f), "urgent": n in decision.urgent} for n, f in enumerate(result.findings)],
                    input_facts=series_facts(result.volume, result.selection),
                    context=study_context(result.volume.headers).as_dict(), decision=str(decision.decision),
                    decision_reason=decision.reason)
        self._notify(run)  # the triage result goes out before the report objects are built: it needs none of them
        if result.dropped:
            self._audit_truncation(run, result.findings, result.dropped)
        return report_run(result, run_key(run.id), self._earlier_reports(run), self._ready_at(run)), card

    def _destinations(self, run: ClaimedRun) -> list[str]:
        """A live run's clinical destinations; a silent or shadow run's review destination (from the routes with
        the live models they run now, read at each run; else as configured, for a run queued before a change), or
        none."""
        if run.mode.clinical:
            return destinations_for_study(self.engine, self.settings.delivery, run.study_instance_uid)
        configured = self.settings.pipeline.routes
        review = review_destination(current_routes(self.engine, configured), run.model, run.mode) \
            or review_destination(configured, run.model, run.mode)
        return [review] if review is not None else []

    def _clinical_due(self) -> bool:
        """Whether a live or silent run is due (asked at most every ``YIELD_CHECK_S``; a failed look says no)."""
        now = time.monotonic()
        if now - self._last_yield_check < YIELD_CHECK_S:
            return False
        self._last_yield_check = now
        try:
            return clinical_run_due(self.engine)
        except SQLAlchemyError as exc:
            log.warning("could not look for due live runs", error=type(exc).__name__)
            return False

    def _audit_truncation(self, run: ClaimedRun, kept: list[Finding], dropped: list[Finding]) -> None:
        """The findings the per-study cap left out: how many, and their scores and centres, for the auditor."""
        with self.engine.begin() as conn:
            record(conn, AuditKind.RUN_TRUNCATED, study_instance_uid=run.study_instance_uid, detail={
                "run_id": run.id, "reported": len(kept), "dropped": len(dropped), "lowest_reported_score": round(kept[-1].score, 4),
                "dropped_findings": [{"score": round(f.score, 4), "centre_mm": [round(v, 1) for v in f.centre_mm]}
                                     for f in dropped]})
        log.warning("findings capped", run_id=run.id, reported=len(kept), dropped=len(dropped))

    def _input_paths(self, run: ClaimedRun) -> list[Path]:
        with self.engine.connect() as conn:
            paths = conn.execute(select(Instance.path).join(RunInput, RunInput.instance_id == Instance.id)
                                 .where(RunInput.run_id == run.id).order_by(Instance.id)).scalars()
            return [self.settings.storage.store_dir / p for p in paths]

    def _earlier_reports(self, run: ClaimedRun) -> list[EarlierReport]:
        """The SR of the newest finished earlier version of this study and model (its predecessor document)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(RunOutput.series_instance_uid, RunOutput.sop_instance_uid, RunOutput.sop_class_uid)
                .join(Run, RunOutput.run_id == Run.id)
                .where(Run.study_id == run.study_id, Run.model == run.model, Run.version < run.version,
                       Run.status == str(RunStatus.DONE), RunOutput.kind == str(OutputKind.SR))
                .order_by(Run.version.desc()).limit(1)).one_or_none()
        if row is None:
            return []
        return [EarlierReport(run.study_instance_uid, row.series_instance_uid, row.sop_instance_uid,
                              row.sop_class_uid)]

    def _ready_at(self, run: ClaimedRun) -> datetime:
        """When the study was found ready for this run: the time every object of the run carries."""
        with self.engine.connect() as conn:
            return conn.execute(select(Run.ready_at).where(Run.id == run.id)).scalar_one()

    def _record_outputs(self, run: ClaimedRun, written: list[OutputObject]) -> None:
        with self.engine.begin() as conn:
            for output in written:
                insert_ignore(conn, RunOutput, "sop_instance_uid", {
                    "run_id": run.id, "kind": str(output.kind), "sop_class_uid": output.sop_class_uid,
                    "sop_instance_uid": output.sop_instance_uid, "series_instance_uid": output.series_instance_uid,
                    "path": str(output.path), "sha256": output.sha256,
                })
