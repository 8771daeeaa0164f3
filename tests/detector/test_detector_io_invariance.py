"""The loaded volume depends on slice positions only, never on InstanceNumber, file names or reading order."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from detector.io import read_ct_volume


def test_volume_invariant_to_instance_numbers_and_file_names(ct_data: Callable[[str], Path], tmp_path: Path) -> None:
    source = ct_data("head_ge_patient")
    reference, _ = read_ct_volume(source)
    files = sorted(source.glob("*.dcm"))
    rng = random.Random(4)
    numbers = rng.sample(range(1, 1000), len(files))
    names = [f"{n:04d}" for n in rng.sample(range(10000), len(files))]
    copies = []
    for path, number, name in zip(files, numbers, names, strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number
        copies.append(tmp_path / name)
        ds.save_as(copies[-1], enforce_file_format=True)
    assert numbers != sorted(numbers) and names != sorted(names)  # neither order follows the slice positions

    from_folder, _ = read_ct_volume(tmp_path)
    rng.shuffle(copies)
    from_list, _ = read_ct_volume(copies)
    for volume in (from_folder, from_list):
        assert volume.geometry.sop_instance_uids == reference.geometry.sop_instance_uids
        assert np.array_equal(volume.geometry.positions_mm, reference.geometry.positions_mm)
        assert np.array_equal(volume.hu, reference.hu)
