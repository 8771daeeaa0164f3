"""Evaluate a model on labelled studies through the node's own inference path, at every threshold of a grid."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from detector.data import StudyEntry
from detector.evaluate.froc import Froc, Outcome, StudyCurve, classify, study_curve
from detector.evaluate.labelled import LabelledStudy, studies_in
from detector.evaluate.report import EvaluationReport, StudyResult
from detector.findings import Finding
from detector.infer import (
    InferenceOptions,
    LoadedModel,
    default_device,
    domain_reasons,
    findings_at,
    scored_findings,
    slice_detections,
)
from detector.infer.inference import CANDIDATE_FRACTION, capped, region
from detector.io import HeaderScan, SeriesInputError, load_volume, select_series
from detector.labels import LabelError, read_labels
from detector.labels.lesions import planes_from_headers
from detector.registry import TrainingRecord

GRID = (*(float(t) for t in np.round(np.arange(0.05, 0.99, 0.01), 2)), 0.99, 0.995, 0.998, 0.999)
"""Thresholds at which the node's findings are taken for the FROC (the card's own is added); finer near 1, where a
sharp second stage puts most of its scores."""
SATURATED_FINDINGS = 100
"""A study with more findings than this at a threshold (before the card's per-study cap) is not merged at lower
ones: they count as saturated (unbounded false positives, so no FP rate of the FROC can use them); this bounds
the time spent far off the curve."""


@dataclass(frozen=True)
class EvaluationOptions:
    """How to run the model (device, threads, batch) and how many bootstrap rounds the intervals take."""

    inference: InferenceOptions = InferenceOptions()
    bootstrap_rounds: int = 2000


def threshold_grid(operating_threshold: float) -> tuple[float, ...]:
    return tuple(sorted(set(GRID) | {round(operating_threshold, 4)}))


def _evaluate_study(study: LabelledStudy, model: LoadedModel, grid: Sequence[float],
                    options: EvaluationOptions) -> tuple[StudyResult, StudyCurve | None]:
    started = time.monotonic()
    try:
        planes = planes_from_headers(study.headers)
        lesions = [*read_labels(study.labels, planes), *study.lesions]
        selection = select_series(HeaderScan(headers=study.headers, ignored=()))
        volume = load_volume(selection.chosen)
    except (LabelError, SeriesInputError) as exc:
        return StudyResult(study=study, error=str(exc), seconds=time.monotonic() - started), None
    refused = domain_reasons(volume, model.card)
    inference_started = time.monotonic()
    floor = (min(grid) if model.refiner is None else model.refiner.candidate_threshold) * CANDIDATE_FRACTION
    mask = None if refused else region(volume, model)
    detections = [] if refused else slice_detections(volume, model, options.inference, floor=floor)
    scored = scored_findings(detections, volume, model, options.inference.device, mask)
    inference_s = time.monotonic() - inference_started
    per_threshold: list[list[Finding] | None] = [None] * len(grid)
    for k in reversed(range(len(grid))):
        found = findings_at(detections, volume, model, grid[k], scored, mask)
        per_threshold[k] = capped(found, model.card.max_findings)[0]
        if len(found) > SATURATED_FINDINGS:
            break
    curve = study_curve(study.id, [None if found is None else [(f.centre_mm, f.score) for f in found]
                                   for found in per_threshold], lesions)
    reported = per_threshold[list(grid).index(round(model.card.operating_threshold, 4))] or []
    targets = [lesion for lesion in lesions if not lesion.ignore]
    ignores = [lesion for lesion in lesions if lesion.ignore]
    outcomes: list[Outcome] = [classify(f.centre_mm, targets, ignores) for f in reported]
    result = StudyResult(
        study=study,
        series_instance_uid=volume.series_instance_uid,
        slices=volume.geometry.shape[0],
        lesions=tuple(lesions),
        findings=tuple(reported),
        outcomes=tuple(outcomes),
        inference_s=inference_s,
        seconds=time.monotonic() - started,
        refused="; ".join(refused),
    )
    return result, curve


def evaluate_studies(
    model: LoadedModel,
    studies: Sequence[StudyEntry],
    *,
    training: TrainingRecord | None = None,
    options: EvaluationOptions | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> EvaluationReport:
    """Run ``model`` on every labelled study of ``studies`` (series selection, volume, network, 3D merge exactly as
    the node does) at every grid threshold, and match the findings to the labels.

    ``training`` (default: the card's) flags every study the model was trained on. Studies that cannot be read
    (no eligible series, a malformed label file) are reported with their one-line error and left out of the FROC.
    """
    labelled: list[LabelledStudy] = []
    unreadable: list[StudyResult] = []
    for entry in studies:
        try:
            labelled += studies_in(entry)
        except SeriesInputError as exc:  # a folder without a DICOM image: reported with the others
            empty = LabelledStudy(entry.id, entry.patient, entry.path, "", (), ())
            unreadable.append(StudyResult(study=empty, error=str(exc)))
    return evaluate_labelled(model, labelled, training=training, options=options, progress=progress,
                             console=console, unreadable=unreadable)


def evaluate_labelled(
    model: LoadedModel,
    labelled: Sequence[LabelledStudy],
    *,
    training: TrainingRecord | None = None,
    options: EvaluationOptions | None = None,
    progress: bool = True,
    console: Console | None = None,
    unreadable: Sequence[StudyResult] = (),
) -> EvaluationReport:
    """:func:`evaluate_studies` on studies already gathered (``unreadable`` ones are reported as they are)."""
    options = options or EvaluationOptions()
    training = training if training is not None else model.card.training
    grid = threshold_grid(model.card.operating_threshold)
    results: list[StudyResult] = list(unreadable)
    curves: list[StudyCurve] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(labelled))
        for study in labelled:
            bar.update(task, description=f"evaluating {study.id}")
            result, curve = _evaluate_study(study, model, grid, options)
            if training is not None:
                seen = (training.seen(uid, series) for uid, series in study.sources)
                result = result.flagged(next((s for s in seen if s is not None), None))
            results.append(result)
            if curve is not None:
                curves.append(curve)
            bar.advance(task)
    return EvaluationReport(model.card, tuple(results), Froc(grid, curves), options.bootstrap_rounds,
                            device=str(options.inference.device or default_device()))
