"""Shared test helpers: ports, tools and services, the node as a real process, DICOM byte comparisons."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.config import DicomConfig

REPO = Path(__file__).resolve().parents[1]


def ct_data() -> Path:
    """The real CT data folder (CTNODE_TEST_DATA, default ../shared/ct beside the repository)."""
    return Path(os.environ.get("CTNODE_TEST_DATA", REPO.parent / "shared" / "ct"))


def require_ct(*parts: str) -> Path:
    """A folder of the real CT data; a missing one skips the test, or fails it under CI."""
    path = ct_data().joinpath(*parts)
    require(f"real CT data at {path} (set CTNODE_TEST_DATA)", path.exists())
    return path


def dicom_files(folder: Path) -> list[Path]:
    """Part 10 image files under ``folder`` (skips licences, DICOMDIRs and other files), sorted."""
    from pydicom.misc import is_dicom

    return sorted(p for p in folder.rglob("*") if p.is_file() and is_dicom(p) and p.name != "DIRFILE")


def require(what: str, available: bool) -> None:
    """Skip when a service/tool is missing; fail instead when CI says every service must be there."""
    if available:
        return
    message = f"{what} is not available"
    if os.environ.get("CTNODE_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " but CTNODE_REQUIRE_SERVICES=1")
    pytest.skip(message)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(f"the {name} program", path is not None)
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 30.0, process: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout_s} s")


def imaging_measurements(sr: Any) -> Any:
    """The Imaging Measurements container (126010, DCM) of a TID 1500 report: its measurement groups' parent."""
    return next(item for item in sr.ContentSequence if item.ValueType == "CONTAINER"
                and item.ConceptNameCodeSequence[0].CodeValue == "126010")


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file, without preamble and File Meta group."""
    raw = path.read_bytes()
    if raw[128:132] != b"DICM":
        return raw
    # (0002,0000) UL group length, explicit VR LE: tag(4) VR(2) len(2) value(4)
    group_length = struct.unpack("<I", raw[140:144])[0]
    return raw[144 + group_length:]


def without_trailing_padding(data: bytes) -> bytes:
    """Drop a final Data Set Trailing Padding element (FFFC,FFFC), which DCMTK does not transmit."""
    marker = data.rfind(b"\xfc\xff\xfc\xffOB\x00\x00")
    if marker >= 0 and marker + 12 + struct.unpack("<I", data[marker + 8:marker + 12])[0] == len(data):
        return data[:marker]
    return data


def _descendants(pid: int) -> list[int]:
    """The child processes of ``pid``, and theirs (from /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


class NodeProcess:
    """`python -m node serve` in a subprocess with its own data directory, config and log file."""

    def __init__(self, data_dir: Path, db_url: str, allowed: list[dict[str, str]] | None = None,
                 accept_any: bool = False, sections: dict[str, Any] | None = None, roles: tuple[str, ...] = (),
                 **dicom: Any) -> None:
        """``sections`` adds or replaces config sections (by default no detection worker and no metrics port);
        ``roles`` are passed as ``--role`` (default: all)."""
        self.data_dir = data_dir
        self.port = dicom.pop("port", None) or free_port()
        self.ae_title = dicom.get("ae_title", "CTNODE")
        storage = {"data_dir": str(data_dir), "min_free_bytes": dicom.pop("min_free_bytes", 0),
                   **dicom.pop("storage", {})}
        self.config = {
            "dicom": {"host": "127.0.0.1", "port": self.port, "accept_any": accept_any,
                      "allowed": allowed or [{"ae_title": "STORESCU"}, {"ae_title": "ECHOSCU"}], **dicom},
            "storage": storage,
            "database": {"url": db_url},
            "logging": {"format": "json", "level": "INFO"},
            "pipeline": {"workers": 0},
            "metrics": {"port": 0},
            **(sections or {}),
        }
        self.roles = roles
        self.killed = False
        self.config_file = data_dir / "ctnode.yaml"
        self.log_file = data_dir / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self) -> NodeProcess:
        level = self.config["logging"].get("level", "INFO")
        if (not self.roles or "receiver" in self.roles) and level not in ("DEBUG", "INFO"):
            raise ValueError(f"logging.level {level} hides the receivers' INFO \"listening\" lines that start() "
                             "waits for: leave the node at INFO")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(yaml.safe_dump(self.config))
        log = self.log_file.open("ab")
        self._log_start = self.log_file.stat().st_size  # a restarted node's earlier lines do not count as listening
        roles = [arg for role in self.roles for arg in ("--role", role)]
        self.process = subprocess.Popen([sys.executable, "-m", "node", "serve", "--config", str(self.config_file), *roles],
                                        stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        if not self.roles or "receiver" in self.roles:
            wait_for_port(self.port, process=self.process)
            deadline = time.monotonic() + 120  # siblings are spawned after the first process binds
            while len(self.listening()) < self.config["dicom"].get("processes", DicomConfig().processes):
                assert self.process.poll() is None and time.monotonic() < deadline, self.log()[-3000:]
                time.sleep(0.1)
        return self

    def listening(self) -> set[int]:
        """The pids of the receiver processes that have bound the port since the last start (from the log)."""
        since = self.log_file.read_bytes()[self._log_start:].decode(errors="replace") if self.log_file.exists() else ""
        return {json.loads(line)["pid"] for line in since.splitlines()
                if line.startswith("{") and '"listening"' in line and json.loads(line).get("event") == "listening"}

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status (0 for a clean shutdown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process is not None else None

    def kill(self) -> None:
        """kill -9 the node, every process of it at once as a container runtime does (its exit is not a clean
        shutdown, and the teardown knows it)."""
        if self.process is not None:
            for pid in [*_descendants(self.process.pid), self.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()
            self.killed = True

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node", *args, "--config", str(self.config_file)],
                              capture_output=True, text=True, cwd=REPO, timeout=120)


def write_contrast_enhanced(source: Path, out: Path, agent: str | None = None) -> list[Path]:
    """A copy of a non-contrast head series as if iodine had been given: brain +15 HU, and bright (220 HU) vessel
    cross-sections over about 3% of the brain. ``agent`` sets Contrast/Bolus Agent; None strips it (tags lost)."""
    import numpy as np
    import pydicom

    from detector.io.pixels import read_hu, rescale
    from detector.preprocess.anatomy import enclosed

    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in dicom_files(source):
        ds = pydicom.dcmread(path)
        hu = read_hu(ds)
        brain = enclosed(hu > 300) & (hu < 100) & (hu > -50)
        hu[brain] += 15
        ys, xs = np.nonzero(brain)
        for k in rng.choice(ys.size, size=min(ys.size, ys.size // 250), replace=False) if ys.size else []:
            hu[max(ys[k] - 2, 0): ys[k] + 3, max(xs[k] - 2, 0): xs[k] + 3] = np.where(
                brain[max(ys[k] - 2, 0): ys[k] + 3, max(xs[k] - 2, 0): xs[k] + 3], 220.0,
                hu[max(ys[k] - 2, 0): ys[k] + 3, max(xs[k] - 2, 0): xs[k] + 3])
        slope, intercept = rescale(ds)
        stored = np.rint((hu - intercept) / slope).astype(ds.pixel_array.dtype)
        ds.PixelData = stored.tobytes()
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        if agent is None:
            ds.pop("ContrastBolusAgent", None)
        else:
            ds.ContrastBolusAgent = agent
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(ds.SeriesInstanceUID), "contrast"])
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "contrast"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / path.name)
        written.append(out / path.name)
    return written
