"""Where a synthetic lesion may go: inside the skull for head CT, inside the lungs for chest CT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from detector.io import Volume
from detector.preprocess.anatomy import enclosed, outside_air
from detector.synth.insertion import Lesion

Target = Literal["head", "chest"]
BONE_HU = 300.0
BODY_HU = -300.0
LUNG_HU = -500.0


@dataclass(frozen=True)
class LesionRange:
    """What a target's lesions look like: HU range and diameter range (mm)."""

    hu: tuple[float, float]
    diameter_mm: tuple[float, float]


RANGES: dict[str, LesionRange] = {
    "head": LesionRange(hu=(50.0, 90.0), diameter_mm=(2.0, 30.0)),
    "chest": LesionRange(hu=(-100.0, 60.0), diameter_mm=(3.0, 60.0)),
}


def candidate_mask(target: Target, hu_slice: NDArray) -> NDArray[np.bool_]:
    """Pixels of one slice where a lesion centre may lie: anywhere inside the skull but bone, or in the lungs.

    Head lesions may lie anywhere intracranial (in a phantom that includes its air-filled cavity),
    so that a model cannot learn where lesions are rather than what they look like; never in the air
    around the head or the chest (:func:`outside_air`), which a holder or the table can enclose.
    """
    if target == "head":
        return enclosed(hu_slice > BONE_HU) & (hu_slice < 100) & ~outside_air(hu_slice, max_tissue=0.0)
    return enclosed(hu_slice > BODY_HU) & (hu_slice < LUNG_HU) & ~outside_air(hu_slice, max_tissue=0.5)


def _fits(target: Target, volume: Volume, z: int, y: int, x: int, radius_mm: float) -> bool:
    """The in-plane square of side 2 * radius around (y, x) on slice z stays clear of bone / mostly in lung."""
    dy, dx = volume.geometry.pixel_spacing_mm
    ry, rx = int(np.ceil(radius_mm / dy)), int(np.ceil(radius_mm / dx))
    patch = volume.hu[z, max(y - ry, 0): y + ry + 1, max(x - rx, 0): x + rx + 1]
    if target == "head":
        return bool(patch.max() < BONE_HU / 2)
    return bool(np.mean(patch < LUNG_HU) > 0.5)


def random_lesion(
    target: Target, volume: Volume, rng: np.random.Generator, z_range: tuple[int, int] | None = None, tries: int = 40
) -> Lesion | None:
    """A random lesion of the target's kind placed where it belongs in ``volume`` (None when no place fits)."""
    spec = RANGES[target]
    low, high = np.log(spec.diameter_mm[0]), np.log(spec.diameter_mm[1])
    z_low, z_high = z_range or (0, volume.geometry.shape[0])
    for _ in range(tries):
        diameter = float(np.exp(rng.uniform(low, high)))
        z = int(rng.integers(z_low, z_high))
        ys, xs = np.nonzero(candidate_mask(target, volume.hu[z]))
        if ys.size == 0:
            continue
        k = int(rng.integers(ys.size))
        if not _fits(target, volume, z, int(ys[k]), int(xs[k]), diameter / 2):
            continue
        centre = volume.geometry.voxel_to_patient([z + rng.uniform(-0.5, 0.5), ys[k], xs[k]])
        radii = diameter / 2 * rng.uniform(0.7, 1.0, 3)
        radii[int(np.argmax(radii))] = diameter / 2
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        return Lesion(
            centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
            radii_mm=(float(radii[0]), float(radii[1]), float(radii[2])),
            hu=float(rng.uniform(*spec.hu)),
            shape="irregular" if rng.random() < 0.5 else "ellipsoid",
            rotation=tuple(tuple(float(v) for v in row) for row in q),
            seed=int(rng.integers(2**31)),
        )
    return None
