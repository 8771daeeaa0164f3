"""The run table as a queue: claim under a lease, heartbeat, record stages, finish, retry or fail.

Every write a worker makes to its run is guarded by its claim token, so a worker whose lease ran
out (and whose run another worker reclaimed) can no longer change it.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, and_, case, exists, or_, select, update

from node.config import PipelineConfig
from node.db import audit
from node.db.clock import db_now
from node.db.schema import Run, utcnow
from node.events import AuditKind, RunMode, RunStatus
from node.logging import get_logger

log = get_logger(__name__)


def worker_name() -> str:
    """host:pid of this process, as the run table records its claimer."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ClaimedRun:
    """A run this worker holds: what to do, and the token that proves it still holds it."""

    id: int
    token: str
    attempts: int
    study_id: int
    study_instance_uid: str
    model: str
    version: int
    mode: RunMode = RunMode.LIVE


def _claimable(now: Any) -> Any:
    return or_(and_(Run.status == str(RunStatus.QUEUED), Run.not_before <= now),
               and_(Run.status == str(RunStatus.RUNNING), Run.lease_until < now))


_SHADOW_LAST = case((Run.mode == str(RunMode.SHADOW), 1), else_=0)
"""The claim order's first key: every due live or silent run before any shadow run."""


def clinical_run_due(engine: Engine) -> bool:
    """Whether a live or silent run is due (queued, or its worker's lease ran out): a shadow run yields to it."""
    with engine.connect() as conn:
        now = db_now(conn)
        return bool(conn.execute(select(exists().where(_claimable(now), Run.mode != str(RunMode.SHADOW)))).scalar())


def claim_run(engine: Engine, config: PipelineConfig, worker: str) -> ClaimedRun | None:
    """Take the oldest due run: queued and due, or running with an expired lease (its worker died); shadow runs
    only when no live or silent run is due.

    PostgreSQL skips rows another worker has locked; on SQLite the guarded UPDATE is the single-writer
    compare-and-set. A reclaimed run that has used up its attempts is failed instead of claimed.
    """
    while True:
        with engine.begin() as conn:
            now = db_now(conn)
            row = conn.execute(select(Run.id, Run.status, Run.attempts, Run.worker, Run.study_instance_uid)
                               .where(_claimable(now)).order_by(_SHADOW_LAST, Run.id).limit(1)
                               .with_for_update(skip_locked=True)).one_or_none()
            if row is None:
                return None
            reclaim = row.status == str(RunStatus.RUNNING)
            if reclaim and row.attempts >= config.max_attempts:
                error = f"worker {row.worker} stopped {row.attempts} time(s) without finishing (lease expired)"
                done = conn.execute(update(Run).where(Run.id == row.id, _claimable(now)).values(
                    status=str(RunStatus.FAILED), error=error, claim_token=None, lease_until=None,
                    finished_at=now)).rowcount
                if done:
                    audit.record(conn, AuditKind.RUN_FAILED, study_instance_uid=row.study_instance_uid,
                                 detail={"run_id": row.id, "error": error})
                continue
            token = uuid.uuid4().hex
            taken = conn.execute(update(Run).where(Run.id == row.id, _claimable(now)).values(
                status=str(RunStatus.RUNNING), claim_token=token, lease_until=now + timedelta(seconds=config.lease_s),
                worker=worker, attempts=Run.attempts + 1, claimed_at=now)).rowcount
            if not taken:
                continue
            if reclaim:
                audit.record(conn, AuditKind.RUN_RECLAIMED, study_instance_uid=row.study_instance_uid,
                             detail={"run_id": row.id, "from_worker": row.worker, "to_worker": worker})
            claimed = conn.execute(select(Run.study_id, Run.model, Run.version, Run.attempts, Run.mode)
                                   .where(Run.id == row.id)).one()
        log.info("run claimed", run_id=row.id, worker=worker, reclaimed=reclaim, attempt=claimed.attempts)
        return ClaimedRun(row.id, token, claimed.attempts, claimed.study_id, row.study_instance_uid, claimed.model,
                          claimed.version, RunMode(claimed.mode))


def update_run(engine: Engine, run: ClaimedRun, **values: Any) -> bool:
    """Record stage values on a run this worker still holds; False when the claim was lost."""
    with engine.begin() as conn:
        return bool(conn.execute(update(Run).where(Run.id == run.id, Run.claim_token == run.token,
                                                   Run.status == str(RunStatus.RUNNING)).values(**values)).rowcount)


def heartbeat(engine: Engine, run: ClaimedRun, lease_s: float) -> bool:
    """Extend the lease to ``lease_s`` from now on the database's clock; False when the claim was lost."""
    with engine.begin() as conn:
        until = db_now(conn) + timedelta(seconds=lease_s)
        return bool(conn.execute(update(Run).where(Run.id == run.id, Run.claim_token == run.token,
                                                   Run.status == str(RunStatus.RUNNING))
                                 .values(lease_until=until)).rowcount)


def finish_run(engine: Engine, run: ClaimedRun, **values: Any) -> bool:
    """Mark the run done (with ``values``) and release it; False when the claim was lost."""
    now = utcnow()
    with engine.begin() as conn:
        done = conn.execute(update(Run).where(Run.id == run.id, Run.claim_token == run.token).values(
            status=str(RunStatus.DONE), claim_token=None, lease_until=None, finished_at=now, error=None,
            **values)).rowcount
        if done:
            audit.record(conn, AuditKind.RUN_DONE, study_instance_uid=run.study_instance_uid,
                         detail={"run_id": run.id, "attempts": run.attempts})
    return bool(done)


def fail_run(engine: Engine, run: ClaimedRun, error: str, retryable: bool, config: PipelineConfig) -> RunStatus:
    """Record a failed attempt: queued again after ``retry_delay_s`` while attempts remain, else failed."""
    retry = retryable and run.attempts < config.max_attempts
    status = RunStatus.QUEUED if retry else RunStatus.FAILED
    with engine.begin() as conn:
        now = db_now(conn)
        values: dict[str, Any] = {"status": str(status), "error": error, "claim_token": None, "lease_until": None}
        if retry:
            values["not_before"] = now + timedelta(seconds=config.retry_delay_s)
        else:
            values["finished_at"] = now
        held = conn.execute(update(Run).where(Run.id == run.id, Run.claim_token == run.token)
                            .values(**values)).rowcount
        if held:
            audit.record(conn, AuditKind.RUN_RETRY if retry else AuditKind.RUN_FAILED,
                         study_instance_uid=run.study_instance_uid,
                         detail={"run_id": run.id, "attempts": run.attempts, "error": error})
    log.warning("run attempt failed", run_id=run.id, attempt=run.attempts, error=error, status=str(status))
    return status


def skip_run(engine: Engine, run: ClaimedRun, reason: str) -> RunStatus | None:
    """End the run as skipped (its model must not read the series), with the reason; None if the claim was lost."""
    with engine.begin() as conn:
        held = conn.execute(update(Run).where(Run.id == run.id, Run.claim_token == run.token).values(
            status=str(RunStatus.SKIPPED), error=reason, claim_token=None, lease_until=None,
            finished_at=utcnow())).rowcount
        if held:
            audit.record(conn, AuditKind.RUN_SKIPPED, study_instance_uid=run.study_instance_uid,
                         detail={"run_id": run.id, "reason": reason})
    log.info("run skipped", run_id=run.id, reason=reason)
    return RunStatus.SKIPPED if held else None


def release_run(engine: Engine, run: ClaimedRun, kind: AuditKind = AuditKind.RUN_RELEASED) -> bool:
    """Give an interrupted run back to the queue at once (the attempt does not count), audited as ``kind``
    (released: a worker shutting down; yielded: a shadow run making way); False if not held."""
    with engine.begin() as conn:
        held = conn.execute(update(Run).where(Run.id == run.id, Run.claim_token == run.token).values(
            status=str(RunStatus.QUEUED), claim_token=None, lease_until=None, attempts=Run.attempts - 1,
            not_before=utcnow())).rowcount
        if held:
            audit.record(conn, kind, study_instance_uid=run.study_instance_uid,
                         detail={"run_id": run.id, "worker": worker_name()})
    return bool(held)


def requeue_run(engine: Engine, run_id: int) -> bool:
    """Queue a failed run again now, with a fresh attempt count; False when it is not failed."""
    with engine.begin() as conn:
        uid = conn.execute(select(Run.study_instance_uid).where(Run.id == run_id,
                                                                Run.status == str(RunStatus.FAILED))).scalar()
        if uid is None:
            return False
        conn.execute(update(Run).where(Run.id == run_id, Run.status == str(RunStatus.FAILED)).values(
            status=str(RunStatus.QUEUED), attempts=0, not_before=utcnow(), finished_at=None))
        audit.record(conn, AuditKind.RUN_REQUEUED, study_instance_uid=uid, detail={"run_id": run_id})
    return True
