"""The receive stage's SQL: index a stored instance, find its earlier versions, and list what the store should hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, insert, select, update

from node.db.schema import Instance, Series, Study, utcnow
from node.db.upsert import insert_ignore

# Statements built once: the hot path only binds parameters.
_VERSIONS = select(Instance.id, Instance.sha256).where(Instance.sop_instance_uid == bindparam("sop"))
_INSERT_INSTANCE = insert(Instance).returning(Instance.id)
_BUMP_STUDY = update(Study).where(Study.id == bindparam("study_id")).values(generation=Study.generation + 1)
_SUPERSEDE = update(Instance).where(Instance.sop_instance_uid == bindparam("sop")).values(is_current=False)
_SERIES = (select(Series.id, Series.study_id, Study.study_instance_uid)
           .join(Study, Study.id == Series.study_id).where(Series.series_instance_uid == bindparam("series")))


@dataclass(frozen=True)
class Version:
    id: int
    sha256: str


@dataclass(frozen=True)
class SeriesKey:
    """A series row and the study it belongs to."""

    series_id: int
    study_id: int
    study_instance_uid: str


def versions(conn: Connection, sop_instance_uid: str) -> list[Version]:
    """Every stored version of a SOP instance."""
    return [Version(row.id, row.sha256) for row in conn.execute(_VERSIONS, {"sop": sop_instance_uid})]


def ensure_series(conn: Connection, study: dict[str, Any], series: dict[str, Any]) -> SeriesKey:
    """The series row (created with its study if new). Its study may differ from ``study``: the caller checks."""
    insert_ignore(conn, Study, "study_instance_uid", {**study, "first_received_at": utcnow()})
    found = conn.execute(_SERIES, {"series": series["series_instance_uid"]}).one_or_none()
    if found is None:
        study_id = conn.execute(select(Study.id).where(
            Study.study_instance_uid == study["study_instance_uid"])).scalar_one()
        insert_ignore(conn, Series, "series_instance_uid", {**series, "study_id": study_id,
                                                            "first_received_at": utcnow()})
        found = conn.execute(_SERIES, {"series": series["series_instance_uid"]}).one()
    return SeriesKey(found.id, found.study_id, found.study_instance_uid)


def add_instance(conn: Connection, values: dict[str, Any], study_id: int, supersede: bool) -> int:
    """Insert the instance row (the current version), mark older versions not current, bump the study."""
    if supersede:
        conn.execute(_SUPERSEDE, {"sop": values["sop_instance_uid"]})
    instance_id = conn.execute(_INSERT_INSTANCE, {**values, "received_at": utcnow(), "is_current": True}).scalar_one()
    conn.execute(_BUMP_STUDY, {"study_id": study_id})  # last: the study row is locked until commit
    return int(instance_id)


def indexed_paths(engine: Engine) -> set[str]:
    """Every instance path (relative to the store) the index knows."""
    with engine.connect() as conn:
        return set(conn.execute(select(Instance.path)).scalars())
