"""Series selection: the real Philips head study and synthetic series, with a reason for every skip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from detector.io import NoEligibleSeriesError, SelectionPolicy, read_headers, select_series


def test_philips_study_picks_thin_axial_series_and_explains_the_rest(ct_data: Callable[[str], Path]) -> None:
    selection = select_series(read_headers(ct_data("head_phantom_philips_study")))
    chosen = selection.chosen
    assert chosen.series_number == 202
    assert len(chosen.instances) == 140  # S2020 holds 140 images and a DIRFILE
    assert chosen.slice_thickness_mm == 1.0
    assert "thinnest of 2 readable series" in selection.reason
    reasons = {s.series.series_number: s.reason for s in selection.skipped}
    assert set(reasons) == {100, 201, 401}
    assert reasons[100] == "LOCALIZER image type"
    assert reasons[201] == f"28 axial slices of 5 mm; chose the thinner series {chosen.series_instance_uid} (S202) of 1 mm"
    assert reasons[401].startswith("DERIVED\\SECONDARY image type")
    assert all(line.startswith("series ") or line.startswith("file ") for line in selection.reasons)
    assert any("DIRFILE" in line for line in selection.ignored_files)


def test_too_few_slices_reason_states_count_and_minimum(write_slice) -> None:  # type: ignore[no-untyped-def]
    for i in range(8):
        write_slice(f"a{i}", "1.2.3.1", float(i), series_number=1)
    paths = [write_slice(f"b{i}", "1.2.3.3", float(i), series_number=3) for i in range(2)]
    selection = select_series(read_headers(paths[0].parent))
    assert selection.chosen.series_instance_uid == "1.2.3.1"
    assert [str(s) for s in selection.skipped] == ["series 1.2.3.3 (S3): 2 slices, need 8"]


def test_thin_series_over_preferred_limit_loses_to_adequate_one(write_slice, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(10):
        write_slice(f"thick{i}", "1.2.3.7", 7.0 * i, series_number=7, thickness_mm=7.0)
        write_slice(f"mid{i}", "1.2.3.5", 5.0 * i, series_number=5, thickness_mm=5.0)
    selection = select_series(read_headers(tmp_path))
    assert selection.chosen.series_instance_uid == "1.2.3.5"
    assert "thicker than the preferred 5 mm" in str(selection.skipped[0])


def test_equal_series_prefer_more_slices_and_explain(write_slice, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(12):
        write_slice(f"long{i}", "1.2.3.9", float(i), series_number=9)
    for i in range(9):
        write_slice(f"short{i}", "1.2.3.4", float(i), series_number=4)
    selection = select_series(read_headers(tmp_path))
    assert selection.chosen.series_instance_uid == "1.2.3.9"
    assert str(selection.skipped[0]) == (
        "series 1.2.3.4 (S4): 9 axial slices of 1 mm; chose series 1.2.3.9 (S9) with as thin and more slices (12)"
    )


def test_sagittal_series_is_skipped_as_not_axial(write_slice, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(8):
        write_slice(f"sag{i}", "1.2.3.2", float(i), orientation=(0, 1, 0, 0, 0, -1))
    with pytest.raises(NoEligibleSeriesError, match=r"series 1\.2\.3\.2 \(S3\): sagittal slices \(90 deg from axial"):
        select_series(read_headers(tmp_path))


def test_policy_minimum_is_configurable_and_validated(write_slice, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        write_slice(f"s{i}", "1.2.3.8", float(i))
    assert len(select_series(read_headers(tmp_path), SelectionPolicy(min_slices=3)).chosen.instances) == 3
    with pytest.raises(ValueError, match="min_slices must be at least 2"):
        SelectionPolicy(min_slices=1)


def test_original_secondary_series_is_read_only_when_no_primary_is(write_slice, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    secondary = ("ORIGINAL", "SECONDARY", "AXIAL")
    for i in range(10):
        write_slice(f"sec{i}", "1.2.3.5", float(i), series_number=5, image_type=secondary)
    alone = select_series(read_headers(tmp_path))
    assert alone.chosen.series_instance_uid == "1.2.3.5"
    assert "ORIGINAL\\SECONDARY CT" in alone.reason
    for i in range(10):
        write_slice(f"pri{i}", "1.2.3.6", 3.0 * i, series_number=6, thickness_mm=3.0)
    both = select_series(read_headers(tmp_path))
    assert both.chosen.series_instance_uid == "1.2.3.6"
    assert [s.reason for s in both.skipped][0].endswith("ORIGINAL\\SECONDARY; chose the PRIMARY series 1.2.3.6 (S6)")
