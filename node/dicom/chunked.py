"""Routes pynetdicom's chunked C-STORE spooling into our SpoolFile, inside the store's incoming folder.

pynetdicom (with STORE_RECV_CHUNKED_DATASET) writes each arriving P-DATA fragment to a
NamedTemporaryFile. Giving it a SpoolFile instead puts the bytes on the store's filesystem
(so the final rename is atomic) and hashes them while the rest of the data set is still on the wire.
The File Meta it writes first is encoded directly rather than through pydicom's writer.
Each spool is remembered under its association, so an aborted transfer's file is closed and kept
aside when the connection closes instead of leaking its descriptor.
"""

from __future__ import annotations

import re
import struct
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config, dimse_messages, dsutils
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


_SHORT = struct.Struct("<HH2sH")  # explicit VR little endian element header, 2-byte length
_PLAIN_UID = re.compile(r"[0-9.]{1,64}")


@dataclass(frozen=True)
class _EncodedMeta:
    """A File Meta Information group already encoded: what pydicom writes for pynetdicom's create_file_meta."""

    encoded: bytes


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 2, element, vr, len(value)) + value
    return _SHORT.pack(2, element, vr, len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def _create_file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> Any:
    """pynetdicom's create_file_meta for the spool's File Meta, encoded directly (a tenth of pydicom's time) when
    the UIDs are plain digits and dots; anything else goes through pydicom exactly as before."""
    if not all(_PLAIN_UID.fullmatch(str(uid)) for uid in (sop_class_uid, sop_instance_uid, transfer_syntax)):
        return dsutils.create_file_meta(sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid,
                                        transfer_syntax=transfer_syntax)
    body = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", _padded(str(sop_class_uid), b"\x00")),
        _element(0x0003, b"UI", _padded(str(sop_instance_uid), b"\x00")),
        _element(0x0010, b"UI", _padded(str(transfer_syntax), b"\x00")),
        _element(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
        _element(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
    ))
    return _EncodedMeta(_element(0x0000, b"UL", struct.pack("<I", len(body))) + body)


def _write_file_meta_info(fp: Any, file_meta: Any) -> None:
    if isinstance(file_meta, _EncodedMeta):
        fp.write(file_meta.encoded)
    else:
        write_file_meta_info(fp, file_meta)


def route_spools(ae: ApplicationEntity, route: SpoolRoute) -> None:
    """Make C-STOREs received by ``ae`` spool as SpoolFiles along ``route``."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _spool_factory  # type: ignore[assignment]
    dimse_messages.create_file_meta = _create_file_meta  # type: ignore[assignment]
    dimse_messages.write_file_meta_info = _write_file_meta_info  # type: ignore[assignment]
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
