"""Lesion-level evaluation: labelled studies through the node's inference path, FROC, CPM, CIs and reports."""

from detector.evaluate.froc import (
    FP_RATES,
    Froc,
    Interval,
    Outcome,
    StudyCurve,
    bootstrap_weights,
    candidates_curve,
    classify,
    paired_difference,
)
from detector.evaluate.labelled import LabelledStudy, entries_from, studies_in
from detector.evaluate.report import EvaluationReport, FrocLine, StudyResult, plot_froc
from detector.evaluate.run import EvaluationOptions, evaluate_labelled, evaluate_studies
from detector.labels.lesions import (
    ImagePlane,
    LabelError,
    LesionOutline,
    LesionRecord,
    planes_from_headers,
)

__all__ = [
    "FP_RATES",
    "EvaluationOptions",
    "EvaluationReport",
    "Froc",
    "FrocLine",
    "ImagePlane",
    "Interval",
    "LabelError",
    "LabelledStudy",
    "LesionOutline",
    "LesionRecord",
    "Outcome",
    "StudyCurve",
    "StudyResult",
    "bootstrap_weights",
    "candidates_curve",
    "classify",
    "entries_from",
    "evaluate_labelled",
    "evaluate_studies",
    "paired_difference",
    "plot_froc",
    "planes_from_headers",
    "studies_in",
]
