"""Input facts of a read series on real CT: equipment, geometry, contrast, body HU histogram, and their cost."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from detector.infer.facts import HU_EDGES, body_histogram, series_facts
from detector.io import read_ct_volume
from tests.support import require_ct, write_contrast_enhanced


def test_the_facts_of_a_real_chest_series() -> None:
    volume, selection = read_ct_volume(require_ct("lidc_idri_0002", "series"))
    facts = series_facts(volume, selection)
    assert (facts["manufacturer"], facts["manufacturer_model_name"], facts["convolution_kernel"]) == (
        "GE MEDICAL SYSTEMS", "LightSpeed16", "STANDARD")
    assert facts["kvp"] == 120.0 and facts["slice_thickness_mm"] == 1.25 and facts["slices"] == 261
    assert facts["pixel_spacing_mm"] == pytest.approx([0.681641, 0.681641])
    assert facts["contrast"] is False and facts["contrast_agent"] is None
    histogram = facts["hu_histogram"]
    assert len(histogram) == len(HU_EDGES) - 1 == 12 and sum(histogram) == pytest.approx(1.0, abs=1e-3)
    lungs, soft_tissue = histogram[0], histogram[3] + histogram[4]  # below -750 HU; -250..+250 HU
    assert 0.1 < lungs < 0.5 and soft_tissue > 0.4 and sum(histogram[8:]) < 0.02


def test_contrast_is_read_from_the_agent(tmp_path: Path) -> None:
    source = require_ct("chest_lung_pet_ct_dx_A0001")
    files = write_contrast_enhanced(source, tmp_path / "contrast", agent="IOMERON 400")
    volume, selection = read_ct_volume(files)
    facts = series_facts(volume, selection)
    assert facts["contrast"] is True and facts["contrast_agent"] == "IOMERON 400"


def test_an_air_only_volume_has_an_empty_histogram_and_the_facts_cost_milliseconds() -> None:
    volume, selection = read_ct_volume(require_ct("chest_lung_pet_ct_dx_A0001"))
    series_facts(volume, selection)  # torch's first call sets up its thread pool
    times_ms = []
    for _ in range(5):
        started = time.perf_counter()
        series_facts(volume, selection)
        times_ms.append((time.perf_counter() - started) * 1000)
    assert min(times_ms) < 50, f"{min(times_ms):.1f} ms per study"  # about 5 ms measured: off the hot path's cost
    air = replace(volume, hu=np.full_like(volume.hu, -1000))
    assert body_histogram(air) == [0.0] * 12
