"""The first shipped targets: what each model reads (input spec), reports (classes, codes) and trains on."""

from __future__ import annotations

from dataclasses import dataclass

from detector.findings import Code
from detector.preprocess import HUWindow, InputSpec
from detector.registry import ModelClass
from detector.synth import Target


@dataclass(frozen=True)
class TargetSpec:
    """A detection target: model name, body part, input spec, classes and the background series it trains on."""

    target: Target
    name: str
    body_part: str
    input_spec: InputSpec
    classes: tuple[ModelClass, ...]
    backgrounds: tuple[str, ...]
    """Folders under the CT data root, each read with the io stage's own series selection."""
    crop_px: int = 192
    """Training crop side (model pixels, a multiple of 32): room for the largest lesion with its surroundings."""
    pool: int = 1600
    """Training samples rendered once before training (crops and flips are drawn from them)."""


TARGETS: dict[str, TargetSpec] = {
    "head": TargetSpec(
        target="head",
        name="ctnode-head",
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
        backgrounds=("head_phantom_philips_study", "head_ge_patient"),
        crop_px=128,
        pool=2400,
    ),
    "chest": TargetSpec(
        target="chest",
        name="ctnode-chest",
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
        backgrounds=("chest_lung_pet_ct_dx_A0001",),
        crop_px=192,
        pool=1600,
    ),
}
