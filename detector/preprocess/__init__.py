"""From a CT volume to network inputs (2.5D context, model spacing, HU windows) and back to source pixels."""

from detector.preprocess.batch import ModelInput, model_input, volume_mapping, window
from detector.preprocess.context import context_planes, plane_coordinates_mm
from detector.preprocess.plane import PlaneMapping, plane_mapping
from detector.preprocess.spec import HUWindow, InputSpec

__all__ = [
    "HUWindow",
    "InputSpec",
    "ModelInput",
    "PlaneMapping",
    "context_planes",
    "model_input",
    "plane_coordinates_mm",
    "plane_mapping",
    "volume_mapping",
    "window",
]
