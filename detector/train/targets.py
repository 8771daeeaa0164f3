"""The shipped targets: what each model reads (input spec), reports (classes, codes) and which lesions it learns."""

from __future__ import annotations

from dataclasses import dataclass

from detector.findings import Code
from detector.preprocess import HUWindow, InputSpec
from detector.registry import ModelClass
from detector.synth import Target


@dataclass(frozen=True)
class TargetSpec:
    """A detection target: lesion kind, body part, input spec, classes, and its default crop side and pool size."""

    target: Target
    body_part: str
    input_spec: InputSpec
    classes: tuple[ModelClass, ...]
    crop_px: int = 192
    """Training crop side (model pixels, a multiple of 32): room for the largest lesion with its surroundings."""
    pool: int = 1600
    """Training samples rendered once before training (crops and flips are drawn from them)."""


TARGETS: dict[str, TargetSpec] = {
    "head": TargetSpec(
        target="head",
        body_part="HEAD",
        input_spec=InputSpec(
            pixel_spacing_mm=1.0,
            windows=(HUWindow(40.0, 80.0), HUWindow(60.0, 300.0)),
            context_slices=1,
            slice_step_mm=2.0,
            pad_multiple=32,
        ),
        classes=(
            ModelClass(
                label="hyperdense_lesion",
                finding_type=Code("274100004", "SCT", "Cerebral hemorrhage"),
                finding_site=Code("12738006", "SCT", "Brain"),
            ),
        ),
        crop_px=128,
        pool=2400,
    ),
    "chest": TargetSpec(
        target="chest",
        body_part="CHEST",
        input_spec=InputSpec(
            pixel_spacing_mm=1.0,
            windows=(HUWindow(-600.0, 1500.0), HUWindow(40.0, 400.0)),
            context_slices=1,
            slice_step_mm=5.0,
            pad_multiple=32,
        ),
        classes=(
            ModelClass(
                label="lung_nodule",
                finding_type=Code("427359005", "SCT", "Solitary nodule of lung"),
                finding_site=Code("39607008", "SCT", "Lung"),
            ),
        ),
        crop_px=192,
        pool=1600,
    ),
}
