"""Anatomy on one CT slice from HU alone: what lies inside the body (or skull), and the room air around it."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

AIR_HU = -500.0
_OUTSIDE_BLOCK = 4
"""Pixels per side of the blocks the outside-air flood runs on (a block is air only when all of it is)."""


def enclosed(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Pixels lying between the first and last ``mask`` pixel of both their row and their column."""
    rows = np.cumsum(mask, axis=1) > 0
    rows &= np.cumsum(mask[:, ::-1], axis=1)[:, ::-1] > 0
    columns = np.cumsum(mask, axis=0) > 0
    columns &= np.cumsum(mask[::-1], axis=0)[::-1] > 0
    return rows & columns


def outside_air(hu_slice: NDArray, max_tissue: float = 0.5) -> NDArray[np.bool_]:
    """The room around the patient: what a flood from the image border reaches without crossing the body.

    The flood runs on blocks of ``_OUTSIDE_BLOCK`` pixels and passes every block whose fraction of
    pixels that are not air (``AIR_HU`` and above) is at most ``max_tissue``. With 0.5 thin things (the table's shells,
    blankets, cables) cannot stop it, so the air pockets they enclose on a row and a column are
    outside, while the thick chest wall keeps the lungs in; with 0 only air blocks pass (a thin
    phantom skull keeps its air cavity in, a head holder's pocket still opens to the room). Air
    pixels next to a reached block are outside too.
    """
    b = _OUTSIDE_BLOCK
    rows, columns = hu_slice.shape
    padded = np.zeros((-(-rows // b) * b, -(-columns // b) * b), dtype=np.float32)
    padded[:rows, :columns] = hu_slice >= AIR_HU
    passable = padded.reshape(padded.shape[0] // b, b, padded.shape[1] // b, b).mean(axis=(1, 3)) <= max_tissue
    reached = np.zeros_like(passable)
    reached[0], reached[-1] = passable[0], passable[-1]
    reached[:, 0], reached[:, -1] = passable[:, 0], passable[:, -1]
    while True:
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= passable
        if (grown == reached).all():
            break
        reached = grown
    full = np.repeat(np.repeat(reached, b, axis=0), b, axis=1)[:rows, :columns]
    near = full.copy()
    near[1:] |= full[:-1]
    near[:-1] |= full[1:]
    near[:, 1:] |= full[:, :-1]
    near[:, :-1] |= full[:, 1:]
    return (full | near) & (hu_slice < AIR_HU)
