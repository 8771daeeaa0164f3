"""Reconciling the store with the index: files no row names are moved aside, rows whose file is gone are reported."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from node.db import audit
from node.db.instances import indexed_paths
from node.events import AuditKind
from node.logging import get_logger
from node.storage.store import InstanceStore

log = get_logger(__name__)

# Files younger than this are left alone: a receiver (maybe a sibling process) may be committing their row.
RECONCILE_GRACE_S = 300.0


@dataclass
class Reconciliation:
    """What one pass found: store paths moved aside (and where to), and indexed paths with no file."""

    orphans: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def reconcile(store: InstanceStore, engine: Engine, older_than_s: float = RECONCILE_GRACE_S) -> Reconciliation:
    """Move store files no instance row names into quarantine/orphans and audit each; audit rows without a file."""
    result = Reconciliation()
    files = store.store_files(older_than_s)
    known = indexed_paths(engine)
    for relative in sorted(set(files) - known):
        try:
            kept = store.set_aside(relative, "orphan")
        except FileNotFoundError:  # indexed meanwhile by a resend, or moved by a sibling
            continue
        result.orphans[relative] = str(kept)
        with engine.begin() as conn:
            audit.record(conn, AuditKind.STORE_ORPHAN, path=str(kept), detail={"store_path": relative})
    result.missing = sorted(p for p in known if not (store.root / p).exists())
    if result.missing:
        with engine.begin() as conn:
            for relative in result.missing:
                audit.record(conn, AuditKind.STORE_MISSING, path=relative)
    if result.orphans or result.missing:
        log.warning("store reconciled", orphans=len(result.orphans), missing=len(result.missing))
    return result
