"""Readiness checks: can this process do its work right now?"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from node.config import StorageConfig
from node.db.migrate import is_current
from node.loops import LoopHealth
from node.pipeline.models import ModelChecker


@dataclass(frozen=True)
class Check:
    """One readiness check: its name, whether it passed, and why in a few words."""

    name: str
    ok: bool
    detail: str


def readiness(engine: Engine, storage: StorageConfig, loops: LoopHealth | None = None,
              models: ModelChecker | None = None) -> list[Check]:
    """Every check, in a fixed order; the process is ready when all pass."""
    checks = [_database(engine), _writable(storage), _free_space(storage)]
    if loops is not None and loops.loops:
        checks.append(_loops(loops))
    if models is not None and models.models:
        checks.append(_models(models))
    return checks


def _loops(loops: LoopHealth) -> Check:
    """Every long-lived loop (study completion, workers, delivery senders) finished a round lately."""
    stalled = loops.stalled()
    if stalled:
        return Check("loops", False, "; ".join(stalled))
    return Check("loops", True, f"{len(loops.loops)} loops making progress")


def _models(models: ModelChecker) -> Check:
    """Every routed model loads (card valid, weights present, sha256 matching, network built)."""
    bad = [f"{m.model}: {m.detail}" for m in models.check() if not m.ok]
    if bad:
        return Check("models", False, "cannot be loaded: " + "; ".join(bad))
    return Check("models", True, f"{len(models.models)} routed models load")


def _database(engine: Engine) -> Check:
    """Reachable, and at the newest migration."""
    try:
        current = is_current(engine)
    except SQLAlchemyError as exc:
        return Check("database", False, f"unreachable: {type(exc).__name__}")
    return Check("database", current, "at the newest schema" if current else "not at the newest schema")


def _writable(storage: StorageConfig) -> Check:
    """A file can be created (and removed) in the data directory."""
    try:
        with tempfile.TemporaryFile(dir=storage.data_dir, prefix=".ready-"):
            pass
    except OSError as exc:
        return Check("storage_writable", False, f"{storage.data_dir}: {type(exc).__name__}")
    return Check("storage_writable", True, str(storage.data_dir))


def _free_space(storage: StorageConfig) -> Check:
    """Free bytes at or above the watermark under which the node refuses new instances."""
    try:
        free = shutil.disk_usage(storage.data_dir).free
    except OSError as exc:
        return Check("storage_free_space", False, f"{storage.data_dir}: {type(exc).__name__}")
    return Check("storage_free_space", free >= storage.min_free_bytes,
                 f"{free} bytes free, watermark {storage.min_free_bytes}")
