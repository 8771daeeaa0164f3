"""The HTTP side of a node process: /metrics, /healthz and /readyz in a daemon thread."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from node.config import Route, Settings
from node.logging import get_logger
from node.loops import LoopHealth, report_failure
from node.monitor.prometheus import MonitorCollector
from node.pipeline.model_check import ModelChecker
from node.web.health import readiness
from node.web.metrics import AuditCollector

log = get_logger("node.web")

Response = tuple[int, str, bytes]  # status, content type, body


def _json(status: int, body: dict[str, Any]) -> Response:
    return status, "application/json", json.dumps(body).encode()


class _App:
    """The three endpoints, as functions of the request's Accept header."""

    def __init__(self, settings: Settings, engine: Engine, role: str, loops: LoopHealth | None = None,
                 models: list[str] | None = None, routes: list[Route] | None = None) -> None:
        self.settings, self.engine, self.role = settings, engine, role
        self.loops = loops
        self.models = ModelChecker(models or [], engine, routes)
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.registry.register(AuditCollector(engine))
        self.registry.register(MonitorCollector(engine))
        self.routes: dict[str, Callable[[str], Response]] = {
            "/metrics": self.metrics, "/healthz": self.healthz, "/readyz": self.readyz,
        }

    def metrics(self, accept: str) -> Response:
        encoder, content_type = choose_encoder(accept)
        try:
            return 200, content_type, encoder(self.registry)
        except SQLAlchemyError as exc:
            log.warning("metrics scrape failed", error=type(exc).__name__, detail=str(getattr(exc, "orig", "")))
            return 503, "text/plain; charset=utf-8", f"audit database unavailable: {type(exc).__name__}\n".encode()

    def healthz(self, _accept: str) -> Response:
        return _json(200, {"status": "ok", "role": self.role})

    def readyz(self, _accept: str) -> Response:
        checks = readiness(self.engine, self.settings.storage, self.loops, self.models)
        ready = all(check.ok for check in checks if check.required)
        if not all(check.ok for check in checks):
            log.warning("not ready" if not ready else "ready, but a check failed",
                        failed=[check.name for check in checks if not check.ok],
                        reasons=[check.detail for check in checks if not check.ok])
        return _json(200 if ready else 503, {"status": "ready" if ready else "not ready", "role": self.role,
                                             "checks": [asdict(check) for check in checks]})


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.app.settings.metrics.request_timeout_s  # a half-sent request is dropped
        super().setup()

    def do_GET(self) -> None:
        route = self.server.app.routes.get(self.path.split("?", 1)[0])
        if route is None:
            status, content_type, body = 404, "text/plain; charset=utf-8", b"not found\n"
        else:
            status, content_type, body = route(self.headers.get("Accept", ""))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("http request", client=self.client_address[0], request=format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: _App) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that failed (a timeout, a reset, a bug) is logged by type and place, never printed."""
        exc = sys.exc_info()[1]
        if exc is None or isinstance(exc, (TimeoutError, ConnectionError)):
            log.info("http request dropped", error=type(exc).__name__ if exc else None)
            return
        report_failure(None, "http", exc, 1)


class HttpServer:
    """A running endpoint server; ``port`` is the bound port."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="ctnode-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def shutdown(self) -> None:
        """Stop serving, close the socket and wait for the serving thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def start_http(settings: Settings, engine: Engine, role: str, loops: LoopHealth | None = None,
               models: list[str] | None = None, routes: list[Route] | None = None) -> HttpServer | None:
    """Serve the endpoints on ``settings.metrics`` host and port; None when the port is 0 (off). /readyz checks
    ``models``, or (given ``routes``) the models those routes run now: each live model, promoted ones included,
    and the shadows."""
    if settings.metrics.port == 0:
        return None
    app = _App(settings, engine, role, loops, models, routes)
    server = HttpServer(_Server((settings.metrics.host, settings.metrics.port), app))
    log.info("http endpoints listening", host=settings.metrics.host, port=server.port, role=role)
    return server
