"""The domain gate: body part and contrast from tags and pixels, slice thickness and coverage, on real series."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from detector.infer import OutOfDomainError, detect_series, domain_reasons, load_model
from detector.infer.gate import read_pixels, sampled
from detector.io import read_ct_volume
from detector.registry import Domain
from tests.support import write_contrast_enhanced


@pytest.mark.parametrize(("folder", "part", "contrast"), [
    ("head_ge_patient", "HEAD", False), ("head_phantom_philips_study", "HEAD", False),
    ("chest_lung_pet_ct_dx_A0001", "CHEST", None), ("lidc_idri_0001", "CHEST", None),
])
def test_the_pixels_tell_head_from_chest_and_a_plain_head_from_an_enhanced_one(
    ct_data: Callable[[str], Path], folder: str, part: str, contrast: bool | None
) -> None:
    reading = read_pixels(sampled(read_ct_volume(ct_data(folder))[0]))
    assert (reading.body_part, reading.contrast) == (part, contrast), reading.evidence


def test_the_shipped_models_accept_their_own_series_and_refuse_each_other(ct_data: Callable[[str], Path]) -> None:
    head, chest = load_model("head").card, load_model("chest").card
    ge = read_ct_volume(ct_data("head_ge_patient"))[0]
    a0001 = read_ct_volume(ct_data("chest_lung_pet_ct_dx_A0001"))[0]  # no Body Part Examined: the pixels say
    assert domain_reasons(ge, head) == [] and domain_reasons(a0001, chest) == []
    [why] = domain_reasons(a0001, head)
    assert why.startswith("body part CHEST from the pixels") and why.endswith("the model reads HEAD")
    assert any(r.startswith("body part HEAD from the pixels") for r in domain_reasons(ge, chest))


def test_a_contrast_enhanced_head_is_refused_by_its_tag_or_without_it_by_its_pixels(
    ct_data: Callable[[str], Path], tmp_path: Path
) -> None:
    head = load_model("head")
    untagged = write_contrast_enhanced(ct_data("head_ge_patient"), tmp_path / "untagged")
    with pytest.raises(OutOfDomainError) as refused:
        detect_series(untagged[0].parent, head)
    [why] = refused.value.reasons
    assert why.startswith("contrast-enhanced series by the pixels") and why.endswith("reads non-contrast CT")
    # the refused series' headers, as read, go with the refusal (its not-analysed objects need no file read again)
    assert len(refused.value.headers) == len(untagged) and not any("PixelData" in ds for ds in refused.value.headers)
    tagged = write_contrast_enhanced(ct_data("head_ge_patient"), tmp_path / "tagged", agent="IOMERON 350")
    volume = read_ct_volume(tagged[0].parent)[0]
    assert domain_reasons(volume, head.card) == [
        "contrast-enhanced series by Contrast/Bolus Agent 'IOMERON 350'; the model reads non-contrast CT"]
    assert domain_reasons(volume, replace(head.card, domain=replace(head.card.domain, contrast="any"))) == []


def test_slice_thickness_and_coverage_limits(ct_data: Callable[[str], Path]) -> None:
    card = load_model("head").card
    ge = read_ct_volume(ct_data("head_ge_patient"))[0]
    strict = replace(card, domain=Domain("non-contrast", (0.5, 5.0), 500.0))
    reasons = domain_reasons(ge, strict)
    assert reasons[0] == "slices 7 mm thick; the model reads 0.5-5 mm"
    assert reasons[1].startswith("the series covers") and reasons[1].endswith("the model needs 500 mm")
