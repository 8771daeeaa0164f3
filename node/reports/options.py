"""Typed inputs of the report builders: site options, the algorithm's identity, a run and earlier reports."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom.dataset import Dataset
from pydicom.uid import UID

from detector.findings import Finding

# A UUID-derived root (2.25.<uuid as integer>) owned by ctnode; sites with their own root configure it.
DEFAULT_UID_ROOT = "2.25.275020071003996822760402709912833401401"
DEFAULT_BANNER = "AI result - not for diagnosis"
_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CS = re.compile(r"^[A-Z0-9_ ]{1,16}$")


class ReportOptions(BaseModel):
    """What a site configures about the objects sent back to its PACS."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uid_root: str = Field(default=DEFAULT_UID_ROOT, description="root under which every emitted UID is derived")
    banner_text: str = Field(default=DEFAULT_BANNER, min_length=1, max_length=64)
    window_centre_hu: float = Field(default=40.0, description="the model's display window centre (HU)")
    window_width_hu: float = Field(default=400.0, gt=0, description="the model's display window width (HU)")
    manufacturer: str = Field(default="ctnode", min_length=1, max_length=64)
    institution_name: str | None = Field(default=None, max_length=64)
    institutional_department_name: str | None = Field(default=None, max_length=64)
    series_number_base: int = Field(
        default=9000, ge=1, le=2**31 - 10, description="SR is base+1, SC +2, GSPS +3, KOS +4"
    )
    gsps_layer_name: str = Field(default="CTNODE_AI", description="DICOM CS: upper case, digits, _ and space, max 16")
    enable_gsps: bool = False
    enable_kos: bool = False

    @field_validator("uid_root")
    @classmethod
    def _check_root(cls, root: str) -> str:
        if not _UID_ROOT.match(root):
            raise ValueError(f"UID root {root!r} must be dot-separated numbers without leading zeros, e.g. 2.25.1234")
        if len(root) > 44:
            raise ValueError(f"UID root {root!r} is {len(root)} characters; at most 44 leave room for unique suffixes")
        return root

    @field_validator("gsps_layer_name")
    @classmethod
    def _check_layer(cls, name: str) -> str:
        if not _CS.match(name):
            raise ValueError(f"GSPS layer name {name!r} must be 1-16 upper-case letters, digits, '_' or spaces")
        return name


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
    """One detector run to report: its id, the read series (datasets), findings, model and earlier SRs."""

    run_id: str
    sources: Sequence[Dataset]
    findings: Sequence[Finding]
    algorithm: AlgorithmIdentity
    earlier_reports: Sequence[EarlierReport] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.run_id:
            raise ValueError("a report run needs a non-empty run id: UIDs are derived from it")
