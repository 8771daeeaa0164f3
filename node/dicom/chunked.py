"""Routes pynetdicom's chunked C-STORE spooling into our SpoolFile, inside the store's incoming folder.

pynetdicom (with STORE_RECV_CHUNKED_DATASET) writes each arriving P-DATA fragment to a
NamedTemporaryFile. Giving it a SpoolFile instead puts the bytes on the store's filesystem
(so the final rename is atomic) and hashes them while the rest of the data set is still on the wire.
"""

from __future__ import annotations

import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

from pynetdicom import _config, dimse_messages
from pynetdicom.ae import ApplicationEntity
from pynetdicom.dul import DULServiceProvider

from node.storage.spool import SpoolFile

_routes: weakref.WeakKeyDictionary[ApplicationEntity, Path] = weakref.WeakKeyDictionary()
_spools: weakref.WeakValueDictionary[str, SpoolFile] = weakref.WeakValueDictionary()
_lock = threading.Lock()


def _spool_factory(*args: Any, **kwargs: Any) -> Any:
    thread = threading.current_thread()
    directory = None
    if isinstance(thread, DULServiceProvider):
        directory = _routes.get(thread.assoc.ae)
    if directory is None:  # an AE that is not ours: pynetdicom's own behaviour
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    spool = SpoolFile(directory)
    with _lock:
        _spools[spool.name] = spool
    return spool


def route_spools(ae: ApplicationEntity, directory: Path) -> None:
    """Make C-STOREs received by ``ae`` spool into ``directory`` as SpoolFiles."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _spool_factory  # type: ignore[assignment]
    _routes[ae] = directory


def spool_for(path: Path) -> SpoolFile:
    """The SpoolFile that received the data set at ``path``."""
    with _lock:
        spool = _spools.get(str(path))
    if spool is None:
        raise LookupError(f"no spool file for {path}: was route_spools() called for this AE?")
    return spool
