"""The HL7 v2.5.1 channel: an ORU^R01 per notification over MLLP (optional TLS) to a RIS or worklist, and the
strict reading of its ACK.

An acknowledgement counts only when the reply parses as HL7, is an ACK, MSA-1 is AA (or CA, commit accept) and
MSA-2 echoes our MSH-10. AE, AR, CE, CR, another control ID, garbage, a closed connection or a timeout are
failures, each with its reason (retried with backoff, then a dead letter).

Message: MSH (UTF-8 declared in MSH-18), PID (when the channel carries identifiers), ORC and OBR (placer and filler
order number: the accession number; OBR-5 priority S for a suspected positive, else R; OBR-25 result status F,
or C for a correction or withdrawal), then OBX: the decision (CWE, abnormal flag A when suspected positive), its
reason (TX), the Study Instance UID (ST, 113014^Study Instance UID^DCM), the model, and per finding (sub-ID n)
its type (CWE), certainty (NM, percent) and where it is (TX).
"""

from __future__ import annotations

from datetime import datetime, timezone

import hl7

from node.config import NotifyChannel
from node.delivery.scu import client_tls_context
from node.notify.channel import Outbound, SendResult, abridged
from node.notify.content import Revision
from node.notify.mllp import MllpError, exchange

ACCEPTED = frozenset({"AA", "CA"})
VERSION = "2.5.1"
_DECISIONS = {"suspected_positive": "Suspected positive (urgent finding)", "negative": "No urgent finding",
              "not_analysed": "Not analysed by the AI"}


def escape(text: str) -> str:
    """``text`` as an HL7 field value: the delimiters escaped, line breaks as spaces."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("~", "\\R\\")
    return out.replace("&", "\\T\\").replace("\r", " ").replace("\n", " ")


def person_name(dicom_name: str) -> str:
    """A DICOM person name as HL7 XPN: its first non-empty group (alphabetic, else ideographic, else phonetic),
    components family^given^middle^prefix^suffix kept as components, each escaped."""
    group = next((g for g in dicom_name.split("=") if g), "")
    return "^".join(escape(part) for part in group.split("^"))


def _segment(*fields: str) -> str:
    return "|".join(fields).rstrip("|")


def build_oru(item: Outbound, channel: NotifyChannel, at: datetime | None = None) -> str:
    """The ORU^R01 of ``item`` (segments separated by CR)."""
    now = (at or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")
    p = item.payload
    ids = item.identifiers
    accession = escape(ids.accession_number) if ids is not None else ""
    status = "F" if item.revision is Revision.ORIGINAL else "C"
    urgent = item.decision == "suspected_positive"
    segments = [_segment("MSH", "^~\\&", escape(channel.sending_application), escape(channel.sending_facility),
                         escape(channel.receiving_application), escape(channel.receiving_facility), now, "",
                         "ORU^R01^ORU_R01", item.message_id, "P", VERSION, "", "", "AL", "NE", "", "UNICODE UTF-8")]
    if ids is not None:
        issuer = f"^^^{escape(ids.issuer_of_patient_id)}" if ids.issuer_of_patient_id else ""
        segments.append(_segment("PID", "1", "", f"{escape(ids.patient_id)}{issuer}", "", person_name(ids.patient_name),
                                 "", escape(ids.birth_date), escape(ids.sex)))
    segments.append(_segment("ORC", "RE", accession, accession, "", "CM"))
    model = p.get("model") or {}
    segments.append(_segment("OBR", "1", accession, accession, "CTAI^CT AI triage^L", "S" if urgent else "R", "", now,
                             *[""] * 17, status))
    obx: list[list[str]] = [
        ["CWE", "TRIAGE^Triage decision^L", "", f"{p['decision']}^{escape(_DECISIONS.get(p['decision'], ''))}^L",
         "", "", "A" if urgent else "N"],
        ["TX", "REASON^Decision reason^L", "", escape(p.get("reason") or "")],
        ["ST", "113014^Study Instance UID^DCM", "", escape(p["study_instance_uid"])],
        ["ST", "MODEL^Algorithm^L", "", escape(f"{model.get('name') or ''} {model.get('version') or ''}".strip())],
    ]
    if item.revision is Revision.WITHDRAWAL:
        obx.append(["TX", "REVISION^Revision^L", "", "The earlier AI result for this study is withdrawn"])
    for n, finding in enumerate(p.get("findings", []), start=1):
        code = finding["finding_type"]
        obx.append(["CWE", "121071^Finding^DCM", str(n),
                    f"{escape(code['value'])}^{escape(code['meaning'])}^{escape(code['scheme'])}", "", "",
                    "A" if finding.get("urgent") else ""])
        obx.append(["NM", "111012^Certainty of Finding^DCM", str(n), f"{finding['score'] * 100:.1f}", "%^percent^UCUM"])
        centre = ", ".join(f"{v:.1f}" for v in finding["centre_mm"])
        size = " x ".join(f"{v:.1f}" for v in finding["size_mm"])
        obx.append(["TX", "LOCATION^Location^L", str(n), escape(f"centre (LPS) {centre} mm, size {size} mm, "
                                                                  f"tracking UID {finding.get('tracking_uid') or '-'}")])
    for index, (value_type, identifier, sub_id, value, *rest) in enumerate(obx, start=1):
        units, ranges, flag = (rest + ["", "", ""])[:3]
        segments.append(_segment("OBX", str(index), value_type, identifier, sub_id, value, units, ranges, flag,
                                 "", "", status))
    return "\r".join(segments) + "\r"


def read_ack(reply: bytes, control_id: str) -> SendResult:
    """Whether ``reply`` acknowledges the message ``control_id`` (see the module's rules)."""
    text = reply.decode("utf-8", errors="replace")
    shown = abridged(text.replace("\r", "\n").strip())
    try:
        message = hl7.parse(text.strip().replace("\n", "\r"))
        msh, msa = message.segment("MSH"), message.segment("MSA")
    except (hl7.ParseException, KeyError, IndexError, ValueError, TypeError):
        return SendResult(False, "the reply is not an HL7 ACK (no MSH and MSA segments)", shown)
    kind = str(msh[9]).split("^")[0] if len(msh) > 9 else ""
    code = str(msa[1]) if len(msa) > 1 else ""
    echoed = str(msa[2]) if len(msa) > 2 else ""
    reason = str(msa[3]) if len(msa) > 3 else ""
    if kind != "ACK":
        return SendResult(False, f"the reply is a {kind or 'message without MSH-9'}, not an ACK", shown)
    if echoed != control_id:
        return SendResult(False, f"the ACK names control ID {echoed!r}, not ours {control_id!r}", shown)
    if code not in ACCEPTED:
        return SendResult(False, f"the RIS answered {code or 'an empty MSA-1'}" + (f": {reason}" if reason else ""),
                          shown)
    return SendResult(True, None, shown, {"msa_1": code, "msa_2": echoed})


class Hl7Channel:
    """ORU^R01 over MLLP to one RIS."""

    def __init__(self, config: NotifyChannel) -> None:
        if config.host is None or config.port is None:
            raise ValueError(f"notify channel {config.name!r} needs host and port")
        self.config, self.host, self.port = config, config.host, config.port
        self._tls = client_tls_context(config.tls)

    def send(self, item: Outbound) -> SendResult:
        message = build_oru(item, self.config).encode("utf-8")
        try:
            reply = exchange(self.host, self.port, message, self.config.timeout_s, self._tls)
        except MllpError as exc:
            return SendResult(False, str(exc))
        return read_ack(reply, item.message_id)
