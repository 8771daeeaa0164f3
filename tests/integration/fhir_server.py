"""A FHIR server for tests: http.server in a thread on 127.0.0.1 that parses every posted transaction Bundle with
the fhir.resources R4B models (a Bundle that does not validate is refused with 400 and kept in ``invalid``),
checks what the models leave open (request methods and URLs, status codes, that every urn:uuid reference is an
entry of the Bundle), keeps the resources by identifier as a server would (conditional create and update: a
second PUT on the same identifier updates the same resource; ``held`` is each one as it is now) and answers a
transaction-response Bundle with their locations.

``mode`` makes it fail on purpose: ``error500`` and ``error400`` (with an OperationOutcome), ``hang`` (no answer
until stopped), ``not_json``, ``entry_conflict`` (a 200 whose last entry is 409), ``batch`` (a batch-response).
``bearer`` makes it require that token; ``oauth2`` makes it require a token issued by its own token endpoint
(``/token``: client credentials with HTTP Basic authentication).
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

MODES = ("ok", "error500", "error400", "hang", "not_json", "entry_conflict", "batch")
STATUSES = {
    "DiagnosticReport": {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
                         "cancelled", "entered-in-error", "unknown"},
    "Observation": {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error",
                    "unknown"},
    "ImagingStudy": {"registered", "available", "cancelled", "entered-in-error", "unknown"},
}


@dataclass
class Posted:
    """One transaction the server took: its bytes, headers and the validated Bundle."""

    body: bytes
    headers: dict[str, str]
    bundle: Bundle

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    def resources(self, kind: str) -> list[dict[str, Any]]:
        return [e["resource"] for e in self.json["entry"] if e["resource"]["resourceType"] == kind]

    def entry(self, kind: str) -> dict[str, Any]:
        (entry,) = [e for e in self.json["entry"] if e["resource"]["resourceType"] == kind]
        return entry


@dataclass
class TokenRequest:
    authorization: str
    form: dict[str, list[str]]


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def check(bundle: dict[str, Any]) -> list[str]:
    """What is wrong with a transaction Bundle beyond what the R4B models check."""
    problems = []
    if bundle.get("type") != "transaction":
        problems.append(f"Bundle.type is {bundle.get('type')!r}")
    urls = {e.get("fullUrl") for e in bundle.get("entry", [])}

    def references(value: Any) -> list[str]:
        if isinstance(value, dict):
            found = [value["reference"]] if isinstance(value.get("reference"), str) else []
            return found + [r for v in value.values() for r in references(v)]
        if isinstance(value, list):
            return [r for v in value for r in references(v)]
        return []

    for n, entry in enumerate(bundle.get("entry", [])):
        resource, req = entry.get("resource") or {}, entry.get("request") or {}
        kind = resource.get("resourceType")
        if kind in STATUSES and resource.get("status") not in STATUSES[kind]:
            problems.append(f"entry {n}: {kind}.status {resource.get('status')!r}")
        if req.get("method") not in ("POST", "PUT") or not str(req.get("url", "")).startswith(f"{kind}"):
            problems.append(f"entry {n}: request {req}")
        if not str(entry.get("fullUrl", "")).startswith("urn:uuid:"):
            problems.append(f"entry {n}: fullUrl {entry.get('fullUrl')!r}")
        for ref in references(resource):
            if ref.startswith("urn:uuid:") and ref not in urls:
                problems.append(f"entry {n}: reference {ref} is not in the Bundle")
    return problems


class FhirServer:
    """See the module."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.mode = "ok"
        self.bearer: str | None = None
        self.oauth2: tuple[str, str] | None = None  # (client_id, secret) its token endpoint accepts
        self.expires_in: int | None = 3600
        self.tokens: set[str] = set()
        self.token_requests: list[TokenRequest] = []
        self.token_mode = "ok"  # or "not_json"
        self.posted: list[Posted] = []
        self.invalid: list[str] = []
        self.store: dict[tuple[str, str], tuple[str, int]] = {}  # (type, identifier) -> (id, version)
        self.held: dict[tuple[str, str], dict[str, Any]] = {}  # (type, identifier) -> the resource as it is now
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._http = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), name="fhir",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> FhirServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._http.shutdown()
        self._http.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any, content_type: str = "application/fhir+json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urlsplit(self.path).path
                if path == "/token":
                    self._token(body)
                elif path == "/fhir":
                    self._transaction(body)
                else:
                    self._answer(404, _outcome("not-found", f"no endpoint {path}"))

            def _token(self, body: bytes) -> None:
                auth = self.headers.get("Authorization") or ""
                form = parse_qs(body.decode())
                with server._lock:
                    server.token_requests.append(TokenRequest(auth, form))
                expected = server.oauth2
                given: tuple[str, str] | None = None
                if auth.startswith("Basic "):
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    given = (unquote(user), unquote(password))
                if expected is None or given != expected:
                    self._answer(401, {"error": "invalid_client", "error_description": "client authentication failed"},
                                 "application/json")
                    return
                if form.get("grant_type") != ["client_credentials"]:
                    self._answer(400, {"error": "unsupported_grant_type"}, "application/json")
                    return
                if server.token_mode == "not_json":
                    self._answer(200, b"<html>login</html>", "text/html")
                    return
                token = f"tok-{next(server._ids)}"
                with server._lock:
                    server.tokens.add(token)
                answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
                if server.expires_in is not None:
                    answer["expires_in"] = server.expires_in
                self._answer(200, answer, "application/json")

            def _authorised(self) -> bool:
                auth = self.headers.get("Authorization") or ""
                if server.bearer is not None and auth != f"Bearer {server.bearer}":
                    return False
                return server.oauth2 is None or (auth.startswith("Bearer ") and auth[7:] in server.tokens)

            def _transaction(self, body: bytes) -> None:
                if not self._authorised():
                    self._answer(401, _outcome("login", "a valid bearer token is required"))
                    return
                try:
                    bundle = Bundle.model_validate_json(body)
                    problems = check(json.loads(body))
                except (ValidationError, ValueError) as exc:
                    problems = [str(exc)]
                if problems:
                    with server._lock:
                        server.invalid.append("; ".join(problems))
                    self._answer(400, _outcome("invalid", "; ".join(problems)[:500]))
                    return
                with server._lock:
                    server.posted.append(Posted(body, dict(self.headers.items()), bundle))
                mode = server.mode
                if mode == "hang":
                    server._released.wait(30)
                    return
                if mode == "error500":
                    self._answer(500, _outcome("exception", "database is down"))
                    return
                if mode == "error400":
                    self._answer(400, _outcome("processing", "DiagnosticReport.code: unknown code\nsee the log"))
                    return
                if mode == "not_json":
                    self._answer(200, b"<html>OK</html>", "text/html")
                    return
                entries = [self._apply(e) for e in json.loads(body)["entry"]]
                if mode == "entry_conflict":
                    entries[-1] = {"response": {"status": "409 Conflict",
                                                "outcome": _outcome("conflict", "version conflict")}}
                kind = "batch-response" if mode == "batch" else "transaction-response"
                self._answer(200, {"resourceType": "Bundle", "type": kind, "entry": entries})

            def _apply(self, entry: dict[str, Any]) -> dict[str, Any]:
                resource, req = entry["resource"], entry["request"]
                kind = resource["resourceType"]
                query = req.get("ifNoneExist") or urlsplit(req["url"]).query
                identifier = parse_qs(query).get("identifier", [""])[0]
                with server._lock:
                    known = server.store.get((kind, identifier)) if identifier else None
                    if known is not None and req["method"] == "POST":  # conditional create: it exists
                        rid, version = known
                        status = "200 OK"
                    elif known is not None:  # conditional update of the one that matches
                        rid, version = known[0], known[1] + 1
                        status = "200 OK"
                    else:
                        rid, version = str(next(server._ids)), 1
                        status = "201 Created"
                    if identifier:
                        server.store[(kind, identifier)] = (rid, version)
                        if req["method"] == "PUT" or known is None:
                            server.held[(kind, identifier)] = resource
                return {"response": {"status": status, "location": f"{kind}/{rid}/_history/{version}"}}

        return Handler
