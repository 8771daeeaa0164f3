"""Routes pynetdicom's chunked C-STORE spooling into our SpoolFile, inside the store's incoming folder.

pynetdicom (with STORE_RECV_CHUNKED_DATASET) writes each arriving P-DATA fragment to a
NamedTemporaryFile. Giving it a SpoolFile instead puts the bytes on the store's filesystem
(so the final rename is atomic) and hashes them while the rest of the data set is still on the wire.
Each spool is remembered under its association, so an aborted transfer's file is closed and kept
aside when the connection closes instead of leaking its descriptor.
"""

from __future__ import annotations

import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import _config, dimse_messages
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from node.storage.spool import SpoolFile


@dataclass(frozen=True)
class SpoolRoute:
    """Where an AE's data sets spool, and a check run before the first byte (a reason to refuse, or None)."""

    directory: Path
    refusal: Callable[[], str | None]


_routes: weakref.WeakKeyDictionary[ApplicationEntity, SpoolRoute] = weakref.WeakKeyDictionary()
_spools: weakref.WeakValueDictionary[str, SpoolFile] = weakref.WeakValueDictionary()
_by_association: weakref.WeakKeyDictionary[Association, list[SpoolFile]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _spool_factory(*args: Any, **kwargs: Any) -> Any:
    thread = threading.current_thread()
    route = None
    if isinstance(thread, DULServiceProvider):
        route = _routes.get(thread.assoc.ae)
    if route is None:  # an AE that is not ours: pynetdicom's own behaviour
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    spool = SpoolFile(route.directory, refused=route.refusal())
    with _lock:
        _spools[spool.name] = spool
        owned = _by_association.setdefault(thread.assoc, [])
        owned[:] = [s for s in owned if not s.completed]
        owned.append(spool)
    return spool


def route_spools(ae: ApplicationEntity, route: SpoolRoute) -> None:
    """Make C-STOREs received by ``ae`` spool as SpoolFiles along ``route``."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _spool_factory  # type: ignore[assignment]
    _routes[ae] = route


def spool_for(path: Path) -> SpoolFile:
    """The SpoolFile that received the data set at ``path``."""
    with _lock:
        spool = _spools.get(str(path))
    if spool is None:
        raise LookupError(f"no spool file for {path}: was route_spools() called for this AE?")
    return spool


def close_unfinished(assoc: Association) -> list[SpoolFile]:
    """Close the spools of ``assoc`` whose data set never completed; returns them (their partial files remain)."""
    with _lock:
        owned = _by_association.pop(assoc, [])
    unfinished = [s for s in owned if not s.completed]
    for spool in unfinished:
        spool.close()
    return unfinished
