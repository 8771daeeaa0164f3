"""OHIF's prebuilt viewer (npm package @ohif/app, pinned) served on loopback with Orthanc's DICOMweb behind it.

The viewer needs cross-origin isolation (Cross-Origin-Opener-Policy/Embedder-Policy) for its shared-memory
decoders, and its data source on its own origin: this server sends the static files of the package with those
headers, answers /app-config.js with a configuration naming /dicom-web, and relays /dicom-web to Orthanc: GET for
QIDO-RS and WADO-RS, POST for STOW-RS (a report the viewer saves).
"""

from __future__ import annotations

import importlib.util
import mimetypes
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support import REPO, free_port, require

OHIF_VERSION = "3.13.2"
DEFAULT_DIST = REPO / "var" / "ohif" / OHIF_VERSION / "dist"
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_RELAYED_REQUEST_HEADERS = ("Accept", "Content-Type", "Range")
_RELAYED_RESPONSE_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "ETag", "Last-Modified")
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
          ".css": "text/css", ".woff2": "font/woff2", ".svg": "image/svg+xml", ".map": "application/json"}

APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (ctnode test)',
        name: 'orthanc',
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        dicomUploadEnabled: false,
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


# Run in every page before the viewer: its first-visit tour is marked as already shown.
CHROMIUM = Path("/usr/bin/chromium")  # Debian package chromium, driven by Playwright (pip) as is
LOAD_TIMEOUT_MS = 180_000
NO_TOUR = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"

# A console warning that carries a JavaScript error: OHIF logs some of its failures as warnings, not errors (an SR
# measurement group it cannot hydrate: "Unable to generate tool state for ... TypeError: ...").
JS_ERROR_IN_WARNING = re.compile(r"\b[A-Z][A-Za-z]*Error\b|\bError:|Unable to generate tool state")


def console_problem(kind: str, text: str) -> str | None:
    """What a console message of this kind ("error", "warning", ...) tells the test went wrong, if anything: every
    error, and every warning that carries a JavaScript error."""
    if kind == "error":
        return text
    if kind == "warning" and JS_ERROR_IN_WARNING.search(text):
        return f"warning: {text}"
    return None


def watch_console(page: Any, problems: list[str]) -> None:
    """Collect into ``problems`` the page's console errors, its warnings that carry a JavaScript error and its
    uncaught exceptions."""
    def on_console(message: Any) -> None:
        problem = console_problem(message.type, message.text)
        if problem is not None:
            problems.append(problem)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))


def ohif_dist() -> Path:
    """The folder of the prebuilt viewer (CTNODE_OHIF_DIST, default var/ohif/<version>/dist, which .ci/run fills)."""
    return Path(os.environ.get("CTNODE_OHIF_DIST", DEFAULT_DIST))


def require_viewer() -> None:
    """The prebuilt viewer, Chromium and Playwright are here (a missing one fails under CI)."""
    require(f"OHIF {OHIF_VERSION}'s prebuilt viewer at {ohif_dist()} (.ci/run unpacks npm's @ohif/app there)",
            (ohif_dist() / "index.html").exists())
    require(f"Chromium at {CHROMIUM} (apt-get install chromium)", CHROMIUM.exists())
    require("Playwright (pip install -e '.[test]')", importlib.util.find_spec("playwright") is not None)


@contextmanager
def viewer_page(server: OhifServer, study_uid: str, problems: list[str], display_sets: int = 3) -> Iterator[Any]:
    """A headless Chromium page with OHIF open on the study once it lists ``display_sets`` series; the page's
    console problems go to ``problems``; the browser closes on leaving."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.add_init_script(NO_TOUR)
            watch_console(page, problems)
            page.goto(f"{server.url}/viewer?StudyInstanceUIDs={study_uid}")
            page.wait_for_function("() => window.services && window.services.displaySetService"
                                   f".getActiveDisplaySets().length === {display_sets}", timeout=LOAD_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def render_when_loaded(page: Any, images: int) -> None:
    """Wait until the viewport holds ``images`` images and its current one is loaded, then render it and wait for
    the render."""
    page.wait_for_function("() => { const v = window.cornerstone.getEnabledElements()[0].viewport;"
                           f" const id = v.getCurrentImageId(); return id && v.getImageIds().length === {images}"
                           " && window.cornerstone.cache.getImageLoadObject(id) !== undefined; }",
                           timeout=LOAD_TIMEOUT_MS)
    page.evaluate("""() => new Promise(resolve => {
        const viewport = window.cornerstone.getEnabledElements()[0].viewport;
        viewport.element.addEventListener(window.cornerstone.Enums.Events.IMAGE_RENDERED, resolve, { once: true });
        viewport.render(); })""")


class OhifServer:
    """The viewer's files and a DICOMweb relay to ``dicomweb_url`` (e.g. http://127.0.0.1:8042), on loopback."""

    def __init__(self, dist: Path, dicomweb_url: str) -> None:
        self.dist = dist
        self.dicomweb_url = dicomweb_url.rstrip("/")
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OhifServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the browser test reports what matters."""

            def do_GET(self) -> None:
                if self.path.startswith("/dicom-web/"):
                    self._relay()
                elif self.path.split("?")[0] == "/app-config.js":
                    self._send(200, APP_CONFIG.encode(), "text/javascript")
                else:
                    self._static()

            def do_POST(self) -> None:
                if self.path.startswith("/dicom-web/"):
                    length = int(self.headers.get("Content-Length") or 0)
                    self._relay(self.rfile.read(length))
                else:
                    self._send(405, b"", "text/plain")

            def _static(self) -> None:
                relative = self.path.split("?")[0].split("#")[0].lstrip("/")
                path = (server.dist / relative).resolve()
                if not path.is_file() or server.dist.resolve() not in path.parents:
                    path = server.dist / "index.html"  # the viewer routes its own paths (/viewer, /)
                kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self._send(200, path.read_bytes(), kind)

            def _relay(self, body: bytes | None = None) -> None:
                """The request to Orthanc's DICOMweb, and its answer back; ``body`` (a POST's) goes with its
                Content-Type (STOW-RS: multipart/related; type="application/dicom"; boundary=...)."""
                headers = {k: self.headers[k] for k in _RELAYED_REQUEST_HEADERS if self.headers.get(k)}
                request = urllib.request.Request(server.dicomweb_url + self.path, data=body, headers=headers,
                                                 method="GET" if body is None else "POST")
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        status, answer, relayed = response.status, response.read(), response.headers
                except urllib.error.HTTPError as error:
                    status, answer, relayed = error.code, error.read(), error.headers
                self.send_response(status)
                for key in _RELAYED_RESPONSE_HEADERS:
                    if relayed.get(key) and key != "Content-Length":
                        self.send_header(key, relayed[key])
                self._finish(answer)

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self._finish(body)

            def _finish(self, body: bytes) -> None:
                for key, value in ISOLATION_HEADERS.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
