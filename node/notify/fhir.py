"""The FHIR R4 channel: a transaction Bundle per notification POSTed to the server's base URL, and the strict
reading of its transaction-response.

The Bundle (``build_bundle``):

- the DiagnosticReport, by conditional update ``PUT DiagnosticReport?identifier=urn:ctnode:notification|<key>``
  where the key names the study and the model (``report_key``), so that a correction or withdrawal updates the
  report told before instead of adding one. Status ``preliminary`` for an original, ``amended`` for a
  correction, ``entered-in-error`` for a withdrawal; category radiology; code LOINC 18748-4 (diagnostic imaging
  study) with the local code CTAI (CT AI triage); conclusion = the decision's reason; conclusionCode = the
  decision in the code system ``urn:ctnode:decision``;
- an Observation per finding, by conditional update on ``urn:ctnode:finding|<key>#<n>``: code = the finding type
  (SCT as http://snomed.info/sct), valueQuantity = certainty in %, a note with where it is (centre and size in
  mm, tracking UID), interpretation A when urgent, derivedFrom the ImagingStudy, method = the model;
- an Observation ``entered-in-error`` for each finding told by an earlier version that this one no longer has
  (the payload's ``withdrawn_findings``, from the node's own notifications: ``content.withdrawn_findings``), as it
  was told, under the same identity, so that after a correction with fewer findings, or a withdrawal, only the
  current findings' Observations stand (those are not in the report's ``result``);
- the ImagingStudy by its Study Instance UID (identifier ``urn:dicom:uid`` = ``urn:oid:<uid>``), created only
  if none exists (``ifNoneExist``);
- the Patient, only when the channel carries identifiers and the study has a Patient ID (identifier = the
  Patient ID, its system the Issuer of Patient ID), created only if none exists. Without identifiers there is
  no Patient, no name, birth date or accession anywhere: the ImagingStudy's subject (required by FHIR) is a
  reference that says it is masked (data-absent-reason).

Every fullUrl is a ``urn:uuid`` derived from the notification's message_id, and nothing in the Bundle depends on
the time it is sent, so a retry sends the same bytes.

Authentication: a bearer token read from ``bearer_token_file`` at each send, or OAuth2 client credentials
(RFC 6749 4.4: POST grant_type=client_credentials to ``token_url`` with HTTP Basic client authentication), the
token cached until shortly before ``expires_in`` and dropped when the server answers 401.

Acknowledgement: HTTP 2xx with a JSON transaction-response Bundle of one entry per request entry, each with a
2xx response status; the locations it names are the acknowledgement. Anything else (an HTTP error with its
OperationOutcome's text, a timeout, a refused connection, a body that is not JSON, a token endpoint that
fails) is a failure with a one-line reason.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import time
import uuid
from typing import Any
from urllib.parse import quote, urlencode

from node.config import NotifyChannel, OAuth2ClientConfig
from node.notify.channel import Outbound, SendResult, abridged
from node.notify.content import Identifiers, Revision
from node.notify.http import (
    HttpError,
    Reply,
    one_line,
    read_secret,
    request,
    tls_context,
)

FHIR_JSON = "application/fhir+json"
REPORT_SYSTEM = "urn:ctnode:notification"
FINDING_SYSTEM = "urn:ctnode:finding"
MESSAGE_SYSTEM = "urn:ctnode:message"
DECISION_SYSTEM = "urn:ctnode:decision"
CODE_SYSTEM = "urn:ctnode:code"
DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCHEMES = {"SCT": "http://snomed.info/sct", "DCM": DCM, "LN": "http://loinc.org", "UCUM": "http://unitsofmeasure.org"}
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
STATUS = {Revision.ORIGINAL: "preliminary", Revision.CORRECTION: "amended", Revision.WITHDRAWAL: "entered-in-error"}
# An earlier finding a later version no longer has: R4's observation-status "entered-in-error" is a result
# withdrawn after release that should not have existed (decisions may have been based on it), which is what a
# finding the re-analysis does not find again is; "cancelled" is a measurement not started or not completed, which
# the earlier analysis was not.
WITHDRAWN = "entered-in-error"
DECISIONS = {"suspected_positive": "Suspected positive (urgent finding)", "negative": "No urgent finding",
             "not_analysed": "Not analysed by the AI"}
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:ctnode:fhir")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_GENDER = {"M": "male", "F": "female", "O": "other"}
TOKEN_MARGIN_S = 30.0  # a cached OAuth2 token is renewed this long (at most a tenth of its life) before it expires


def full_url(message_id: str, role: str) -> str:
    """The stable fullUrl of one entry of the Bundle of ``message_id``."""
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{message_id}/{role}')}"


def report_key(payload: dict[str, Any]) -> str:
    """The DiagnosticReport's identifier value: the study and the model (its name, not its version), the same for
    every version of the result, so that a correction updates the same report."""
    return f"{payload['study_instance_uid']}/{(payload.get('model') or {}).get('name') or 'model'}"


def coding(code: dict[str, Any]) -> dict[str, Any]:
    """A DICOM-style coded entry (value, scheme, meaning) as a FHIR Coding; a scheme FHIR has no URI for is kept
    as ``urn:ctnode:scheme:<scheme>``."""
    scheme = str(code.get("scheme") or "")
    system = SCHEMES.get(scheme, f"urn:ctnode:scheme:{quote(scheme, safe='')}")
    out = {"system": system, "code": str(code["value"])}
    if code.get("meaning"):
        out["display"] = str(code["meaning"])
    return out


def _search(system: str, value: str) -> str:
    return urlencode({"identifier": f"{system}|{value}"})


def _patient_system(issuer: str) -> str | None:
    """Identifier.system for the Issuer of Patient ID: itself when it is already a URI, else a URN made of it."""
    if not issuer:
        return None
    return issuer if _URI.match(issuer) else f"urn:ctnode:issuer:{quote(issuer, safe='')}"


def _date(dicom_date: str) -> str | None:
    if re.fullmatch(r"\d{8}", dicom_date):
        return f"{dicom_date[:4]}-{dicom_date[4:6]}-{dicom_date[6:]}"
    return None


def _human_name(dicom_name: str) -> dict[str, Any] | None:
    group = next((g for g in dicom_name.split("=") if g.strip("^ ")), "")
    if not group:
        return None
    family, given, middle, prefix, suffix = ([p.strip() for p in group.split("^")] + [""] * 5)[:5]
    name: dict[str, Any] = {"text": " ".join(p for p in (prefix, given, middle, family, suffix) if p)}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [p for p in (given, middle) if p]
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name


def _patient(ids: Identifiers) -> tuple[dict[str, Any], str] | None:
    """The Patient resource and its ifNoneExist search, or None when the study has no Patient ID."""
    if not ids.patient_id:
        return None
    identifier: dict[str, Any] = {"value": ids.patient_id}
    system = _patient_system(ids.issuer_of_patient_id)
    if system is not None:
        identifier = {"system": system, "value": ids.patient_id}
    resource: dict[str, Any] = {"resourceType": "Patient", "identifier": [identifier]}
    name = _human_name(ids.patient_name)
    if name is not None:
        resource["name"] = [name]
    gender = _GENDER.get(ids.sex.strip().upper())
    if gender is not None:
        resource["gender"] = gender
    birth = _date(ids.birth_date)
    if birth is not None:
        resource["birthDate"] = birth
    query = urlencode({"identifier": f"{system}|{ids.patient_id}" if system else ids.patient_id})
    return resource, query


def _observation_entry(url: str, finding: dict[str, Any], identity: str, status: str, model_text: str,
                       study_url: str, subject: dict[str, Any] | None) -> dict[str, Any]:
    """The Bundle entry of one finding's Observation: a conditional update on its identity ``<key>#<n>``."""
    centre = ", ".join(f"{v:.1f}" for v in finding["centre_mm"])
    size = " x ".join(f"{v:.1f}" for v in finding["size_mm"])
    where = f"centre (LPS) {centre} mm, size {size} mm, tracking UID {finding.get('tracking_uid') or '-'}"
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": FINDING_SYSTEM, "value": identity}],
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [coding(finding["finding_type"])], "text": str(finding["label"])},
        "valueQuantity": {"value": round(float(finding["score"]) * 100, 1), "unit": "%",
                          "system": "http://unitsofmeasure.org", "code": "%"},
        "method": {"text": model_text},
        "derivedFrom": [{"reference": study_url}],
        "note": [{"text": where}],
    }
    if subject is not None:
        observation["subject"] = subject
    if finding.get("urgent"):
        observation["interpretation"] = [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "A",
            "display": "Abnormal"}], "text": "Urgent"}]
    return {"fullUrl": url, "resource": observation,
            "request": {"method": "PUT", "url": f"Observation?{_search(FINDING_SYSTEM, identity)}"}}


def build_bundle(item: Outbound) -> dict[str, Any]:
    """The transaction Bundle of ``item`` (see the module's layout)."""
    p = item.payload
    mid = item.message_id
    status = STATUS[item.revision]
    key = report_key(p)
    model = p.get("model") or {}
    model_text = f"{model.get('name') or ''} {model.get('version') or ''}".strip() or "ctnode"
    entries: list[dict[str, Any]] = []
    subject: dict[str, Any] | None = None
    ids = item.identifiers
    patient = _patient(ids) if ids is not None else None
    if patient is not None:
        resource, query = patient
        url = full_url(mid, "Patient")
        entries.append({"fullUrl": url, "resource": resource,
                        "request": {"method": "POST", "url": "Patient", "ifNoneExist": query}})
        subject = {"reference": url}

    study_uid = p["study_instance_uid"]
    study_url = full_url(mid, "ImagingStudy")
    study_identifiers: list[dict[str, Any]] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}]
    if ids is not None and ids.accession_number:
        study_identifiers.append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                       "code": "ACSN"}]},
                                  "value": ids.accession_number})
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy", "identifier": study_identifiers, "status": "available",
        "subject": subject or {"extension": [{"url": DATA_ABSENT, "valueCode": "masked"}]}}
    if p.get("series_instance_uid"):
        study["series"] = [{"uid": p["series_instance_uid"], "modality": {"system": DCM, "code": "CT"}}]
    entries.append({"fullUrl": study_url, "resource": study,
                    "request": {"method": "POST", "url": "ImagingStudy",
                                "ifNoneExist": _search(DICOM_UID_SYSTEM, f"urn:oid:{study_uid}")}})

    results = []
    for n, finding in enumerate(p.get("findings", []), start=1):
        url = full_url(mid, f"Observation/{n}")
        entries.append(_observation_entry(url, finding, f"{key}#{n}", status, model_text, study_url, subject))
        results.append({"reference": url})
    for finding in p.get("withdrawn_findings", []):
        n = int(finding["number"])
        entries.append(_observation_entry(full_url(mid, f"Observation/{n}"), finding, f"{key}#{n}", WITHDRAWN,
                                          model_text, study_url, subject))

    conclusion = p.get("reason") or DECISIONS.get(p["decision"], p["decision"])
    if item.revision is Revision.WITHDRAWAL:
        conclusion = f"The earlier AI result for this study is withdrawn. {conclusion}"
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": REPORT_SYSTEM, "value": key}],
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                                  "display": "Radiology"}], "text": "Imaging"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"},
                            {"system": CODE_SYSTEM, "code": "CTAI", "display": "CT AI triage"}],
                 "text": f"CT AI triage ({model_text})"},
        "imagingStudy": [{"reference": study_url}],
        "conclusion": conclusion,
        "conclusionCode": [{"coding": [{"system": DECISION_SYSTEM, "code": p["decision"],
                                        "display": DECISIONS.get(p["decision"], p["decision"])}]}],
    }
    if subject is not None:
        report["subject"] = subject
    if results:
        report["result"] = results
    entries.append({"fullUrl": full_url(mid, "DiagnosticReport"), "resource": report,
                    "request": {"method": "PUT", "url": f"DiagnosticReport?{_search(REPORT_SYSTEM, key)}"}})
    return {"resourceType": "Bundle", "identifier": {"system": MESSAGE_SYSTEM, "value": mid}, "type": "transaction",
            "entry": entries}


def encode(bundle: dict[str, Any]) -> bytes:
    """The bytes sent for ``bundle`` (the same for the same Bundle)."""
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def outcome_text(body: str) -> str:
    """What an error reply says: its OperationOutcome's issues (severity, code, diagnostics or details), else its
    text, on one abridged line."""
    try:
        reply = json.loads(body)
    except ValueError:
        return one_line(body) or "an empty body"
    if isinstance(reply, dict) and reply.get("resourceType") == "OperationOutcome":
        said = []
        for issue in reply.get("issue") or []:
            if not isinstance(issue, dict):
                continue
            details = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
            said.append(" ".join(str(s) for s in (issue.get("severity"), issue.get("code"), details) if s))
        if said:
            return one_line("; ".join(said))
    return one_line(body)


def read_response(reply: Reply, sent: int) -> SendResult:
    """Whether ``reply`` acknowledges a transaction of ``sent`` entries (see the module's rules)."""
    shown = abridged(reply.text)
    if not reply.ok:
        return SendResult(False, f"the FHIR server answered HTTP {reply.status}: {outcome_text(reply.text)}", shown)
    try:
        bundle = json.loads(reply.body)
    except ValueError:
        return SendResult(False, f"the FHIR server answered HTTP {reply.status} with a body that is not JSON", shown)
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" \
            or bundle.get("type") != "transaction-response":
        what = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        kind = f" {bundle.get('type')}" if isinstance(bundle, dict) and bundle.get("type") else ""
        return SendResult(False, f"the reply is a {what or 'JSON value'}{kind}, not a transaction-response Bundle",
                          shown)
    entries = bundle.get("entry") or []
    if not isinstance(entries, list) or len(entries) != sent:
        count = len(entries) if isinstance(entries, list) else 0
        return SendResult(False, f"the transaction-response has {count} entries for the {sent} sent", shown)
    locations: list[str | None] = []
    for n, entry in enumerate(entries, start=1):
        response = entry.get("response") if isinstance(entry, dict) else None
        status = str(response.get("status") or "") if isinstance(response, dict) else ""
        if not status.strip().startswith("2"):
            said = outcome_text(json.dumps(response.get("outcome"))) if isinstance(response, dict) \
                and response.get("outcome") else ""
            return SendResult(False, f"entry {n} of the transaction-response has status {status or 'none'}"
                              + (f": {said}" if said else ""), shown)
        locations.append(response.get("location") if isinstance(response, dict) else None)
    return SendResult(True, None, shown, {"http_status": reply.status, "locations": locations})


class _OAuth2:
    """Client-credentials tokens from one token endpoint, cached until shortly before they expire."""

    def __init__(self, config: OAuth2ClientConfig, timeout_s: float, tls: ssl.SSLContext | None) -> None:
        self.config, self.timeout_s, self.tls = config, timeout_s, tls
        self._token: str | None = None
        self._until = 0.0

    def forget(self) -> None:
        self._token, self._until = None, 0.0

    def token(self) -> str:
        """A valid access token (HttpError with a one-line reason when the endpoint does not give one)."""
        if self._token is not None and time.monotonic() < self._until:
            return self._token
        secret = read_secret(self.config.client_secret_file, "oauth2.client_secret_file")
        basic = base64.b64encode(f"{quote(self.config.client_id, safe='')}:{quote(secret, safe='')}".encode()).decode()
        form = {"grant_type": "client_credentials"}
        if self.config.scope:
            form["scope"] = self.config.scope
        started = time.monotonic()
        try:
            reply = request("POST", self.config.token_url, urlencode(form).encode(), {
                "Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json"}, self.timeout_s, self.tls)
        except HttpError as exc:
            raise HttpError(f"token endpoint: {exc}") from exc
        try:
            answer = json.loads(reply.body)
        except ValueError:
            answer = None
        if not reply.ok:
            said = ""
            if isinstance(answer, dict) and answer.get("error"):
                said = str(answer["error"]) + (f" ({answer['error_description']})"
                                               if answer.get("error_description") else "")
            raise HttpError(f"the token endpoint answered HTTP {reply.status}: {one_line(said or reply.text) or 'no body'}")
        if not isinstance(answer, dict):
            raise HttpError(f"the token endpoint answered HTTP {reply.status} with a body that is not a JSON object")
        token, kind = answer.get("access_token"), str(answer.get("token_type") or "")
        if not isinstance(token, str) or not token:
            raise HttpError("the token endpoint's reply has no access_token")
        if kind.lower() != "bearer":
            raise HttpError(f"the token endpoint gave a token of type {kind or 'none'!r}, not Bearer")
        expires = answer.get("expires_in")
        if isinstance(expires, int | float) and not isinstance(expires, bool) and expires > 0:
            self._token = token
            self._until = started + float(expires) - min(TOKEN_MARGIN_S, float(expires) / 10)
        else:  # no lifetime given: used for this request only
            self.forget()
        return token


class FhirChannel:
    """Transaction Bundles to one FHIR R4 server."""

    def __init__(self, config: NotifyChannel) -> None:
        if config.url is None:
            raise ValueError(f"notify channel {config.name!r} needs url")
        self.config = config
        self.url = config.url
        https = config.url.startswith("https:") or (config.oauth2 is not None
                                                     and config.oauth2.token_url.startswith("https:"))
        self._tls = tls_context(config.tls) if https else None
        self._oauth2 = _OAuth2(config.oauth2, config.timeout_s, self._tls) if config.oauth2 is not None else None

    def _authorization(self) -> dict[str, str]:
        if self._oauth2 is not None:
            return {"Authorization": f"Bearer {self._oauth2.token()}"}
        if self.config.bearer_token_file is not None:
            return {"Authorization": f"Bearer {read_secret(self.config.bearer_token_file, 'bearer_token_file')}"}
        return {}

    def send(self, item: Outbound) -> SendResult:
        bundle = build_bundle(item)
        body = encode(bundle)
        try:
            headers = {"Content-Type": f"{FHIR_JSON}; charset=utf-8", "Accept": FHIR_JSON, **self._authorization()}
            reply = request("POST", self.url, body, headers, self.config.timeout_s, self._tls)
        except HttpError as exc:
            return SendResult(False, str(exc))
        if reply.status == 401 and self._oauth2 is not None:
            self._oauth2.forget()
        return read_response(reply, len(bundle["entry"]))
