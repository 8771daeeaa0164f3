"""Read-side queries: what the node holds, per study and series (for `ctnode studies` and the web API)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from node.db.schema import Association, Instance, Series, Study


@dataclass(frozen=True)
class SeriesSummary:
    series_instance_uid: str
    series_number: int | None
    modality: str | None
    series_description: str | None
    body_part: str | None
    instances: int
    bytes: int
    first_received_at: datetime | None
    last_received_at: datetime | None


@dataclass(frozen=True)
class StudySummary:
    study_instance_uid: str
    study_date: str | None
    study_description: str | None
    series_count: int
    instances: int
    bytes: int
    sources: list[str]
    first_received_at: datetime | None
    last_received_at: datetime | None
    series: list[SeriesSummary]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _series_rows(engine: Engine, study_ids: list[int]) -> dict[int, list[SeriesSummary]]:
    query = (
        select(
            Series.study_id, Series.series_instance_uid, Series.series_number, Series.modality,
            Series.series_description, Series.body_part, func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0),
            func.min(Instance.received_at), func.max(Instance.received_at),
        )
        .outerjoin(Instance, (Instance.series_id == Series.id) & Instance.is_current)
        .where(Series.study_id.in_(study_ids))
        .group_by(Series.id)
        .order_by(Series.study_id, Series.series_number, Series.series_instance_uid)
    )
    out: dict[int, list[SeriesSummary]] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            out.setdefault(row[0], []).append(SeriesSummary(*row[1:7], int(row[7]), *row[8:10]))
    return out


def _sources(engine: Engine, study_ids: list[int]) -> dict[int, list[str]]:
    query = (
        select(Series.study_id, Association.calling_ae + "@" + Association.peer_host)
        .join(Instance, Instance.series_id == Series.id)
        .join(Association, Association.id == Instance.association_id)
        .where(Series.study_id.in_(study_ids))
        .distinct()
    )
    out: dict[int, list[str]] = {}
    with engine.connect() as conn:
        for study_id, source in conn.execute(query):
            out.setdefault(study_id, []).append(source)
    return {k: sorted(v) for k, v in out.items()}


def list_studies(engine: Engine, study_uid: str | None = None, limit: int = 200) -> list[StudySummary]:
    """Newest first; with ``study_uid`` just that study (empty list if unknown)."""
    query = select(Study).order_by(Study.first_received_at.desc()).limit(limit)
    if study_uid is not None:
        query = query.where(Study.study_instance_uid == study_uid)
    with engine.connect() as conn:
        studies = conn.execute(query).all()
    ids = [row.id for row in studies]
    series = _series_rows(engine, ids)
    sources = _sources(engine, ids)
    summaries = []
    for row in studies:
        rows = series.get(row.id, [])
        firsts = [s.first_received_at for s in rows if s.first_received_at]
        lasts = [s.last_received_at for s in rows if s.last_received_at]
        summaries.append(StudySummary(
            study_instance_uid=row.study_instance_uid, study_date=row.study_date,
            study_description=row.study_description, series_count=len(rows),
            instances=sum(s.instances for s in rows), bytes=sum(s.bytes for s in rows),
            sources=sources.get(row.id, []), first_received_at=min(firsts) if firsts else None,
            last_received_at=max(lasts) if lasts else None, series=rows,
        ))
    return summaries
