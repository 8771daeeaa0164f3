"""From a detector result to the report builders' inputs: the run, the algorithm's identity, the display window."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import pydicom

from node.reports.captions import key_slice
from node.reports.options import (
    AlgorithmIdentity,
    EarlierReport,
    ReportOptions,
    ReportRun,
)

if TYPE_CHECKING:  # the detector (and torch) is only loaded where detection runs
    from detector.infer import DetectionResult
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
    """The report run of a detection: the read series' images and its findings, at ``created`` (None: the
    newest time the images state).

    Only the findings' key slices, which the overlays draw, are read with their pixels; the SR, GSPS and
    KOS need the other images' headers alone.
    """
    keys = {key_slice(finding).sop_instance_uid for finding in result.findings}
    sources = [pydicom.dcmread(header.path, stop_before_pixels=header.sop_instance_uid not in keys)
               for header in result.selection.chosen.instances]
    return ReportRun(run_id, sources, tuple(result.findings), algorithm_of(result.model.card), tuple(earlier), created)
