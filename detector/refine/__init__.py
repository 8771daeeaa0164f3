"""Second stage: re-score each 3D candidate of the first stage from a 3D patch of the volume around it."""

from detector.refine.network import PatchNet
from detector.refine.patches import PatchSpec, candidate_features, extract_patches
from detector.refine.stage import Refiner, refined

__all__ = ["PatchNet", "PatchSpec", "Refiner", "candidate_features", "extract_patches", "refined"]
