"""The whole loop PACS -> ctnode -> PACS with real parts: studies with inserted lesions, Orthanc, node processes.

Shared by the end-to-end tests and bench/e2e.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from detector.io import read_ct_volume
from detector.synth import Lesion, insert_lesions, random_lesion
from tests.integration.orthanc import Orthanc
from tests.support import free_port, require_ct

HEAD = "head_ge_patient"
CHEST = "chest_lung_pet_ct_dx_A0001"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR


@dataclass(frozen=True)
class SentStudy:
    """A study written for a test: its files (in slice order), UIDs and, when one was inserted, the lesion."""

    files: tuple[Path, ...]
    study_instance_uid: str
    series_instance_uid: str
    lesion: Lesion | None


def _new_uid(seed: str, old: str) -> str:
    return str(generate_uid(entropy_srcs=[seed, old]))


def write_study(folder: str, out: Path, seed: str, lesion: dict[str, float] | None = None,
                slices: slice = slice(None)) -> SentStudy:
    """The real series in ``folder`` as a new study (UIDs derived from ``seed``), optionally with a lesion.

    ``lesion`` (``diameter_mm``, ``hu``, ``seed``, optional slice range ``z_from``/``z_to``, default the middle
    third) is placed by the detector's own placement rules (inside the brain or lung) and blended into the
    pixels; ``slices`` keeps part of the stack.
    """
    volume, selection = read_ct_volume(require_ct(folder))
    placed = None
    if lesion is not None:
        target = "head" if folder == HEAD else "chest"
        depth = volume.geometry.shape[0]
        z_range = (int(lesion.get("z_from", depth // 3)), int(lesion.get("z_to", 2 * depth // 3)))
        found = random_lesion(target, volume, np.random.default_rng(int(lesion["seed"])), z_range=z_range)
        assert found is not None, f"no room for a lesion in {folder}"
        radius = lesion["diameter_mm"] / 2
        placed = replace(found, radii_mm=(radius, radius, radius), hu=lesion["hu"], shape="ellipsoid")
        volume, _ = insert_lesions(volume, [placed])
    files = {h.sop_instance_uid: h.path for h in selection.chosen.instances}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    uids = volume.geometry.sop_instance_uids
    for k in range(len(uids))[slices]:
        ds = pydicom.dcmread(files[uids[k]])
        if lesion is not None:
            slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
            stored = np.rint((volume.hu[k].astype(np.float64) - intercept) / slope)
            ds.PixelData = stored.astype(ds.pixel_array.dtype).tobytes()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            if keyword in ds:
                setattr(ds, keyword, _new_uid(seed, str(getattr(ds, keyword))))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    first = pydicom.dcmread(written[0], stop_before_pixels=True)
    return SentStudy(tuple(written), str(first.StudyInstanceUID), str(first.SeriesInstanceUID), placed)


def node_sections(orthanc: Orthanc, **pipeline: Any) -> dict[str, Any]:
    """Config sections of a node whose results go back to ``orthanc`` (reply to the sender), metrics on."""
    return {
        "delivery": {"destinations": [{"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                                       "port": orthanc.dicom_port}],
                     "reply_to": {orthanc.ae_title: "pacs"}, "poll_interval_s": 0.2, "backoff_initial_s": 1,
                     "backoff_max_s": 5},
        "pipeline": {"workers": 1, "quiet_s": 5, "poll_interval_s": 0.2, **pipeline},
        "metrics": {"port": free_port()},
    }


def orthanc_with_node(workdir: Path, node_port: int) -> Orthanc:
    """A started Orthanc that knows ctnode (AE CTNODE on ``node_port``) as modality "ctnode"."""
    return Orthanc(workdir, modalities={"ctnode": ["CTNODE", "127.0.0.1", node_port]}).start()


def upload(orthanc: Orthanc, files: tuple[Path, ...] | list[Path]) -> list[str]:
    """Upload files to Orthanc; returns their Orthanc instance ids."""
    return [orthanc.upload(path)["ID"] for path in files]


def send_to_node(orthanc: Orthanc, resources: list[str]) -> None:
    """Orthanc sends the resources (studies or instances) to ctnode over one association."""
    job = orthanc.post("/modalities/ctnode/store", {"Resources": resources, "Synchronous": True})
    assert job.get("FailedInstancesCount", 0) == 0, job


def orthanc_study(orthanc: Orthanc, study_instance_uid: str) -> str:
    """Orthanc's id of the study with this Study Instance UID."""
    [found] = orthanc.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_instance_uid}})
    return str(found)


def results_in_orthanc(orthanc: Orthanc, study_instance_uid: str) -> dict[str, list[dict[str, Any]]]:
    """The study's instances in Orthanc by modality (CT, SR, OT/SC ...), each with its main tags."""
    out: dict[str, list[dict[str, Any]]] = {}
    for series in orthanc.get(f"/studies/{orthanc_study(orthanc, study_instance_uid)}/series"):
        modality = series["MainDicomTags"].get("Modality", "")
        for instance_id in series["Instances"]:
            tags = orthanc.get(f"/instances/{instance_id}/simplified-tags")
            out.setdefault(modality, []).append({"id": instance_id, **tags})
    return out


def wait_for_srs(orthanc: Orthanc, study_instance_uid: str, count: int, timeout_s: float,
                 node_log: Any = None) -> dict[str, list[dict[str, Any]]]:
    """Poll Orthanc until the study holds ``count`` SRs; the study's instances by modality."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = results_in_orthanc(orthanc, study_instance_uid)
        if len(found.get("SR", [])) >= count:
            return found
        if time.monotonic() > deadline:
            tail = node_log()[-4000:] if node_log is not None else ""
            raise AssertionError(f"{len(found.get('SR', []))} of {count} SRs in Orthanc after {timeout_s} s\n{tail}")
        time.sleep(0.25)
