"""A real Orthanc (Debian package) on loopback ports, configured per test, with a small REST client."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import free_port, require, require_tool, wait_for_port

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian package orthanc-dicomweb


class Orthanc:
    """Orthanc with its own storage folder, no authentication, loopback only; no plugins but, with ``dicomweb``,
    the DICOMweb plugin at /dicom-web/."""

    def __init__(self, workdir: Path, ae_title: str = "ORTHANC", modalities: dict[str, list[Any]] | None = None,
                 dicomweb: bool = False) -> None:
        self.workdir = workdir
        self.ae_title = ae_title
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.config = {
            "Name": "ctnode-test", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": ae_title,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "DicomModalities": modalities or {}, "DicomCheckCalledAet": False, "StorageCompression": False,
            "DicomScuTimeout": 30, "HttpTimeout": 60, "ConcurrentJobs": 2,
        }
        if dicomweb:
            require(f"Orthanc's DICOMweb plugin {DICOMWEB_PLUGIN} (apt-get install orthanc-dicomweb)",
                    DICOMWEB_PLUGIN.exists())
            self.config["Plugins"] = [str(DICOMWEB_PLUGIN)]
            self.config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full",
                                       "SeriesMetadata": "Full"}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "orthanc.json"
        config_file.write_text(json.dumps(self.config))
        log = (self.workdir / "orthanc.log").open("ab")
        self.process = subprocess.Popen([require_tool("Orthanc"), str(config_file)], stdout=log,
                                        stderr=subprocess.STDOUT)
        wait_for_port(self.http_port, process=self.process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("Orthanc REST API did not come up")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
                 timeout_s: float = 300) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method,
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.read()

    def get(self, path: str) -> Any:
        return json.loads(self._request("GET", path))

    def get_bytes(self, path: str) -> bytes:
        return self._request("GET", path)

    def post(self, path: str, payload: Any) -> Any:
        return json.loads(self._request("POST", path, json.dumps(payload).encode()))

    def put(self, path: str, payload: Any) -> Any:
        raw = self._request("PUT", path, json.dumps(payload).encode())
        return json.loads(raw) if raw.strip() else None

    def upload(self, path: Path) -> dict[str, Any]:
        return json.loads(self._request("POST", "/instances", path.read_bytes(), "application/dicom"))
