"""Lesion-level evaluation: labelled studies through the node's inference path, FROC, CPM, CIs and reports."""

from detector.evaluate.froc import (
    FP_RATES,
    Froc,
    Interval,
    Outcome,
    StudyCurve,
    candidates_curve,
    classify,
)
from detector.evaluate.report import EvaluationReport, FrocLine, StudyResult, plot_froc
from detector.evaluate.run import EvaluationOptions, evaluate_labelled, evaluate_studies
from detector.evaluate.studies import LabelledStudy, entries_from, studies_in
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
    "candidates_curve",
    "classify",
    "entries_from",
    "evaluate_labelled",
    "evaluate_studies",
    "plot_froc",
    "planes_from_headers",
    "studies_in",
]
