"""Patient identifiers the node has received, kept so that every process's log scrubber knows them.

The receiver records the values of each study as it indexes it; any other process (worker, delivery, the
stabilizer, a CLI command) calls :func:`catch_up` before it handles a study's data, and its scrubber then
hides those values whichever process first saw them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable

from sqlalchemy import Connection, Engine, select

from node.db.schema import IDENTIFIER_CHARS, PatientIdentifier
from node.db.upsert import insert_ignore
from node.logging import PHIRegistry, identifier_terms, phi_registry

INITIAL = 100_000  # newest values a process loads at its first catch-up
_PAGE = 10_000


def record(conn: Connection, study_id: int, values: Iterable[object]) -> None:
    """Keep ``values`` (blank and too-short ones are skipped, as the scrubber skips them) for ``study_id``."""
    kept = {str(v).strip()[:IDENTIFIER_CHARS] for v in values if identifier_terms(v)}
    for value in sorted(kept):
        insert_ignore(conn, PatientIdentifier, ("study_id", "value"), {"study_id": study_id, "value": value})


class _Follower:
    """How far one database's identifiers have been read into one registry."""

    def __init__(self) -> None:
        self.last_id: int | None = None
        self.lock = threading.Lock()


_followers: weakref.WeakKeyDictionary[PHIRegistry, dict[str, _Follower]] = weakref.WeakKeyDictionary()
_followers_lock = threading.Lock()


def catch_up(engine: Engine, registry: PHIRegistry | None = None) -> int:
    """Teach ``registry`` (default: the log scrubber's) the identifiers recorded since this process last asked
    (the newest ``INITIAL`` the first time); returns how many values were read. Raises what the database raises."""
    registry = phi_registry if registry is None else registry
    with _followers_lock:
        follower = _followers.setdefault(registry, {}).setdefault(engine.url.render_as_string(), _Follower())
    with follower.lock, engine.connect() as conn:
        if follower.last_id is None:
            rows = conn.execute(select(PatientIdentifier.id, PatientIdentifier.value)
                                .order_by(PatientIdentifier.id.desc()).limit(INITIAL)).all()[::-1]
            read = _learn(registry, follower, rows)
        else:
            read = 0
            while True:
                rows = conn.execute(select(PatientIdentifier.id, PatientIdentifier.value)
                                    .where(PatientIdentifier.id > follower.last_id)
                                    .order_by(PatientIdentifier.id).limit(_PAGE)).all()
                read += _learn(registry, follower, rows)
                if len(rows) < _PAGE:
                    break
    return read


def _learn(registry: PHIRegistry, follower: _Follower, rows: list) -> int:
    registry.remember(*(row.value for row in rows))
    if rows:
        follower.last_id = rows[-1].id
    elif follower.last_id is None:
        follower.last_id = 0
    return len(rows)
