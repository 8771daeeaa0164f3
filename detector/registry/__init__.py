"""Model cards (JSON: identity, classes and codes, input spec, operating point, evaluation) and verified weights."""

from detector.registry.card import (
    SCHEMA_VERSION,
    Domain,
    EvaluationFigure,
    Lineage,
    ModelCard,
    ModelCardError,
    ModelClass,
    SecondStage,
    TrainedStudy,
    TrainingRecord,
    Urgency,
    UrgentClass,
    card_from_dict,
    card_to_dict,
    load_card,
    save_card,
)
from detector.registry.weights import (
    WeightsMismatchError,
    load_state_dict,
    sha256_file,
)

__all__ = [
    "SCHEMA_VERSION",
    "Domain",
    "EvaluationFigure",
    "Lineage",
    "ModelCard",
    "ModelCardError",
    "ModelClass",
    "SecondStage",
    "TrainedStudy",
    "TrainingRecord",
    "Urgency",
    "UrgentClass",
    "WeightsMismatchError",
    "card_from_dict",
    "card_to_dict",
    "load_card",
    "load_state_dict",
    "save_card",
    "sha256_file",
]
