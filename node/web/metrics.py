"""Prometheus metrics computed from the audit database at scrape time.

Every figure is read from the shared database, so any process of the node reports the same values
whatever the number of receiver, worker and delivery processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from pydicom.uid import Comprehensive3DSRStorage
from sqlalchemy import Connection, Engine, case, extract, func, select
from sqlalchemy.sql import ColumnElement

from node.db.schema import (
    Association,
    Delivery,
    DeliveryAttempt,
    Instance,
    Notification,
    NotificationAttempt,
    Run,
)
from node.events import (
    AssociationOutcome,
    AttemptOutcome,
    DeliveryState,
    RunMode,
    RunStatus,
)

# Upper bounds (seconds) of the stage latency buckets: 0.1 s up to 15 min; +Inf is added.
BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0)


class AuditCollector(Collector):
    """Counters, gauges and stage latency histograms of the node, one database round trip per family."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with self.engine.connect() as conn:
            instances = conn.scalar(select(func.count()).select_from(Instance)) or 0
            associations = _counts(conn, Association.outcome)
            runs = _grouped(conn, select(Run.status, Run.mode, func.count()).group_by(Run.status, Run.mode))
            deliveries = _grouped(conn, select(Delivery.destination, Delivery.state, func.count())
                                  .group_by(Delivery.destination, Delivery.state))
            failures = _grouped(conn, select(Delivery.destination, func.count())
                                .join(DeliveryAttempt, DeliveryAttempt.delivery_id == Delivery.id)
                                .where(DeliveryAttempt.outcome == str(AttemptOutcome.FAILURE))
                                .group_by(Delivery.destination))
            stages = _stage_histograms(conn)
            told = _grouped(conn, select(Notification.channel, Notification.state, func.count())
                            .group_by(Notification.channel, Notification.state))
            told_failures = _grouped(conn, select(Notification.channel, func.count())
                                     .join(NotificationAttempt, NotificationAttempt.notification_id == Notification.id)
                                     .where(NotificationAttempt.outcome == str(AttemptOutcome.FAILURE))
                                     .group_by(Notification.channel))
            notify = _notify_histograms(conn)

        yield CounterMetricFamily("ctnode_instances_received", "Instance versions stored (identical resends add none).",
                                  value=instances)
        yield _labelled(CounterMetricFamily("ctnode_associations", "DICOM associations by how they ended.",
                                            labels=["outcome"]), _with_zeros(associations, AssociationOutcome))
        statuses = sorted({*map(str, RunStatus), *(status for status, _ in runs)})
        modes = sorted({*map(str, RunMode), *(mode for _, mode in runs)})
        by_run = GaugeMetricFamily("ctnode_runs", "Detection runs by current status and mode (live, silent, shadow).",
                                   labels=["status", "mode"])
        for status in statuses:
            for mode in modes:
                by_run.add_metric([status, mode], runs.get((status, mode), 0))
        yield by_run
        yield _labelled(GaugeMetricFamily("ctnode_run_queue_depth", "Runs queued for a worker (first try or retry), "
                                          "by mode.", labels=["mode"]),
                        {mode: runs.get((str(RunStatus.QUEUED), mode), 0) for mode in modes})
        destinations = sorted({d for d, _ in deliveries} | {d for (d,) in failures})
        yield _labelled(GaugeMetricFamily("ctnode_delivery_queue_depth", "Outbox rows waiting for an attempt.",
                                          labels=["destination"]),
                        {d: deliveries.get((d, str(DeliveryState.PENDING)), 0) for d in destinations})
        yield _labelled(CounterMetricFamily("ctnode_delivery_failures", "Failed C-STORE attempts (retried or not).",
                                            labels=["destination"]),
                        {d: failures.get((d,), 0) for d in destinations})
        yield _labelled(GaugeMetricFamily("ctnode_delivery_dead_letters",
                                          "Outbox rows that gave up after max attempts, until retried by hand.",
                                          labels=["destination"]),
                        {d: deliveries.get((d, str(DeliveryState.DEAD)), 0) for d in destinations})
        histogram = HistogramMetricFamily("ctnode_stage_duration_seconds",
                                          "Seconds a run spent in each stage, over runs that have both timestamps, "
                                          "by run mode.", labels=["stage", "mode"])
        for (stage, mode), (buckets, total) in stages.items():
            histogram.add_metric([stage, mode], buckets, total)
        yield histogram
        channels = sorted({c for c, _ in told} | {c for (c,) in told_failures})
        yield _labelled(GaugeMetricFamily("ctnode_notification_queue_depth", "Notifications waiting for an attempt.",
                                          labels=["channel"]),
                        {c: told.get((c, str(DeliveryState.PENDING)), 0) for c in channels})
        yield _labelled(CounterMetricFamily("ctnode_notification_failures",
                                            "Failed notification attempts (refused, wrong ACK, timeout), retried or not.",
                                            labels=["channel"]), {c: told_failures.get((c,), 0) for c in channels})
        yield _labelled(GaugeMetricFamily("ctnode_notification_dead_letters",
                                          "Notifications that gave up after max attempts, until retried by hand.",
                                          labels=["channel"]),
                        {c: told.get((c, str(DeliveryState.DEAD)), 0) for c in channels})
        to_notify = HistogramMetricFamily("ctnode_notify_seconds",
                                          "Seconds from a study's last image to the channel's acknowledgement of its "
                                          "triage result, by channel.", labels=["channel"])
        for channel, (buckets, total) in notify.items():
            to_notify.add_metric([channel], buckets, total)
        yield to_notify


def _counts(conn: Connection, column: Any) -> dict[str, int]:
    return {key: n for (key,), n in _grouped(conn, select(column, func.count()).group_by(column)).items()}


def _grouped(conn: Connection, stmt: Any) -> dict[tuple[str, ...], int]:
    """``{(group values...): count}`` from a statement whose last column is the count."""
    return {tuple(row[:-1]): int(row[-1]) for row in conn.execute(stmt)}


def _with_zeros(counts: Mapping[str, int], names: Iterable[str]) -> dict[str, int]:
    """Every known name (0 when absent) plus whatever else the database holds."""
    return {**{str(name): 0 for name in names}, **counts}


def _labelled(family: CounterMetricFamily | GaugeMetricFamily, values: Mapping[str, int]) -> Metric:
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


def _stage_histograms(conn: Connection) -> dict[tuple[str, str], tuple[list[tuple[str, float]], float]]:
    """Per stage and run mode: cumulative ``(le, count)`` buckets ending with +Inf, and the sum of seconds; one
    query (a shadow run's queue time is not a live run's)."""
    sr_ack = (select(Delivery.run_id, func.min(Delivery.acknowledged_at).label("at"))
              .where(Delivery.sop_class_uid == Comprehensive3DSRStorage, Delivery.acknowledged_at.is_not(None))
              .group_by(Delivery.run_id).subquery())
    spans = {
        "stabilize": (Run.last_instance_at, Run.ready_at),
        "queue": (Run.ready_at, Run.claimed_at),
        "inference": (Run.inference_started_at, Run.inference_ended_at),
        "report": (Run.inference_ended_at, Run.reports_built_at),
        "delivery": (Run.reports_built_at, sr_ack.c.at),
        "turnaround": (Run.last_instance_at, sr_ack.c.at),
    }
    columns: list[ColumnElement[Any]] = []
    for start, end in spans.values():
        seconds = _seconds(conn.dialect.name, start, end)
        columns += [func.count(seconds), func.coalesce(func.sum(seconds), 0.0)]
        columns += [func.sum(case((seconds <= bound, 1), else_=0)) for bound in BUCKETS_S]
    rows = {row[0]: row[1:] for row in conn.execute(select(Run.mode, *columns).select_from(Run)
                                                    .outerjoin(sr_ack, sr_ack.c.run_id == Run.id).group_by(Run.mode))}
    width = 2 + len(BUCKETS_S)
    result = {}
    for mode in sorted({*map(str, RunMode), *rows}):
        row = rows.get(mode, (0, 0.0, *(0,) * len(BUCKETS_S)) * len(spans))
        for i, stage in enumerate(spans):
            count, total, *cumulative = row[i * width:(i + 1) * width]
            buckets = [(str(bound), float(n or 0)) for bound, n in zip(BUCKETS_S, cumulative, strict=True)]
            result[(stage, mode)] = ([*buckets, ("+Inf", float(count))], float(total or 0.0))
    return result


def _notify_histograms(conn: Connection) -> dict[str, tuple[list[tuple[str, float]], float]]:
    """Per channel: cumulative ``(le, count)`` buckets of the time from last image to acknowledgement, and the sum."""
    seconds = _seconds(conn.dialect.name, Notification.last_image_at, Notification.acknowledged_at)
    columns = [func.count(seconds), func.coalesce(func.sum(seconds), 0.0),
               *[func.sum(case((seconds <= bound, 1), else_=0)) for bound in BUCKETS_S]]
    result = {}
    for channel, count, total, *cumulative in conn.execute(select(Notification.channel, *columns)
                                                           .group_by(Notification.channel)):
        buckets = [(str(bound), float(n or 0)) for bound, n in zip(BUCKETS_S, cumulative, strict=True)]
        result[channel] = ([*buckets, ("+Inf", float(count))], float(total or 0.0))
    return result


def _seconds(dialect: str, start: Any, end: Any) -> ColumnElement[Any]:
    """``end - start`` in seconds, NULL when either is NULL.

    SQLite keeps UTC text that its date functions read to the millisecond: rounding there keeps bucket
    bounds exact. PostgreSQL subtracts timestamptz values.
    """
    if dialect == "sqlite":
        return func.round((func.julianday(end) - func.julianday(start)) * 86400.0, 3)
    return extract("epoch", end - start)
