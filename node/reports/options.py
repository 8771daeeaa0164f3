"""Typed inputs of the report builders: site options, the algorithm's identity, a run and earlier reports."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from detector.findings import Finding
from node.config import DEFAULT_BANNER, DEFAULT_UID_ROOT, ReportOptions

__all__ = ["DEFAULT_BANNER", "DEFAULT_UID_ROOT", "AlgorithmIdentity", "EarlierReport", "ReportOptions", "ReportRun"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class AlgorithmIdentity:
    """The model that produced the findings, as TID 4019 names it (weights identified by their sha256)."""

    name: str
    version: str
    weights_sha256: str
    parameters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError("the algorithm needs a non-empty name and version")
        if not _SHA256.match(self.weights_sha256):
            raise ValueError(f"weights_sha256 must be 64 lower-case hex digits, got {self.weights_sha256!r}")

    @property
    def all_parameters(self) -> tuple[str, ...]:
        """The TID 4019 parameter strings: the weights digest first, then any extra ones."""
        return (f"weights_sha256={self.weights_sha256}", *self.parameters)


@dataclass(frozen=True)
class EarlierReport:
    """An SR an earlier run of the same study sent, named in a re-run's Predecessor Documents Sequence."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    def __post_init__(self) -> None:
        for name in ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "sop_class_uid"):
            value = getattr(self, name)
            if not UID(value).is_valid:
                raise ValueError(f"earlier report {name} {value!r} is not a valid DICOM UID")

    def as_dataset(self) -> Dataset:
        """The identifying attributes, as the minimal dataset highdicom reads predecessors from."""
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        return ds


@dataclass(frozen=True)
class ReportRun:
    """One detector run to report: its id, the read series (image headers), findings, model and earlier SRs.

    ``key_slices_hu``: the pixels in HU of the images the overlays draw (each finding's key slice), by SOP
    Instance UID, as the detector's volume holds them; the other images are needed by their headers alone.

    ``created``: the run's time, which every date and time of its objects carries (so a rebuild is
    byte-identical); None takes the newest date and time its source images state. ``notice``: for a run whose
    objects are not for clinical use (shadow, silent), what they state in their series descriptions and
    algorithm parameters, e.g. "SHADOW - not for clinical use".
    """

    run_id: str
    sources: Sequence[Dataset]
    findings: Sequence[Finding]
    algorithm: AlgorithmIdentity
    earlier_reports: Sequence[EarlierReport] = field(default_factory=tuple)
    created: datetime | None = None
    notice: str | None = None
    key_slices_hu: Mapping[str, np.ndarray] = field(default_factory=dict)

    def series_description(self, what: str, clinical: str) -> str:
        """The objects' Series Description: ``clinical`` for a clinical run, else the notice and ``what``."""
        return clinical if self.notice is None else f"{self.notice} ({what})"[:64]

    def __post_init__(self) -> None:
        if not self.run_id:
            raise ValueError("a report run needs a non-empty run id: UIDs are derived from it")
        if self.notice is not None and not 0 < len(self.notice) <= 40:
            raise ValueError(f"a report notice is 1-40 characters (it heads a 64-character description), "
                             f"got {self.notice!r}")
