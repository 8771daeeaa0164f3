"""Real findings already in a background series (its PASCAL-VOC annotations), as regions training must not call background.

A synthetic-lesion detector that learns to see nodules also sees the real tumour of a lung-cancer
series; as background it would teach the network against itself, and in evaluation it would count as a
false positive. Both treat it as an ignore region instead.
"""

from __future__ import annotations

from pathlib import Path

from detector.io import Volume
from detector.labels.voc import read_boxes

Box = tuple[float, float, float, float]
REACH_SLICES = 1
"""Unannotated slices this close to an annotated one carry its box too (a tumour does not end on its last label)."""


def known_findings(folder: Path, volume: Volume) -> dict[int, list[Box]]:
    """Per slice index of ``volume``, the source-pixel boxes (pixel edges, x1, y1, x2, y2) of ``folder/annotations``.

    Each annotation file is named by the SOP Instance UID of its slice and holds inclusive pixel
    bounds ``xmin..xmax``, ``ymin..ymax`` (:func:`read_boxes`); files for slices not in ``volume`` are skipped.
    No folder: none. A malformed file raises ``LabelError``.
    """
    index = {uid: k for k, uid in enumerate(volume.geometry.sop_instance_uids)}
    annotated: dict[int, list[Box]] = {}
    for path in sorted((folder / "annotations").glob("*.xml")):
        z = index.get(path.stem)
        if z is None:
            continue
        for box in read_boxes(path):
            annotated.setdefault(z, []).append(box.edges)
    out: dict[int, list[Box]] = {z: list(boxes) for z, boxes in annotated.items()}
    depth = volume.geometry.shape[0]
    for z, boxes in annotated.items():
        for step in range(1, REACH_SLICES + 1):
            for near in (z - step, z + step):
                if 0 <= near < depth and near not in annotated:
                    out.setdefault(near, []).extend(boxes)
    return out
