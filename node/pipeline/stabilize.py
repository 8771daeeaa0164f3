"""Study completion: decide when a study that received new instances is ready, and queue its runs.

A study is a candidate while its ``generation`` (bumped by every stored instance) is ahead of its
``settled_generation``. It is ready when no instance arrived for ``pipeline.quiet_s``, or at once
(fast path) when every association that brought it is released and every CT series' slices are
complete. Settling copies the generation it acted on (compare-and-set, so several stabilizers never
settle one generation twice), routes the series to models and queues one run per model (live or
silent, then each route's shadow models), unless that model's last run read exactly the same instances.
The routes are the configured ones with the live model each runs now (node.pipeline.assignment), read at
every settling: a promotion or rollback takes effect for the next study settled.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from node.config import Settings
from node.db import audit, identifiers
from node.db.schema import Association, Instance, Run, RunInput, Series, Study, utcnow
from node.events import AssociationOutcome, AuditKind, RunMode, RunStatus
from node.logging import get_logger
from node.loops import report_failure
from node.pipeline.assignment import current_routes
from node.pipeline.evidence import SeriesEvidence, series_evidence
from node.pipeline.routing import PixelReader, RoutedModel, SeriesFacts, route_study

log = get_logger(__name__)

SKIPPED_MODEL = "-"
"""The model column of a skipped run: no model applied."""


@dataclass(frozen=True)
class StoredInstance:
    """A current instance of a candidate study, as the index has it."""

    id: int
    sop_instance_uid: str
    sha256: str
    path: str
    received_at: datetime
    series_instance_uid: str
    association_open: bool


@dataclass(frozen=True)
class Candidate:
    """A study with instances newer than its last settling, and everything readiness needs."""

    study_id: int
    study_instance_uid: str
    generation: int
    settled_generation: int
    instances: tuple[StoredInstance, ...]
    series: tuple[SeriesFacts, ...]

    @property
    def last_received_at(self) -> datetime:
        return max(i.received_at for i in self.instances)


def input_digest(instances: list[StoredInstance]) -> str:
    """sha256 over the sorted "SOP Instance UID sha256" lines of a run's inputs: equal inputs, equal digest."""
    lines = sorted(f"{i.sop_instance_uid} {i.sha256}" for i in instances)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class Stabilizer:
    """Polls for candidate studies and settles the ready ones (any number may run against one database)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.config = settings.pipeline
        self.store_dir = settings.storage.store_dir
        self._evidence: dict[tuple[int, int], list[SeriesEvidence]] = {}

    def poll(self, now: datetime | None = None) -> list[int]:
        """Settle every ready candidate; returns the ids of the runs queued (or skipped) now."""
        now = now or utcnow()
        created: list[int] = []
        candidates = self._candidates()
        if candidates:
            identifiers.catch_up(self.engine)
        for candidate in candidates:
            try:
                trigger = self._ready(candidate, now)
                if trigger is not None:
                    created += self._settle(candidate, trigger, now)
            except SQLAlchemyError:
                raise  # the database is away: the whole round waits
            except Exception as exc:  # one study's unforeseen trouble must not hold back the others
                report_failure(self.engine, f"stabilize study {candidate.study_id}", exc, 1)
        live = {(c.study_id, c.generation) for c in candidates}
        self._evidence = {key: value for key, value in self._evidence.items() if key in live}
        return created

    def _candidates(self) -> list[Candidate]:
        with self.engine.connect() as conn:
            studies = conn.execute(select(Study.id, Study.study_instance_uid, Study.study_description,
                                          Study.generation, Study.settled_generation)
                                   .where(Study.generation > Study.settled_generation).order_by(Study.id)).all()
            return [self._candidate(conn, s) for s in studies]

    @staticmethod
    def _candidate(conn: Connection, study: object) -> Candidate:
        rows = conn.execute(
            select(Instance.id, Instance.sop_instance_uid, Instance.sha256, Instance.path, Instance.received_at,
                   Series.series_instance_uid, Series.series_number, Series.modality, Series.body_part,
                   Series.series_description, Association.calling_ae, Association.outcome)
            .join(Series, Instance.series_id == Series.id)
            .outerjoin(Association, Instance.association_id == Association.id)
            .where(Series.study_id == study.id, Instance.is_current)  # type: ignore[attr-defined]
            .order_by(Instance.id)
        ).all()
        senders: dict[str, set[str]] = defaultdict(set)
        series: dict[str, SeriesFacts] = {}
        for r in rows:
            if r.calling_ae:
                senders[r.series_instance_uid].add(r.calling_ae)
            series.setdefault(r.series_instance_uid, SeriesFacts(
                r.series_instance_uid, r.series_number, r.modality, r.body_part, r.series_description,
                study.study_description, frozenset()))  # type: ignore[attr-defined]
        return Candidate(
            study.id, study.study_instance_uid, study.generation, study.settled_generation,  # type: ignore[attr-defined]
            tuple(StoredInstance(r.id, r.sop_instance_uid, r.sha256, r.path, r.received_at, r.series_instance_uid,
                                 r.outcome == str(AssociationOutcome.OPEN)) for r in rows),
            tuple(SeriesFacts(f.series_instance_uid, f.series_number, f.modality, f.body_part, f.series_description,
                              f.study_description, frozenset(senders[uid])) for uid, f in series.items()),
        )

    def _ready(self, candidate: Candidate, now: datetime) -> str | None:
        """Why the candidate is ready now, or None while it is not."""
        if not candidate.instances:
            return "no current instance"
        quiet = (now - candidate.last_received_at).total_seconds()
        if quiet >= self.config.quiet_s:
            return f"quiet: no new instance for {quiet:.1f} s (quiet_s {self.config.quiet_s:g})"
        if not self.config.fast_path or any(i.association_open for i in candidate.instances):
            return None
        evidence = self._series_evidence(candidate)
        if not evidence or not all(e.complete for e in evidence):
            return None
        return "fast path: associations released; " + "; ".join(f"{e.series_instance_uid}: {e.reason}"
                                                                for e in evidence)

    def _series_evidence(self, candidate: Candidate) -> list[SeriesEvidence]:
        key = (candidate.study_id, candidate.generation)
        if key not in self._evidence:
            ct = {s.series_instance_uid for s in candidate.series if (s.modality or "").upper() == "CT"}
            paths: dict[str, list[Path]] = defaultdict(list)
            for i in candidate.instances:
                if i.series_instance_uid in ct:
                    paths[i.series_instance_uid].append(self.store_dir / i.path)
            self._evidence[key] = [series_evidence(uid, files, self.config.max_gap_factor)
                                   for uid, files in sorted(paths.items())]
        return self._evidence[key]

    def _pixel_body_part(self, candidate: Candidate) -> PixelReader:
        """Reads an untagged series' body part from a few of its stored images (only when tags route nothing)."""

        def read(facts: SeriesFacts) -> tuple[str | None, str]:
            from detector.infer.gate import read_pixels, sampled_files
            from detector.io import SeriesInputError, read_headers

            files = [self.store_dir / i.path for i in candidate.instances
                     if i.series_instance_uid == facts.series_instance_uid]
            try:
                reading = read_pixels(sampled_files(read_headers(files).headers))
            except (SeriesInputError, OSError, ValueError) as exc:
                return None, f"unreadable: {exc}"
            return reading.body_part, reading.evidence

        return read

    def _settle(self, candidate: Candidate, trigger: str, now: datetime) -> list[int]:
        routes = current_routes(self.engine, self.config.routes)  # a promotion takes effect for the next study
        decision = route_study(routes, candidate.series, self._pixel_body_part(candidate))
        created = []
        with self.engine.begin() as conn:
            won = conn.execute(update(Study).where(Study.id == candidate.study_id,
                                                   Study.settled_generation == candidate.settled_generation)
                               .values(settled_generation=candidate.generation)).rowcount
            if not won:
                return []  # another stabilizer settled this generation
            plans = _plans(candidate, decision.routed, trigger) or [
                _Plan(SKIPPED_MODEL, RunMode.LIVE, list(candidate.instances), RunStatus.SKIPPED,
                      f"skipped: no model applies ({trigger})", [])]
            for plan in plans:
                run_id = self._queue(conn, candidate, plan, [*decision.explain(), *plan.routing], now)
                if run_id is not None:
                    created.append(run_id)
        log.info("study settled", study_instance_uid=candidate.study_instance_uid, generation=candidate.generation,
                 trigger=trigger, runs=created)
        return created

    def _queue(self, conn: Connection, candidate: Candidate, plan: _Plan, routing: list[str],
               now: datetime) -> int | None:
        """Insert the next run version of (study, model), unless its last run read the same instances."""
        model, inputs, status, trigger = plan.model, plan.inputs, plan.status, plan.trigger
        digest = input_digest(inputs)
        last = conn.execute(select(Run.id, Run.version, Run.input_digest)
                            .where(Run.study_id == candidate.study_id, Run.model == model)
                            .order_by(Run.version.desc()).limit(1)).one_or_none()
        if last is not None and last.input_digest == digest:
            audit.record(conn, AuditKind.RUN_UNCHANGED, study_instance_uid=candidate.study_instance_uid,
                         detail={"run_id": last.id, "model": model, "trigger": trigger})
            return None
        run_id = conn.execute(insert(Run).returning(Run.id).values(
            study_id=candidate.study_id, study_instance_uid=candidate.study_instance_uid, model=model,
            version=(last.version + 1) if last is not None else 1, predecessor_id=last.id if last else None,
            status=str(status), mode=str(plan.mode), trigger=trigger, routing=routing, attempts=0, not_before=now,
            input_digest=digest, instance_count=len(inputs), selection=[], findings=[],
            first_instance_at=min(i.received_at for i in inputs) if inputs else None,
            last_instance_at=max(i.received_at for i in inputs) if inputs else None, ready_at=now,
            finished_at=now if status is RunStatus.SKIPPED else None,
        )).scalar_one()
        if inputs:
            conn.execute(insert(RunInput), [{"run_id": run_id, "instance_id": i.id} for i in inputs])
        kind = AuditKind.RUN_SKIPPED if status is RunStatus.SKIPPED else AuditKind.RUN_QUEUED
        audit.record(conn, kind, study_instance_uid=candidate.study_instance_uid,
                     detail={"run_id": run_id, "model": model, "mode": str(plan.mode), "trigger": trigger,
                             "instances": len(inputs)})
        return run_id


@dataclass(frozen=True)
class _Plan:
    """One run to queue for a settled study: model, mode, what it reads, its status and trigger, extra routing."""

    model: str
    mode: RunMode
    inputs: list[StoredInstance]
    status: RunStatus
    trigger: str
    routing: list[str]


def _plans(candidate: Candidate, routed: tuple[RoutedModel, ...], trigger: str) -> list[_Plan]:
    """The routed models' runs (live or silent, in route order), then one run per shadow model on the series
    of the models it shadows: queued after them, and claimed after every live and silent run that is due."""
    def reading(uids: set[str]) -> list[StoredInstance]:
        return [i for i in candidate.instances if i.series_instance_uid in uids]

    plans = [_Plan(r.model, r.mode, reading(set(r.series_instance_uids)), RunStatus.QUEUED, trigger, [])
             for r in routed]
    shadowed: dict[str, tuple[set[str], list[str]]] = {}
    for r in routed:
        for shadow in r.shadows:
            uids, of = shadowed.setdefault(shadow, (set(), []))
            uids.update(r.series_instance_uids)
            of.append(r.model)
    plans += [_Plan(shadow, RunMode.SHADOW, reading(uids), RunStatus.QUEUED, trigger,
                    [f"shadow of {', '.join(of)}: reads its series after it, never delivered clinically"])
              for shadow, (uids, of) in shadowed.items()]
    return plans

