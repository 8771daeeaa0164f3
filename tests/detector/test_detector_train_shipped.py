"""The shipped head model finds what its training is for: a hyperdense lesion inserted into real head CT.

The node's end-to-end tests rely on exactly this (a 12 mm lesion at 75 HU, about 40 HU over the brain,
in head_ge_patient); the chest counterpart is in test_detector_infer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from detector.infer import InferenceOptions, detect_volume, load_model
from detector.io import read_ct_volume
from detector.synth import insert_lesions, random_lesion, slab


def test_the_head_model_finds_a_12_mm_hyperdense_lesion_where_it_was_put(ct_data: Callable[[str], Path]) -> None:
    volume, _ = read_ct_volume(ct_data("head_ge_patient"))
    placed = random_lesion("head", volume, np.random.default_rng(109), z_range=(3, 25))
    assert placed is not None
    lesion = replace(placed, radii_mm=(6.0, 6.0, 6.0), hu=75.0, shape="ellipsoid")
    with_lesion, _ = insert_lesions(volume, [lesion])
    z = int(np.rint(volume.geometry.patient_to_voxel(lesion.centre_mm)[0]))
    part = slab(with_lesion, max(z - 4, 0), min(z + 5, volume.geometry.shape[0]))
    model = load_model("head")
    findings, _ = detect_volume(part, model, InferenceOptions(threads=1))
    assert findings, "the inserted lesion was not found"
    truth = np.asarray(lesion.centre_mm)
    best = min(findings, key=lambda f: float(np.linalg.norm(np.asarray(f.centre_mm) - truth)))
    assert float(np.linalg.norm(np.asarray(best.centre_mm) - truth)) <= 6.0
    assert best.score >= model.card.operating_threshold
