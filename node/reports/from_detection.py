"""From a detector result to the report builders' inputs: the run, the algorithm's identity, the display window."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from node.reports.captions import key_slice
from node.reports.options import (
    AlgorithmIdentity,
    EarlierReport,
    ReportOptions,
    ReportRun,
)

if TYPE_CHECKING:  # the detector (and torch) is only loaded where detection runs
    from detector.findings import Finding
    from detector.infer import DetectionResult
    from detector.io import Volume
    from detector.registry import ModelCard


def algorithm_of(card: ModelCard) -> AlgorithmIdentity:
    """The TID 4019 identity of a model: its card's name, version and weights digest, plus its threshold."""
    return AlgorithmIdentity(card.name, card.version, card.weights_sha256,
                             (f"operating_threshold={card.operating_threshold:g}",))


def options_for(card: ModelCard, options: ReportOptions) -> ReportOptions:
    """``options`` with the model's display window (its card's first HU window) where the site set none."""
    window = card.input_spec.windows[0]
    return options.model_copy(update={
        "window_centre_hu": window.centre if options.window_centre_hu is None else options.window_centre_hu,
        "window_width_hu": window.width if options.window_width_hu is None else options.window_width_hu,
    })


def report_run(result: DetectionResult, run_id: str, earlier: Sequence[EarlierReport] = (),
               created: datetime | None = None) -> ReportRun:
    """The report run of a detection (see :func:`volume_run`), its algorithm the detection's model."""
    return volume_run(result.volume, run_id, result.findings, algorithm_of(result.model.card), earlier, created)


def volume_run(volume: Volume, run_id: str, findings: Sequence[Finding], algorithm: AlgorithmIdentity,
               earlier: Sequence[EarlierReport] = (), created: datetime | None = None) -> ReportRun:
    """The report run of ``findings`` in the detector's ``volume``: its image headers, at ``created`` (None: the
    newest time the images state), from what the detector read (no file is read again).

    Only the findings' key slices, which the overlays draw, go with their pixels (copies of the volume's HU
    slices, so that the volume itself need not outlive the detection); the SR, GSPS and KOS need headers alone.
    """
    keys = {key_slice(finding).sop_instance_uid for finding in findings}
    hu = {uid: volume.hu[volume.slice_of(uid)].copy() for uid in keys}
    return ReportRun(run_id, volume.headers, tuple(findings), algorithm, tuple(earlier), created, key_slices_hu=hu)
