"""Synthetic lesions inserted into real CT backgrounds at known patient positions (training and tests)."""

from detector.synth.insertion import InsertedLesion, Lesion, insert_lesions, slab
from detector.synth.placement import RANGES, LesionRange, Target, candidate_mask, random_lesion

__all__ = [
    "RANGES",
    "InsertedLesion",
    "Lesion",
    "LesionRange",
    "Target",
    "candidate_mask",
    "insert_lesions",
    "random_lesion",
    "slab",
]
