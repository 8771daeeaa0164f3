"""The HL7 channel against a real MLLP server (python-hl7's): the ORU it writes, and which replies count as an
acknowledgement (only AA or CA echoing our MSH-10)."""

from __future__ import annotations

from collections.abc import Iterator

import hl7
import pytest

from node.config import NotifyChannel
from node.notify.channel import Outbound, message_id
from node.notify.content import Identifiers, Revision
from node.notify.oru import Hl7Channel, build_oru, escape, read_ack
from tests.integration.ris import Ris
from tests.support import free_port

PAYLOAD = {
    "run_id": 7, "study_instance_uid": "1.2.826.0.1.3680043.8.498.77", "series_instance_uid": "1.2.3.4",
    "study_version": 1, "model": {"name": "ctnode-head", "version": "0.2.0"}, "decision": "suspected_positive",
    "reason": "1 urgent finding(s); first hyperdense_lesion score 0.81, 15 mm",
    "findings": [{"label": "hyperdense_lesion", "score": 0.81,
                  "finding_type": {"value": "274100004", "scheme": "SCT", "meaning": "Cerebral hemorrhage"},
                  "centre_mm": [-26.6, -59.2, 36.4], "size_mm": [14.3, 14.5, 13.1], "tracking_uid": "2.25.1",
                  "urgent": True}]}
IDS = Identifiers(patient_name="Müller^Jürgen", patient_id="MRN|42", issuer_of_patient_id="HOSP", birth_date="19500101",
                  sex="M", accession_number="ACC-7")


def _item(revision: Revision = Revision.ORIGINAL, notification_id: int = 5) -> Outbound:
    return Outbound(notification_id, message_id(notification_id), revision, None, PAYLOAD["decision"], PAYLOAD, IDS)


@pytest.fixture
def ris() -> Iterator[Ris]:
    server = Ris(free_port()).start()
    yield server
    server.stop()


def _channel(port: int, timeout_s: float = 3.0) -> Hl7Channel:
    return Hl7Channel(NotifyChannel(name="ris", kind="hl7", host="127.0.0.1", port=port, timeout_s=timeout_s,
                                    receiving_application="RIS"))


def test_the_oru_carries_the_patient_order_decision_and_each_finding() -> None:
    channel = NotifyChannel(name="ris", kind="hl7", host="h", port=1)
    message = hl7.parse(build_oru(_item(), channel))
    assert str(message.segment("MSH")(9)) == "ORU^R01^ORU_R01" and str(message.segment("MSH")(10)) == "CTN0000000005"
    assert str(message.segment("MSH")(12)) == "2.5.1" and str(message.segment("MSH")(18)) == "UNICODE UTF-8"
    pid = message.segment("PID")
    assert str(pid(3)) == "MRN\\F\\42^^^HOSP" and str(pid(5)) == "Müller^Jürgen" and str(pid(7)) == "19500101"
    obr = message.segment("OBR")
    assert str(obr(2)) == str(obr(3)) == "ACC-7" and str(obr(5)) == "S" and str(obr(25)) == "F"
    obx = {str(s(3)).split("^")[0] + ":" + str(s(4)): s for s in message.segments("OBX")}
    assert str(obx["TRIAGE:"](5)).startswith("suspected_positive^") and str(obx["TRIAGE:"](8)) == "A"
    assert str(obx["113014:"](5)) == PAYLOAD["study_instance_uid"]
    assert str(obx["121071:1"](5)) == "274100004^Cerebral hemorrhage^SCT" and str(obx["111012:1"](5)) == "81.0"
    assert all(str(s(11)) == "F" for s in message.segments("OBX"))


def test_a_correction_has_result_status_c_and_a_webhook_style_channel_sends_no_pid() -> None:
    channel = NotifyChannel(name="ris", kind="hl7", host="h", port=1)
    item = _item(Revision.CORRECTION)
    bare = Outbound(item.id, item.message_id, item.revision, None, item.decision, item.payload, None)
    message = hl7.parse(build_oru(bare, channel))
    assert str(message.segment("OBR")(25)) == "C" and all(str(s(11)) == "C" for s in message.segments("OBX"))
    with pytest.raises(KeyError):
        message.segment("PID")


def test_escape_keeps_delimiters_out_of_fields() -> None:
    assert escape("a|b^c~d\\e&f\rg") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f g"


@pytest.mark.parametrize(("ack", "ok", "why"), [
    ("MSH|^~\\&|RIS||CTNODE||20260101||ACK^R01^ACK|R1|P|2.5.1\rMSA|AA|CTN0000000005", True, None),
    ("MSH|^~\\&|RIS||CTNODE||20260101||ACK^R01^ACK|R1|P|2.5.1\rMSA|CA|CTN0000000005", True, None),
    ("MSH|^~\\&|RIS||CTNODE||20260101||ACK^R01^ACK|R1|P|2.5.1\rMSA|AE|CTN0000000005|no such order", False,
     "the RIS answered AE: no such order"),
    ("MSH|^~\\&|RIS||CTNODE||20260101||ACK^R01^ACK|R1|P|2.5.1\rMSA|AR|CTN0000000005", False, "the RIS answered AR"),
    ("MSH|^~\\&|RIS||CTNODE||20260101||ACK^R01^ACK|R1|P|2.5.1\rMSA|AA|CTN0000000004", False,
     "the ACK names control ID 'CTN0000000004', not ours 'CTN0000000005'"),
    ("MSH|^~\\&|RIS||CTNODE||20260101||ORU^R01|R1|P|2.5.1\rMSA|AA|CTN0000000005", False,
     "the reply is a ORU, not an ACK"),
    ("ACK AA CTN0000000005", False, "the reply is not an HL7 ACK (no MSH and MSA segments)"),
])
def test_only_an_accepting_ack_that_echoes_our_control_id_counts(ack: str, ok: bool, why: str | None) -> None:
    result = read_ack(ack.encode(), "CTN0000000005")
    assert result.acknowledged is ok and result.error == why


def test_a_real_ris_acknowledges_the_oru(ris: Ris) -> None:
    result = _channel(ris.port).send(_item())
    assert result.acknowledged, result.error
    assert result.acknowledgement == {"msa_1": "AA", "msa_2": "CTN0000000005"}
    (received,) = ris.received
    assert received.control_id == "CTN0000000005" and str(received.message.segment("PID")(5)) == "Müller^Jürgen"


@pytest.mark.parametrize(("mode", "why"), [
    ("error", "the RIS answered AE"),
    ("wrong_id", "the ACK names control ID 'SOMEONE-ELSE', not ours 'CTN0000000005'"),
    ("garbage", "the reply is not an HL7 ACK (no MSH and MSA segments)"),
    ("drop", "the peer closed the connection after no reply (0 bytes)"),
    ("silent", "no acknowledgement from 127.0.0.1:{port} within 1 s"),
])
def test_a_ris_that_does_not_accept_is_a_failure_with_its_reason(ris: Ris, mode: str, why: str) -> None:
    ris.mode = mode
    result = _channel(ris.port, timeout_s=1.0).send(_item())
    assert not result.acknowledged and result.error is not None
    assert result.error.startswith(why.format(port=ris.port)), result.error


def test_a_ris_that_is_down_is_a_failure_naming_the_connection(ris: Ris) -> None:
    ris.down()
    result = _channel(ris.port).send(_item())
    assert not result.acknowledged and result.error is not None
    assert result.error.startswith(f"cannot connect to 127.0.0.1:{ris.port}: ConnectionRefusedError")
