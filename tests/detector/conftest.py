"""Fixtures for detector tests: the real CT data folder (by path, never copied) and a synthetic CT slice writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.support import require_ct

PATIENT_NAME = "DOE^JANE"
PATIENT_ID = "PID-4711-SECRET"


@pytest.fixture(scope="session")
def ct_data() -> Callable[[str], Path]:
    """Return a function giving a sub-folder of the real CT data, skipping the test when it is absent."""
    return require_ct


SliceWriter = Callable[..., Path]


@pytest.fixture
def write_slice(tmp_path: Path) -> SliceWriter:
    """Write one small synthetic CT slice (16x16, carrying patient identifiers) and return its path."""

    def write(
        name: str,
        series_uid: str,
        z_mm: float,
        *,
        series_number: int = 3,
        modality: str = "CT",
        image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
        orientation: tuple[float, ...] | None = (1, 0, 0, 0, 1, 0),
        position: bool = True,
        thickness_mm: float = 1.0,
        sop_class_uid: str = CTImageStorage,
        value: int = 0,
        folder: Path = tmp_path,
    ) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class_uid
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class_uid
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.AccessionNumber = "ACC-99"
        ds.Modality = modality
        ds.ImageType = list(image_type)
        ds.SeriesNumber = series_number
        ds.InstanceNumber = 1
        if orientation is not None:
            ds.ImageOrientationPatient = list(orientation)
        if position:
            ds.ImagePositionPatient = [0.0, 0.0, z_mm]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = thickness_mm
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
        ds.PixelData = np.full((16, 16), value, dtype=np.int16).tobytes()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        return path

    return write


@pytest.fixture
def assert_no_phi() -> Callable[[str], None]:
    """Return a check that a message carries none of the synthetic slices' patient identifiers."""

    def check(message: str) -> None:
        for identifier in (PATIENT_NAME, "DOE", PATIENT_ID, "ACC-99"):
            assert identifier not in message, f"patient identifier {identifier!r} leaked into {message!r}"

    return check
