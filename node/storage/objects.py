"""The objects ctnode writes and sends (a run's SR, SCs, GSPS, KOS): each file with its identity."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pydicom

from node.events import OutputKind


@dataclass(frozen=True)
class OutputObject:
    """One written Part 10 file: its path, identity and the sha256 of its bytes; ``kind`` says which of a run's
    objects it is (None for a file queued as it is, not built by a run)."""

    path: Path
    kind: OutputKind | None
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    sha256: str

    @classmethod
    def read(cls, path: Path, kind: OutputKind | None = None) -> OutputObject:
        """The object in the Part 10 file at ``path`` (its pixels are not decoded)."""
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return cls(path.resolve(), kind, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                   str(ds.StudyInstanceUID), str(ds.file_meta.TransferSyntaxUID),
                   hashlib.sha256(path.read_bytes()).hexdigest())
