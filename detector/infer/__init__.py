"""Inference: shipped models by name, and a CT series (files or volume) to 3D findings in bounded batches."""

from detector.infer.inference import (
    DetectionResult,
    InferenceCancelled,
    InferenceOptions,
    default_device,
    detect_series,
    detect_volume,
    findings_at,
    scored_findings,
    slice_detections,
)
from detector.infer.gate import OutOfDomainError, domain_reasons
from detector.infer.models import LoadedModel, card_path, load_model, shipped_cards

__all__ = [
    "DetectionResult",
    "InferenceCancelled",
    "InferenceOptions",
    "LoadedModel",
    "OutOfDomainError",
    "card_path",
    "default_device",
    "detect_series",
    "detect_volume",
    "domain_reasons",
    "findings_at",
    "scored_findings",
    "load_model",
    "shipped_cards",
    "slice_detections",
]
