"""Synthetic sets of a manifest: planned from a seed, written once, entries of their background's patient and role."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from detector.data import ManifestError, load_manifest
from detector.evaluate import entries_from
from detector.synth.sets import study_plan


def test_the_plan_puts_positives_first_then_lesion_free_controls() -> None:
    plan = study_plan(3, 2, 2, 10)
    assert [seed for seed, _ in plan] == [10, 11, 12, 13, 14]
    assert all(1 <= count <= 2 for _, count in plan[:3]) and [count for _, count in plan[3:]] == [0, 0]
    assert plan == study_plan(3, 2, 2, 10)


def test_a_manifest_set_is_written_once_and_evaluated_with_its_background(
    ct_data: Callable[[str], Path], tmp_path: Path
) -> None:
    manifest = tmp_path / "set.yaml"
    manifest.write_text(
        f"name: tiny\nroot: {ct_data('')}\nroot_env: false\nstudies:\n"
        "  - {id: ge, path: head_ge_patient, patient: GE, role: test}\n"
        "synthetic:\n  - {background: ge, target: head, studies: 1, negatives: 1, lesions: 2, seed: 5}\n")
    cache = tmp_path / "cache"
    entries = entries_from([manifest], ["test"], cache)
    assert [(e.id, e.patient, e.role) for e in entries] == [("ge", "GE", "test"), ("ge+5", "GE", "test"),
                                                           ("ge+6", "GE", "test")]
    assert (entries[1].path / "labels" / "lesions.seg.dcm").exists()
    assert not (entries[2].path / "labels" / "lesions.seg.dcm").exists()
    written = (entries[1].path / "CT0001.dcm").stat().st_mtime_ns
    assert entries_from([manifest], ["validation"], cache) == []
    entries_from([manifest], ["test"], cache)
    assert (entries[1].path / "CT0001.dcm").stat().st_mtime_ns == written


def test_a_set_over_an_unknown_study_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    manifest = tmp_path / "set.yaml"
    manifest.write_text("root_env: false\nstudies:\n  - {id: a, path: a, patient: p, role: test}\n"
                        "synthetic:\n  - {background: b, target: chest, studies: 1}\n")
    with pytest.raises(ManifestError, match=r"synthetic\[0\]: background 'b' is not a study id"):
        load_manifest(manifest)
