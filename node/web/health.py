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
from node.pipeline.model_check import ModelChecker


@dataclass(frozen=True)
class Check:
    """One readiness check: its name, whether it passed, and why in a few words. A check not ``required`` is
    reported but does not make the process unready (a shadow model never holds back the live work)."""

    name: str
    ok: bool
    detail: str
    required: bool = True


def readiness(engine: Engine, storage: StorageConfig, loops: LoopHealth | None = None,
              models: ModelChecker | None = None) -> list[Check]:
    """Every check, in a fixed order; the process is ready when all the required ones pass."""
    checks = [_database(engine), _writable(storage), _free_space(storage)]
    if loops is not None and loops.loops:
        checks.append(_loops(loops))
    if models is not None:
        routed = models.routed()
        if routed.live:
            checks.append(_models(models, routed.live))
        if routed.shadows:
            checks.append(_shadow_models(models, routed.shadows))
    return checks


def _loops(loops: LoopHealth) -> Check:
    """Every long-lived loop (study completion, workers, delivery senders) finished a round lately."""
    stalled = loops.stalled()
    if stalled:
        return Check("loops", False, "; ".join(stalled))
    return Check("loops", True, f"{len(loops.loops)} loops making progress")


def _models(models: ModelChecker, live: tuple[str, ...]) -> Check:
    """Every model the routes run live now (a promoted one included) loads (card valid, weights present, sha256
    matching, network built)."""
    bad = [f"{m.model}: {m.detail}" for m in models.check(live) if not m.ok]
    if bad:
        return Check("models", False, "cannot be loaded: " + "; ".join(bad))
    return Check("models", True, f"{len(live)} routed models load")


def _shadow_models(models: ModelChecker, shadows: tuple[str, ...]) -> Check:
    """Every shadow model of the routes loads; one that does not is named, and the process stays ready (its runs
    fail after their retries, the live runs go on)."""
    bad = [f"{m.model}: {m.detail}" for m in models.check(shadows) if not m.ok]
    if bad:
        return Check("shadow_models", False, "cannot be loaded: " + "; ".join(bad), required=False)
    return Check("shadow_models", True, f"{len(shadows)} shadow models load", required=False)


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
