"""Deterministic UIDs: every emitted object's UID derives from (UID root, run id, object kind, index)."""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Any

from pydicom.uid import UID

from node.events import OutputKind

_MAX_UID = 64
_MIN_SUFFIX_DIGITS = 19


class Part(StrEnum):
    """The parts of a run's objects with UIDs of their own; the objects themselves are named by ``OutputKind``."""

    FINDING = "finding"
    REGION = "region"
    DEVICE = "device"


def uid_space(kind: OutputKind | Part) -> str:
    """The text the UIDs of a kind derive from: its lower-case name ("sr", "finding"), so that a run's UIDs stay
    what they were before the kinds had one vocabulary."""
    return kind.value.lower()


def derive_uid(root: str, *parts: str) -> UID:
    """A UID under ``root`` whose suffix is a digest of ``parts``: same parts, same UID; other parts, another."""
    room = _MAX_UID - len(root) - 1
    if room < _MIN_SUFFIX_DIGITS:
        raise ValueError(
            f"UID root {root!r} leaves {room} digits for the suffix; at least {_MIN_SUFFIX_DIGITS} are needed"
        )
    digest = hashlib.sha256("\x1f".join((root, *parts)).encode()).digest()
    suffix = str(int.from_bytes(digest, "big"))[:room]
    return UID(f"{root}.{suffix}")


def run_key(run_id: int) -> str:
    """The text a node run's UIDs derive from."""
    return f"run-{run_id}"


class RunUids:
    """The UIDs of one run's objects: a series per object kind, an instance per (kind, index)."""

    def __init__(self, root: str, run_id: str) -> None:
        if not run_id:
            raise ValueError("a run id is needed to derive UIDs")
        self.root = root
        self.run_id = run_id

    def series(self, kind: OutputKind) -> UID:
        """The Series Instance UID of this run's objects of ``kind``."""
        return derive_uid(self.root, self.run_id, uid_space(kind), "series")

    def instance(self, kind: OutputKind | Part, index: int) -> UID:
        """The UID of the ``index``-th object (or part, e.g. finding tracking UID) of ``kind`` in this run."""
        if index < 0:
            raise ValueError(f"object index must be >= 0, got {index}")
        return derive_uid(self.root, self.run_id, uid_space(kind), str(index))

    def region(self, finding: int, region: int) -> UID:
        """The tracking UID of the ``region``-th image region (slice) of the ``finding``-th finding."""
        if finding < 0 or region < 0:
            raise ValueError(f"finding and region indices must be >= 0, got {finding}, {region}")
        return derive_uid(self.root, self.run_id, uid_space(Part.REGION), str(finding), str(region))


_SERIES_NUMBER_OFFSET = {OutputKind.SR: 1, OutputKind.SC: 2, OutputKind.GSPS: 3, OutputKind.KOS: 4}


def object_identity(
    uids: RunUids, kind: OutputKind, index: int, series_number_base: int, manufacturer: str
) -> dict[str, Any]:
    """The highdicom keyword arguments that name an emitted object: series, instance (UID, number), maker."""
    return {
        "series_instance_uid": uids.series(kind),
        "series_number": series_number_base + _SERIES_NUMBER_OFFSET[kind],
        "sop_instance_uid": uids.instance(kind, index),
        "instance_number": index + 1,
        "manufacturer": manufacturer,
    }
