"""A webhook receiver for tests: http.server in a thread on 127.0.0.1 that checks each POST as a pager gateway
should: the X-Ctnode-Signature (HMAC-SHA256 with its own copy of the key over "<timestamp>.<body>", compared in
constant time), a timestamp no older than ``max_age_s``, and an Idempotency-Key equal to the body's id. A bad
signature or a stale timestamp is refused with 401, a missing key with 400; a key seen before is answered 200
again without being taken twice. ``status`` makes it answer that status instead (after checking)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    """One request the receiver read, and what it answered."""

    body: bytes
    headers: dict[str, str]
    answered: int

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class WebhookReceiver:
    """See the module."""

    def __init__(self, port: int, key: bytes, max_age_s: float = 300.0) -> None:
        self.port, self.key, self.max_age_s = port, key, max_age_s
        self.status: int | None = None
        self.requests: list[Delivery] = []
        self.taken: dict[str, bytes] = {}  # idempotency key -> body, each taken once
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), name="webhook", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def verdict(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """What the receiver answers to a request with ``body`` and ``headers`` (names in lower case)."""
        timestamp, signature = headers.get("x-ctnode-timestamp", ""), headers.get("x-ctnode-signature", "")
        expected = "sha256=" + hmac.new(self.key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature, expected):
            return 401, "bad signature"
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > self.max_age_s:
            return 401, "stale timestamp"
        key = headers.get("idempotency-key", "")
        try:
            said = json.loads(body)
        except ValueError:
            return 400, "not JSON"
        if not key or key != said.get("id"):
            return 400, "Idempotency-Key missing or not the notification id"
        with self._lock:
            if key not in self.taken:
                self.taken[key] = body
        return 200, "ok"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, text = receiver.verdict(body, headers)
                if status == 200 and receiver.status is not None:
                    status, text = receiver.status, "try later"
                with receiver._lock:
                    receiver.requests.append(Delivery(body, headers, status))
                data = json.dumps({"result": text}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
