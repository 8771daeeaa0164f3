"""The FHIR channel against a real HTTP server that validates every Bundle with the fhir.resources R4B models:
the transaction it posts (report status per revision, a correction updating the same report, identical bytes on
a retry, no Patient and no identifiers unless carried), bearer and OAuth2 client-credentials authentication, and
which answers count as an acknowledgement."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from node.config import NotifyChannel
from node.notify.channel import Outbound, message_id
from node.notify.content import Identifiers, Revision, withdrawn_findings
from node.notify.fhir import FhirChannel, build_bundle, encode, full_url
from node.notify.sender import open_channel
from tests.integration.fhir_server import FhirServer
from tests.support import free_port, require_tool

STUDY = "1.2.826.0.1.3680043.8.498.77"
PAYLOAD: dict[str, Any] = {
    "run_id": 7, "study_instance_uid": STUDY, "series_instance_uid": "1.2.826.0.1.3680043.8.498.78",
    "study_version": 1, "model": {"name": "ctnode-head", "version": "0.2.0"}, "decision": "suspected_positive",
    "reason": "1 urgent finding(s); first hyperdense_lesion score 0.81, 15 mm",
    "findings": [{"label": "hyperdense_lesion", "score": 0.81,
                  "finding_type": {"value": "274100004", "scheme": "SCT", "meaning": "Cerebral hemorrhage"},
                  "centre_mm": [-26.6, -59.2, 36.4], "size_mm": [14.3, 14.5, 13.1], "tracking_uid": "2.25.1",
                  "urgent": True},
                 {"label": "hyperdense_lesion", "score": 0.42,
                  "finding_type": {"value": "274100004", "scheme": "SCT", "meaning": "Cerebral hemorrhage"},
                  "centre_mm": [10.0, -40.0, 20.0], "size_mm": [4.0, 4.0, 3.0], "tracking_uid": "2.25.2",
                  "urgent": False}]}
NEGATIVE: dict[str, Any] = {**PAYLOAD, "decision": "negative", "reason": "no finding above the urgency threshold",
                            "findings": []}
NOT_ANALYSED: dict[str, Any] = {**PAYLOAD, "decision": "not_analysed",
                                "reason": "slice thickness 8.0 mm is above 5.0 mm", "findings": []}
FEWER: dict[str, Any] = {**PAYLOAD, "findings": PAYLOAD["findings"][:1],
                         "withdrawn_findings": withdrawn_findings(PAYLOAD, 1)}  # a correction without the second
IDS = Identifiers(patient_name="Müller^Jürgen^^Dr", patient_id="MRN-42", issuer_of_patient_id="HOSP",
                  birth_date="19500101", sex="M", accession_number="ACC-7")
SECRETS = ("Müller", "Jürgen", "MRN-42", "HOSP", "1950", "ACC-7")


def _item(revision: Revision = Revision.ORIGINAL, notification_id: int = 5, payload: dict[str, Any] = PAYLOAD,
          ids: Identifiers | None = IDS, replaces: int | None = None) -> Outbound:
    return Outbound(notification_id, message_id(notification_id), revision,
                    None if replaces is None else message_id(replaces), payload["decision"], payload, ids)


@pytest.fixture
def fhir() -> Iterator[FhirServer]:
    server = FhirServer(free_port()).start()
    yield server
    server.stop()


def _channel(url: str, timeout_s: float = 3.0, **extra: Any) -> FhirChannel:
    channel = open_channel(NotifyChannel(name="fhir", kind="fhir", url=url, timeout_s=timeout_s, **extra))
    assert isinstance(channel, FhirChannel)
    return channel


def test_an_original_is_a_valid_transaction_with_report_findings_study_and_patient(fhir: FhirServer) -> None:
    result = _channel(fhir.url).send(_item())
    assert result.acknowledged, result.error
    assert fhir.invalid == []
    (posted,) = fhir.posted
    assert posted.headers["Content-Type"].startswith("application/fhir+json")
    assert posted.json["type"] == "transaction" and posted.json["identifier"]["value"] == "CTN0000000005"
    assert [e["resource"]["resourceType"] for e in posted.json["entry"]] == [
        "Patient", "ImagingStudy", "Observation", "Observation", "DiagnosticReport"]

    report = posted.entry("DiagnosticReport")
    assert report["request"] == {"method": "PUT", "url": "DiagnosticReport?identifier=urn%3Actnode%3Anotification"
                                                          f"%7C{STUDY}%2Fctnode-head"}
    dr = report["resource"]
    assert dr["status"] == "preliminary"
    assert dr["identifier"] == [{"system": "urn:ctnode:notification", "value": f"{STUDY}/ctnode-head"}]
    assert dr["conclusion"] == PAYLOAD["reason"]
    assert dr["conclusionCode"][0]["coding"][0]["system"] == "urn:ctnode:decision"
    assert dr["conclusionCode"][0]["coding"][0]["code"] == "suspected_positive"
    assert {c["system"] for c in dr["category"][0]["coding"]} == {"http://terminology.hl7.org/CodeSystem/v2-0074"}
    assert dr["code"]["coding"][0] == {"system": "http://loinc.org", "code": "18748-4",
                                       "display": "Diagnostic imaging study"}

    study = posted.entry("ImagingStudy")
    assert study["resource"]["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY}"}
    assert study["request"]["method"] == "POST"
    assert study["request"]["ifNoneExist"] == f"identifier=urn%3Adicom%3Auid%7Curn%3Aoid%3A{STUDY}"
    assert dr["imagingStudy"] == [{"reference": study["fullUrl"]}]

    first, second = posted.resources("Observation")
    assert first["code"]["coding"] == [{"system": "http://snomed.info/sct", "code": "274100004",
                                        "display": "Cerebral hemorrhage"}]
    assert first["valueQuantity"] == {"value": 81.0, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    assert first["interpretation"][0]["coding"][0]["code"] == "A" and "interpretation" not in second
    assert "tracking UID 2.25.1" in first["note"][0]["text"] and "centre (LPS) -26.6, -59.2, 36.4 mm" in \
        first["note"][0]["text"]
    assert first["derivedFrom"] == [{"reference": study["fullUrl"]}] and first["status"] == "preliminary"
    assert dr["result"] == [{"reference": e["fullUrl"]} for e in posted.json["entry"]
                            if e["resource"]["resourceType"] == "Observation"]

    patient = posted.entry("Patient")
    assert patient["resource"]["identifier"] == [{"system": "urn:ctnode:issuer:HOSP", "value": "MRN-42"}]
    assert patient["request"] == {"method": "POST", "url": "Patient",
                                  "ifNoneExist": "identifier=urn%3Actnode%3Aissuer%3AHOSP%7CMRN-42"}
    assert patient["resource"]["name"][0]["family"] == "Müller" and patient["resource"]["birthDate"] == "1950-01-01"
    assert dr["subject"] == first["subject"] == study["resource"]["subject"] == {"reference": patient["fullUrl"]}

    locations = result.acknowledgement["locations"]  # type: ignore[index]
    assert result.acknowledgement["http_status"] == 200  # type: ignore[index]
    assert len(locations) == 5 and locations[-1].startswith("DiagnosticReport/")


def test_a_uri_issuer_is_the_system_as_it_is_and_no_issuer_no_system() -> None:
    uri = build_bundle(_item(ids=Identifiers(patient_id="42", issuer_of_patient_id="urn:oid:1.2.3")))
    assert uri["entry"][0]["resource"]["identifier"] == [{"system": "urn:oid:1.2.3", "value": "42"}]
    bare = build_bundle(_item(ids=Identifiers(patient_id="42")))
    assert bare["entry"][0]["resource"]["identifier"] == [{"value": "42"}]
    assert bare["entry"][0]["request"]["ifNoneExist"] == "identifier=42"
    none = build_bundle(_item(ids=Identifiers()))  # no Patient ID: no Patient to file on
    assert none["entry"][0]["resource"]["resourceType"] == "ImagingStudy"


@pytest.mark.parametrize(("revision", "payload", "status"), [
    (Revision.ORIGINAL, PAYLOAD, "preliminary"),
    (Revision.CORRECTION, NEGATIVE, "amended"),
    (Revision.WITHDRAWAL, NOT_ANALYSED, "entered-in-error"),
])
def test_the_report_status_follows_the_revision(fhir: FhirServer, revision: Revision, payload: dict[str, Any],
                                                status: str) -> None:
    result = _channel(fhir.url).send(_item(revision, payload=payload))
    assert result.acknowledged, result.error
    assert fhir.invalid == []
    (posted,) = fhir.posted
    dr = posted.entry("DiagnosticReport")["resource"]
    assert dr["status"] == status and dr["conclusionCode"][0]["coding"][0]["code"] == payload["decision"]
    assert all(o["status"] == status for o in posted.resources("Observation"))
    if revision is Revision.WITHDRAWAL:
        assert dr["conclusion"].startswith("The earlier AI result for this study is withdrawn.")
        assert payload["reason"] in dr["conclusion"]


def test_a_correction_and_a_withdrawal_update_the_same_report(fhir: FhirServer) -> None:
    channel = _channel(fhir.url)
    results = [channel.send(_item()),
               channel.send(_item(Revision.CORRECTION, notification_id=6, payload=NEGATIVE, replaces=5)),
               channel.send(_item(Revision.WITHDRAWAL, notification_id=9, payload=NOT_ANALYSED, replaces=6))]
    assert all(r.acknowledged for r in results), [r.error for r in results]
    reports = [r.acknowledgement["locations"][-1] for r in results]  # type: ignore[index]
    assert reports[0].rsplit("/", 3)[:2] == reports[1].rsplit("/", 3)[:2] == reports[2].rsplit("/", 3)[:2]
    assert [loc.rsplit("/", 1)[1] for loc in reports] == ["1", "2", "3"]  # versions of one DiagnosticReport
    studies = [r.acknowledgement["locations"][1] for r in results]  # type: ignore[index]
    assert len(set(studies)) == 1  # the ImagingStudy is created once
    assert {f for p in fhir.posted for f in [e["fullUrl"] for e in p.json["entry"]]}.__len__() == 5 + 3 + 3


def _current(server: FhirServer) -> dict[str, str]:
    """The status of each Observation the server holds, by its finding identity (``<key>#<n>``)."""
    return {identity.rsplit("#", 1)[1]: resource["status"] for (kind, identity), resource in server.held.items()
            if kind == "Observation"}


def test_a_correction_with_fewer_findings_withdraws_the_earlier_extra_ones() -> None:
    bundle = build_bundle(_item(Revision.CORRECTION, notification_id=6, payload=FEWER, replaces=5))
    Bundle.model_validate(bundle)
    observations = {e["resource"]["identifier"][0]["value"]: e for e in bundle["entry"]
                    if e["resource"]["resourceType"] == "Observation"}
    key = f"{STUDY}/ctnode-head"
    assert {k: e["resource"]["status"] for k, e in observations.items()} == {
        f"{key}#1": "amended", f"{key}#2": "entered-in-error"}
    withdrawn = observations[f"{key}#2"]
    assert withdrawn["request"] == {"method": "PUT", "url": f"Observation?identifier=urn%3Actnode%3Afinding%7C"
                                                            f"{STUDY}%2Fctnode-head%232"}
    assert withdrawn["resource"]["valueQuantity"]["value"] == 42.0  # the finding as it was told
    assert "tracking UID 2.25.2" in withdrawn["resource"]["note"][0]["text"]
    report = bundle["entry"][-1]["resource"]
    assert report["result"] == [{"reference": observations[f"{key}#1"]["fullUrl"]}]  # the current ones only


def test_after_a_correction_with_fewer_findings_the_server_holds_only_the_current_ones_current(
        fhir: FhirServer) -> None:
    channel = _channel(fhir.url)
    assert channel.send(_item()).acknowledged
    assert _current(fhir) == {"1": "preliminary", "2": "preliminary"}
    result = channel.send(_item(Revision.CORRECTION, notification_id=6, payload=FEWER, replaces=5))
    assert result.acknowledged, result.error
    assert fhir.invalid == [] and _current(fhir) == {"1": "amended", "2": "entered-in-error"}
    assert fhir.held[("Observation", f"urn:ctnode:finding|{STUDY}/ctnode-head#2")]["valueQuantity"]["value"] == 42.0
    withdrawal = {**NOT_ANALYSED, "withdrawn_findings": withdrawn_findings(FEWER, 0)}
    result = channel.send(_item(Revision.WITHDRAWAL, notification_id=7, payload=withdrawal, replaces=6))
    assert result.acknowledged, result.error
    assert _current(fhir) == {"1": "entered-in-error", "2": "entered-in-error"}


def test_a_retry_sends_identical_bytes_and_another_notification_other_fullurls(fhir: FhirServer) -> None:
    channel = _channel(fhir.url)
    fhir.mode = "error500"
    assert not channel.send(_item()).acknowledged
    fhir.mode = "ok"
    assert channel.send(_item()).acknowledged
    first, retry = fhir.posted
    assert first.body == retry.body
    assert encode(build_bundle(_item())) == first.body
    other = build_bundle(_item(notification_id=6))
    assert {e["fullUrl"] for e in other["entry"]}.isdisjoint(e["fullUrl"] for e in first.json["entry"])
    assert first.json["entry"][-1]["fullUrl"] == full_url("CTN0000000005", "DiagnosticReport")


def test_without_identifiers_there_is_no_patient_and_no_identifier_anywhere(fhir: FhirServer) -> None:
    result = _channel(fhir.url).send(_item(ids=None))
    assert result.acknowledged, result.error
    assert fhir.invalid == []
    (posted,) = fhir.posted
    assert "Patient" not in [e["resource"]["resourceType"] for e in posted.json["entry"]]
    text = posted.body.decode()
    assert not [s for s in SECRETS if s in text]
    assert "subject" not in posted.entry("DiagnosticReport")["resource"]
    assert all("subject" not in o for o in posted.resources("Observation"))
    study = posted.entry("ImagingStudy")["resource"]
    assert study["subject"]["extension"][0]["valueCode"] == "masked"
    assert [i["system"] for i in study["identifier"]] == ["urn:dicom:uid"]  # no accession number


def test_with_identifiers_the_accession_number_is_on_the_imaging_study() -> None:
    study = build_bundle(_item())["entry"][1]["resource"]
    assert study["identifier"][1]["value"] == "ACC-7" and study["identifier"][1]["type"]["coding"][0]["code"] == "ACSN"


def test_the_test_server_refuses_a_bundle_the_r4b_models_reject(fhir: FhirServer) -> None:
    bundle = build_bundle(_item())
    bundle["entry"][-1]["resource"]["conclusionCode"] = "suspected_positive"  # not a CodeableConcept
    del bundle["entry"][1]["resource"]["status"]  # ImagingStudy.status is required
    channel = _channel(fhir.url)
    from node.notify import fhir as module
    from node.notify.http import request

    reply = request("POST", channel.url, module.encode(bundle), {"Content-Type": "application/fhir+json"}, 3, None)
    assert reply.status == 400 and len(fhir.invalid) == 1
    assert "conclusionCode" in fhir.invalid[0] and "status" in fhir.invalid[0]
    assert module.read_response(reply, 5).error.startswith("the FHIR server answered HTTP 400: error invalid")


@pytest.mark.parametrize(("mode", "why"), [
    ("error500", "the FHIR server answered HTTP 500: error exception database is down"),
    ("error400", "the FHIR server answered HTTP 400: error processing DiagnosticReport.code: unknown code see the log"),
    ("hang", "no answer from 127.0.0.1:{port} within 1 s"),
    ("not_json", "the FHIR server answered HTTP 200 with a body that is not JSON"),
    ("entry_conflict", "entry 5 of the transaction-response has status 409 Conflict: error conflict version conflict"),
    ("batch", "the reply is a Bundle batch-response, not a transaction-response Bundle"),
])
def test_a_server_that_does_not_accept_is_a_failure_with_its_reason(fhir: FhirServer, mode: str, why: str) -> None:
    fhir.mode = mode
    started = time.monotonic()
    result = _channel(fhir.url, timeout_s=1.0).send(_item())
    assert not result.acknowledged and result.error == why.format(port=fhir.port)
    assert "\n" not in result.error and time.monotonic() - started < 5
    assert fhir.invalid == [] and len(fhir.posted) == 1


def test_a_server_that_is_down_is_a_failure_naming_the_connection() -> None:
    port = free_port()
    result = _channel(f"http://127.0.0.1:{port}/fhir").send(_item())
    assert not result.acknowledged and result.error is not None
    assert result.error.startswith(f"cannot connect to 127.0.0.1:{port}: ConnectionRefusedError")


def test_a_bearer_token_from_its_file(fhir: FhirServer, tmp_path: Path) -> None:
    fhir.bearer = "s3cret-token"
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    assert _channel(fhir.url, bearer_token_file=token).send(_item()).acknowledged
    assert fhir.posted[0].headers["Authorization"] == "Bearer s3cret-token"
    token.write_text("revoked")
    refused = _channel(fhir.url, bearer_token_file=token).send(_item())
    assert not refused.acknowledged
    assert refused.error == "the FHIR server answered HTTP 401: error login a valid bearer token is required"
    missing = _channel(fhir.url, bearer_token_file=tmp_path / "none").send(_item())
    assert not missing.acknowledged
    assert missing.error == f"cannot read bearer_token_file {str(tmp_path / 'none')!r}: FileNotFoundError"
    assert "s3cret" not in (refused.error + missing.error)
    no_token = _channel(fhir.url).send(_item())
    assert not no_token.acknowledged and "HTTP 401" in (no_token.error or "")


def _oauth2(fhir: FhirServer, tmp_path: Path, secret: str = "p@ss:word", token_url: str | None = None,
            **extra: Any) -> FhirChannel:
    (tmp_path / "client_secret").write_text(secret + "\n")
    return _channel(fhir.url, oauth2={"token_url": token_url or fhir.token_url, "client_id": "ctnode node",
                                      "client_secret_file": tmp_path / "client_secret", "scope": "system/*.write"},
                    **extra)


def test_oauth2_client_credentials_with_basic_auth_cached_until_it_expires(fhir: FhirServer, tmp_path: Path) -> None:
    fhir.oauth2 = ("ctnode node", "p@ss:word")
    channel = _oauth2(fhir, tmp_path)
    assert channel.send(_item()).acknowledged and channel.send(_item(notification_id=6)).acknowledged
    (asked,) = fhir.token_requests  # one token for both
    assert asked.form == {"grant_type": ["client_credentials"], "scope": ["system/*.write"]}
    assert asked.authorization.startswith("Basic ")
    assert fhir.posted[0].headers["Authorization"] == fhir.posted[1].headers["Authorization"] == "Bearer tok-1"

    fhir.tokens.clear()  # the server revoked it: this attempt fails, the next one asks for a new token
    refused = channel.send(_item())
    assert not refused.acknowledged and "HTTP 401" in (refused.error or "")
    assert channel.send(_item()).acknowledged and len(fhir.token_requests) == 2

    fhir.expires_in = 1  # renewed shortly before it expires
    short = _oauth2(fhir, tmp_path)
    assert short.send(_item()).acknowledged
    time.sleep(1.0)
    assert short.send(_item()).acknowledged and len(fhir.token_requests) == 4


def test_oauth2_without_expires_in_asks_for_each_request(fhir: FhirServer, tmp_path: Path) -> None:
    fhir.oauth2, fhir.expires_in = ("ctnode node", "p@ss:word"), None
    channel = _oauth2(fhir, tmp_path)
    assert channel.send(_item()).acknowledged and channel.send(_item()).acknowledged
    assert len(fhir.token_requests) == 2


def test_a_token_endpoint_that_fails_is_a_failure_with_its_reason(fhir: FhirServer, tmp_path: Path) -> None:
    fhir.oauth2 = ("ctnode node", "p@ss:word")
    wrong = _oauth2(fhir, tmp_path, secret="guess").send(_item())
    assert not wrong.acknowledged
    assert wrong.error == "the token endpoint answered HTTP 401: invalid_client (client authentication failed)"
    fhir.token_mode = "not_json"
    garbage = _oauth2(fhir, tmp_path).send(_item())
    assert garbage.error == "the token endpoint answered HTTP 200 with a body that is not a JSON object"
    port = free_port()
    down = _oauth2(fhir, tmp_path, token_url=f"http://127.0.0.1:{port}/token").send(_item())
    assert (down.error or "").startswith(f"token endpoint: cannot connect to 127.0.0.1:{port}: ConnectionRefusedError")
    assert fhir.posted == []  # nothing is posted without a token


def test_https_trusts_the_configured_ca_file(tmp_path: Path) -> None:
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    key, cert = tmp_path / "server.key", tmp_path / "server.pem"
    subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            sent = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": [
                {"response": {"status": "201 Created", "location": f"X/{n}"}} for n in range(len(sent["entry"]))]})
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

    http = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    http.socket = context.wrap_socket(http.socket, server_side=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{http.server_address[1]}/fhir"
        trusted = _channel(url, tls={"ca_file": cert}).send(_item())
        assert trusted.acknowledged, trusted.error
        untrusted = _channel(url).send(_item())
        assert not untrusted.acknowledged and "CERTIFICATE_VERIFY_FAILED" in (untrusted.error or "")
        assert (untrusted.error or "").startswith("TLS failed with 127.0.0.1:")
    finally:
        http.shutdown()
        http.server_close()
