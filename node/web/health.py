"""Readiness checks: can this process do its work right now?"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from node.config import StorageConfig
from node.db.migrate import is_current


@dataclass(frozen=True)
class Check:
    """One readiness check: its name, whether it passed, and why in a few words."""

    name: str
    ok: bool
    detail: str


def readiness(engine: Engine, storage: StorageConfig) -> list[Check]:
    """Every check, in a fixed order; the process is ready when all pass."""
    return [_database(engine), _writable(storage), _free_space(storage)]


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
