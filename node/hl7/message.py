"""ORU^R01 messages (python-hl7 0.4.5): bytes to text, the report's fields, and the ACK each one gets.

Character set, in this order: bytes that are valid UTF-8 are UTF-8 (ASCII included). Otherwise a charset
declared in MSH-18 (HL7 table 0211: ASCII, 8859/1 ... 8859/9, 8859/15, UNICODE UTF-8, ISO IR6/IR100/...)
must decode them, else AR. Without MSH-18 they are read as ISO 8859-1 (what 8-bit RIS feeds send), unless
they hold C1 control bytes (0x80-0x9F), which no latin-1 report text has: AR. A declared charset this
module does not know, on bytes that are not UTF-8: AR.

Acknowledgement codes (MSA-1), with MSA-2 echoing MSH-10 and the reason in MSA-3:

- AR, rejected, the message itself is wrong and resending it will not help: text that no rule above
  decodes; not HL7 (no MSH segment first, or python-hl7 cannot parse it); MSH-9 not ORU^R01; no MSH-10;
  no PID or no OBR segment.
- AE, application error, the message is well formed but could not be recorded: no report text (no OBX of
  type TX/FT/ST with a value that is not a UID); no study it names (unknown, or ambiguous: see
  node.labels.radiology_reports); the database failed.
- AA: recorded and labelled.

Where the study is named: a Study Instance UID in ZDS-1 (component 1, as IHE's ZDS segment carries it) or as
the whole value of an OBX of type RP, ST or TX (a UID-shaped value, e.g. OBX-3 113014^Study Instance
UID^DCM); accession candidates OBR-3 (filler order number), OBR-18 (placer field 1), OBR-2 (placer order
number), ORC-3, ORC-2, component 1 of each. Result status: OBR-25, else the first text OBX's OBX-11.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum

import hl7
from hl7.containers import Message, Segment

from node.logging import phi_registry


class AckCode(StrEnum):
    """MSA-1 (HL7 table 0008, original mode)."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


_CHARSETS = {
    "ASCII": "ascii", "ISO IR6": "ascii", "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8",
    "8859/1": "iso8859-1", "ISO IR100": "iso8859-1", "8859/2": "iso8859-2", "ISO IR101": "iso8859-2",
    "8859/3": "iso8859-3", "ISO IR109": "iso8859-3", "8859/4": "iso8859-4", "ISO IR110": "iso8859-4",
    "8859/5": "iso8859-5", "ISO IR144": "iso8859-5", "8859/6": "iso8859-6", "ISO IR127": "iso8859-6",
    "8859/7": "iso8859-7", "ISO IR126": "iso8859-7", "8859/8": "iso8859-8", "ISO IR138": "iso8859-8",
    "8859/9": "iso8859-9", "ISO IR148": "iso8859-9", "8859/15": "iso8859-15",
}
_C1 = re.compile("[\x80-\x9f]")
_UID = re.compile(r"^[0-2](?:\.(?:0|[1-9][0-9]*))+$")
_TEXT_TYPES = frozenset({"TX", "FT", "ST"})
_UID_TYPES = frozenset({"RP", "ST", "TX"})
_PID_IDENTIFIER_FIELDS = (2, 3, 4, 5, 6, 7, 9, 18, 19)  # IDs, names, mother's maiden name, birth date, account, SSN
ACK_VERSION = "2.5"


class Rejected(Exception):
    """The message gets ``code`` (AR or AE) with ``reason``; ``message`` when it parsed far enough for an ACK."""

    def __init__(self, code: AckCode, reason: str, message: Message | None = None, charset: str = "utf-8") -> None:
        super().__init__(reason)
        self.code, self.reason, self.message, self.charset = code, reason, message, charset


@dataclass(frozen=True)
class OruReport:
    """What an ORU^R01 says of its report."""

    message: Message
    charset: str
    control_id: str
    text: str
    study_instance_uids: list[str]
    accession_numbers: list[str]
    result_status: str | None
    identifiers: list[str] = field(default_factory=list)


def _declared_charset(raw: bytes) -> str:
    """MSH-18 as written (upper case), read from the first segment without decoding the rest."""
    first = raw.lstrip().split(b"\r", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    if not first.startswith("MSH") or len(first) < 4:
        return ""
    fields = first.split(first[3])
    return fields[17].split("~")[0].strip().upper() if len(fields) > 17 else ""


def decode(raw: bytes) -> tuple[str, str]:
    """(text, charset name) by the rules in the module docstring; raises Rejected (AR)."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    declared = _declared_charset(raw)
    if declared:
        charset = _CHARSETS.get(declared)
        if charset is None:
            raise Rejected(AckCode.REJECT, f"text is not UTF-8 and MSH-18 charset {declared!r} is not supported")
        try:
            return raw.decode(charset), charset
        except UnicodeDecodeError:
            raise Rejected(AckCode.REJECT, f"text is not valid {declared} as MSH-18 declares") from None
    text = raw.decode("latin-1")
    if _C1.search(text):
        raise Rejected(AckCode.REJECT, "text is not UTF-8 and holds bytes no latin-1 text has; declare MSH-18")
    return text, "iso8859-1"


def _field(segment: Segment, index: int) -> str:
    return str(segment(index)) if index < len(segment) else ""


def _repetitions(segment: Segment, index: int) -> list[str]:
    """Each repetition of a field, as written."""
    text = _field(segment, index)
    return [part for part in text.split("~")] if text else []


def _component(value: str, index: int = 1) -> str:
    parts = value.split("^")
    return parts[index - 1].strip() if len(parts) >= index else ""


def _segments(message: Message, name: str) -> list[Segment]:
    return [segment for segment in message if str(segment[0]) == name]


def _identifiers(message: Message, accessions: list[str]) -> list[str]:
    values: list[str] = list(accessions)
    for pid in _segments(message, "PID"):
        for index in _PID_IDENTIFIER_FIELDS:
            for repetition in _repetitions(pid, index):
                values.append(_component(repetition) if index not in (5, 6, 9) else repetition.strip("^"))
    return [v for v in values if v]


def _parse(text: str, charset: str) -> Message:
    """python-hl7's message of ``text`` (segments may end in CR, LF or CR LF); raises Rejected (AR)."""
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip()
    if not text.startswith("MSH") or len(text) < 8:
        raise Rejected(AckCode.REJECT, "not an HL7 message: it does not begin with an MSH segment", charset=charset)
    try:
        message = hl7.parse(text)
        message.segment("MSH")
    except Exception:  # python-hl7 raises ParseException, ValueError, IndexError ... on malformed input
        raise Rejected(AckCode.REJECT, "not an HL7 message python-hl7 can parse", charset=charset) from None
    return message


def _accessions(message: Message) -> list[str]:
    """Component 1 of OBR-3, OBR-18, OBR-2 (the first OBR), ORC-3, ORC-2 (the first ORC), blanks included."""
    return [_component(_field(segment, index)) for segment, index in
            [*((o, i) for o in _segments(message, "OBR")[:1] for i in (3, 18, 2)),
             *((o, i) for o in _segments(message, "ORC")[:1] for i in (3, 2))]]


def parse(raw: bytes) -> OruReport:
    """Read one MLLP block as an ORU^R01 report. Its patient identifiers are taught to the log scrubber
    before anything else happens. Raises Rejected with the ACK code and reason."""
    try:
        text, charset = decode(raw)
    except Rejected as rejected:
        try:  # read as latin-1 (every byte is a character) for the scrubber and the ACK's MSA-2 only
            rejected.message = _parse(raw.decode("latin-1"), "iso8859-1")
            phi_registry.remember(*_identifiers(rejected.message, _accessions(rejected.message)))
        except Rejected:
            pass
        raise
    message = _parse(text, charset)
    msh = message.segment("MSH")
    orders = _segments(message, "OBR")
    accessions = _accessions(message)
    phi_registry.remember(*_identifiers(message, accessions))
    kind = (_component(_field(msh, 9), 1), _component(_field(msh, 9), 2))
    if kind != ("ORU", "R01"):
        raise Rejected(AckCode.REJECT, f"message type {_field(msh, 9) or '(none)'} is not ORU^R01", message, charset)
    control_id = _field(msh, 10).strip()
    if not control_id:
        raise Rejected(AckCode.REJECT, "no message control ID (MSH-10)", message, charset)
    missing = [name for name in ("PID", "OBR") if not _segments(message, name)]
    if missing:
        raise Rejected(AckCode.REJECT, f"no {' or '.join(missing)} segment", message, charset)
    uids = [_component(_field(z, 1)) for z in _segments(message, "ZDS")]
    lines: list[str] = []
    status = _component(_field(orders[0], 25)).upper()
    for obx in _segments(message, "OBX"):
        value_type = _component(_field(obx, 2)).upper()
        values = _repetitions(obx, 5)
        if value_type in _UID_TYPES and len(values) == 1 and _UID.match(_component(values[0])):
            uids.append(_component(values[0]))
            continue
        if value_type in _TEXT_TYPES:
            found = [message.unescape(value).replace("\r", "\n") for value in values]
            if any(line.strip() for line in found) and not lines and not status:
                status = _component(_field(obx, 11)).upper()
            lines += found
    report = "\n".join(lines).strip()
    if not report:
        raise Rejected(AckCode.ERROR, "no report text (no OBX of type TX, FT or ST with a value)", message, charset)
    return OruReport(message, charset, control_id, report, [u for u in uids if _UID.match(u)],
                     [a for a in accessions if a], status or None, _identifiers(message, accessions))


def new_control_id() -> str:
    """A message control ID for our ACK: 20 characters, unique."""
    return "CTN" + uuid.uuid4().hex[:17].upper()


def ack(code: AckCode, reason: str | None, message: Message | None, charset: str = "utf-8") -> bytes:
    """The ACK of ``message`` (sending and receiving application and facility swapped, a new control ID,
    ACK^<trigger>^ACK, MSA-2 = its MSH-10), or a bare ACK^R01^ACK with an empty MSA-2 for a message that
    did not parse; ``reason`` goes into MSA-3. Encoded as the message was (UTF-8 when it was not read)."""
    response: Message | None = None
    if message is not None:
        try:
            response = message.create_ack(str(code), message_id=new_control_id())
        except (IndexError, KeyError, TypeError):  # an MSH without MSH-9.2 or other fields python-hl7 copies
            response = None
    if response is None:
        now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
        msh = message.segment("MSH") if message is not None else None
        sender, facility, receiver, receiver_facility, control_id = (
            [_field(msh, i) for i in (5, 6, 3, 4, 10)] if msh is not None else ["CTNODE", "", "", "", ""])
        response = hl7.parse(f"MSH|^~\\&|{sender}|{facility}|{receiver}|{receiver_facility}|{now}||ACK^R01^ACK|"
                             f"{new_control_id()}|P|{ACK_VERSION}\rMSA|{code}|{control_id}")
    if reason:
        response.segment("MSA").assign_field(response.escape(reason), 3)
    return str(response).encode(charset, errors="replace")
