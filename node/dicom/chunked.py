"""Routes pynetdicom's chunked C-STORE spooling into our SpoolFile, inside the store's incoming folder.

pynetdicom (with STORE_RECV_CHUNKED_DATASET) writes each arriving P-DATA fragment to a
NamedTemporaryFile. Giving it a SpoolFile instead puts the bytes on the store's filesystem
(so the final rename is atomic) and hashes them while the rest of the data set is still on the wire.
The File Meta it writes first is encoded directly rather than through pydicom's writer.
Each spool is remembered under its association, so an aborted transfer's file is closed and kept
aside when the connection closes instead of leaking its descriptor.

The middle of a data set takes a shorter way (:class:`DirectFragments`): a P-DATA-TF PDU that holds one
data set fragment that is not the last, for the C-STORE being spooled, is written to its spool below
pynetdicom, which otherwise decodes it into objects, queues it as an event, runs its state machine (which
stays in Sta6) and copies the fragment again on its way to the file. The command, the first fragment and
the last one (which completes the message), and every other PDU, still go through pynetdicom. How these are
put in pynetdicom's way is node.dicom.seams' (``SPOOLING`` is what it installs).
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
from typing import Any, Protocol

from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, dsutils
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association

from node.dicom import seams
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
    assoc = seams.dul_association()
    route = _routes.get(assoc.ae) if assoc is not None else None
    if assoc is None or route is None:  # an AE that is not ours: pynetdicom's own behaviour
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    spool = SpoolFile(route.directory, refused=route.refusal())
    with _lock:
        _spools[spool.name] = spool
        owned = _by_association.setdefault(assoc, [])
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


SPOOLING = seams.Spooling(_spool_factory, _create_file_meta, _write_file_meta_info)
"""What node.dicom.seams.install has pynetdicom spool chunked C-STOREs with."""


def route_spools(ae: ApplicationEntity, route: SpoolRoute) -> None:
    """Make C-STOREs received by ``ae`` spool as SpoolFiles along ``route`` (once seams.install(SPOOLING) ran)."""
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


class PeekableSocket(Protocol):
    """What DirectFragments reads through (the gate's GuardedSocket)."""

    def peek(self, size: int) -> bytes: ...

    def read(self, size: int) -> bytearray: ...


_PDATA_START = struct.Struct(">BBLLBB")  # PDU type, reserved, PDU length; PDV item length, context ID, control


class DirectFragments:
    """Writes the middle fragments of the data set ``assoc`` is spooling straight to the spool.

    Called by the guarded socket whenever pynetdicom is about to read a PDU header: while the next PDU is one
    data set fragment that is not the last, it is read (through ``read``, so the guard checks it as ever) and
    written here, and the next one is looked at. It waits for a PDU's first bytes exactly as pynetdicom's own
    read would (only once a PDU has begun to arrive), and restarts pynetdicom's idle timer for each PDU.
    """

    def __init__(self, assoc: Association, sock: PeekableSocket) -> None:
        self._assoc = assoc
        self._sock = sock

    def _spool(self) -> SpoolFile | None:
        spool = seams.spooling_file(self._assoc)
        return spool if isinstance(spool, SpoolFile) and not spool.completed else None

    def __call__(self) -> None:
        while (spool := self._spool()) is not None:
            head = self._sock.peek(6)
            if len(head) < 6 or head[0] != 0x04 or struct.unpack(">L", head[2:6])[0] < 6:
                return
            head = self._sock.peek(_PDATA_START.size)
            if len(head) < _PDATA_START.size:
                return
            _, _, pdu_length, item_length, _, control = _PDATA_START.unpack(head)
            if item_length + 4 != pdu_length or control & 0x03:  # several PDVs, a command, or the last fragment
                return
            pdu = self._sock.read(6 + pdu_length)
            if len(pdu) < 6 + pdu_length:
                return  # closed mid-PDU: pynetdicom's next read sees the connection closed
            spool.write(memoryview(pdu)[_PDATA_START.size:])
            seams.restart_idle_timer(self._assoc)
