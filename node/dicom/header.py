"""A fast reader of the few top-level attributes the receiver indexes, straight from a Part 10 file's bytes.

pydicom builds a full element model for every attribute it meets; the receiver only needs a
dozen values from groups 0008-0020, which come first in every data set. This scanner walks
the little-endian element headers (explicit or implicit VR), skips sequences, and stops past
the last wanted tag. Anything it does not handle (deflate, big endian, odd encodings) returns
None, and the caller falls back to pydicom. Text values are decoded with the data set's Specific
Character Set; UIDs are returned as sent (less a trailing NUL pad), for the receiver to validate.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.charset import convert_encodings, decode_bytes

# Tag -> keyword for what the index needs (all in groups 0008-0020).
WANTED = {
    0x00080005: "SpecificCharacterSet", 0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate", 0x00080050: "AccessionNumber", 0x00080060: "Modality",
    0x00081030: "StudyDescription", 0x0008103E: "SeriesDescription", 0x00100010: "PatientName",
    0x00100020: "PatientID", 0x00100030: "PatientBirthDate", 0x00180015: "BodyPartExamined",
    0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID", 0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
}
_LAST = max(WANTED)
_UIDS = {0x00080016, 0x00080018, 0x0020000D, 0x0020000E}
_TEXT = {0x00080050, 0x00081030, 0x0008103E, 0x00100010, 0x00100020}  # decoded with the Specific Character Set
_PN_DELIMITERS = {0x5C, 0x3D, 0x5E}  # \\ = ^: where ISO 2022 escapes reset
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_EXPLICIT_LE, _IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
_ENCAPSULATED_PREFIXES = ("1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5")
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_HEAD_BYTES = 65536


class _Unsupported(Exception):
    pass


def _explicit_for(syntax: str) -> bool | None:
    if syntax == _EXPLICIT_LE or syntax.startswith(_ENCAPSULATED_PREFIXES):
        return True
    if syntax == _IMPLICIT_LE:
        return False
    return None  # deflated, big endian, private: let pydicom handle it


def _element(buf: bytes, pos: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, vr, value length, value offset) of the element at ``pos``."""
    if pos + 8 > len(buf):
        raise _Unsupported("header runs past the bytes read")
    group, element = struct.unpack_from("<HH", buf, pos)
    tag = (group << 16) | element
    if group == 0xFFFE or not explicit:
        return tag, None, struct.unpack_from("<I", buf, pos + 4)[0], pos + 8
    vr = buf[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise _Unsupported("header runs past the bytes read")
        return tag, vr, struct.unpack_from("<I", buf, pos + 8)[0], pos + 12
    if not vr.isalpha() or not vr.isupper():
        raise _Unsupported("not an explicit VR")
    return tag, vr, struct.unpack_from("<H", buf, pos + 6)[0], pos + 8


def _skip_undefined(buf: bytes, pos: int, explicit: bool, end_tag: int) -> int:
    """Position just after the delimiter ``end_tag`` closing an undefined-length sequence or item."""
    while True:
        tag, vr, length, value = _element(buf, pos, explicit)
        if tag == end_tag:
            return value
        if tag == _ITEM:
            pos = _skip_undefined(buf, value, explicit, _ITEM_END) if length == _UNDEFINED else value + length
        elif length == _UNDEFINED:
            pos = _skip_undefined(buf, value, explicit, _SEQ_END)
        else:
            pos = value + length


def _encodings(raw: bytes) -> list[str]:
    """Python codecs for a Specific Character Set value (PS3.5 6.1; unknown terms raise LookupError)."""
    terms = [t.strip(" \x00") for t in raw.decode("ascii").split("\\")]
    return convert_encodings([t or "ISO_IR 6" for t in terms])


_DEFAULT_ENCODINGS = convert_encodings(["ISO_IR 6"])


def _value(tag: int, raw: bytes, encodings: list[str]) -> str:
    """A value as the index stores it: UIDs and code strings as sent (less the padding byte), text decoded."""
    if tag in _UIDS:
        return raw.decode("latin-1").removesuffix("\x00")
    if tag in _TEXT:
        return decode_bytes(raw, encodings, _PN_DELIMITERS).strip(" \x00")
    return raw.decode("latin-1").strip(" \x00")


def scan(path: Path, transfer_syntax: str) -> dict[str, str] | None:
    """The wanted attributes as stripped strings (absent ones omitted), or None if this scanner cannot say."""
    explicit = _explicit_for(transfer_syntax)
    if explicit is None:
        return None
    with open(path, "rb") as fh:
        buf = fh.read(_HEAD_BYTES)
    if buf[128:132] != b"DICM":
        return None
    try:
        # File Meta: explicit VR LE, length given by (0002,0000).
        tag, _, length, value = _element(buf, 132, True)
        if tag != 0x00020000 or length != 4:
            return None
        pos = value + 4 + struct.unpack_from("<I", buf, value)[0]
        found: dict[str, str] = {}
        encodings = _DEFAULT_ENCODINGS
        while pos < len(buf):
            tag, vr, length, value = _element(buf, pos, explicit)
            if tag > _LAST:
                return found
            if length == _UNDEFINED:
                if vr not in (None, b"SQ", b"UN"):
                    return None
                pos = _skip_undefined(buf, value, explicit, _SEQ_END)
                continue
            if tag in WANTED:
                if value + length > len(buf):
                    return None
                raw = bytes(buf[value:value + length])
                if tag == 0x00080005:
                    encodings = _encodings(raw)
                found[WANTED[tag]] = _value(tag, raw, encodings)
            pos = value + length
    except (_Unsupported, struct.error, LookupError, ValueError):
        return None
    if pos == len(buf) < _HEAD_BYTES:
        return found  # the whole file was read and ended cleanly inside the wanted groups
    return None  # ran out of the bytes read before the end of group 0020
