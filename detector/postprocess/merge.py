"""Per-slice boxes -> 3D findings: link boxes across adjacent slices, then measure each chain in patient mm."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from detector.findings import Finding, SliceBox
from detector.io import StackGeometry
from detector.registry import ModelClass

LINK_IOU = 0.2
FRAGMENT_OVERLAP = 0.25
"""Two chains are fragments of one lesion when boxes of theirs on the same or adjacent slices overlap by at least
this share of the smaller box."""
FOOTPRINT_OVERLAP = 0.5
FRAGMENT_GAP_SLICES = 2
"""... or when their footprints in the slice plane overlap by this share of the smaller one, with at most this many
slices between them without either (parts of one lesion stacked, a few slices missed between them)."""


@dataclass(frozen=True)
class SliceDetection:
    """One detection on source slice ``slice_index``: box (x1, y1, x2, y2) in source pixels, score, class index."""

    slice_index: int
    box_px: tuple[float, float, float, float]
    score: float
    label: int


def _shifted(geometry: StackGeometry, box: tuple[float, ...], source: int, target: int) -> np.ndarray:
    """``box`` of slice ``source`` in slice ``target``'s pixel coordinates (undoes the in-plane gantry-tilt shift)."""
    delta = geometry.positions_mm[target] - geometry.positions_mm[source]
    dy, dx = geometry.pixel_spacing_mm
    sx, sy = float(delta @ geometry.row_direction) / dx, float(delta @ geometry.column_direction) / dy
    return np.asarray(box) - np.array([sx, sy, sx, sy])


def _linked(a: np.ndarray, b: np.ndarray) -> bool:
    """Boxes on adjacent slices belong together: IoU >= LINK_IOU, or each centre lies inside the other box."""
    low, high = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(high - low, 0, None)))
    union = float(np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)
    if union > 0 and inter / union >= LINK_IOU:
        return True
    ca, cb = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
    return bool(np.all((ca >= b[:2]) & (ca <= b[2:])) and np.all((cb >= a[:2]) & (cb <= a[2:])))


def link_slices(detections: Sequence[SliceDetection], geometry: StackGeometry) -> list[list[SliceDetection]]:
    """Chains of one box per slice over consecutive slices, same class, grown greedily from the best score.

    The best unused detection seeds a chain; the chain then grows one slice at a time up and
    down, each step taking the best-scoring unused detection linked to the chain's end box.
    """
    order = sorted(range(len(detections)), key=lambda i: (-detections[i].score, i))
    by_slice: dict[int, list[int]] = {}
    for i in order:
        by_slice.setdefault(detections[i].slice_index, []).append(i)
    used: set[int] = set()
    chains = []
    for seed in order:
        if seed in used:
            continue
        used.add(seed)
        chain = [seed]
        for step in (-1, 1):
            end = seed
            while True:
                z = detections[end].slice_index + step
                end_box = _shifted(geometry, detections[end].box_px, detections[end].slice_index, z) if (
                    0 <= z < geometry.shape[0]) else None
                match = next(
                    (
                        i for i in by_slice.get(z, [])
                        if i not in used and detections[i].label == detections[seed].label
                        and end_box is not None and _linked(end_box, np.asarray(detections[i].box_px))
                    ),
                    None,
                )
                if match is None:
                    break
                used.add(match)
                chain.append(match)
                end = match
        chains.append(sorted((detections[i] for i in chain), key=lambda d: d.slice_index))
    return chains


def _overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection of two boxes over the area of the smaller one (0 when either is empty)."""
    low, high = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(high - low, 0, None)))
    smaller = min(float(np.prod(a[2:] - a[:2])), float(np.prod(b[2:] - b[:2])))
    return inter / smaller if smaller > 0 else 0.0


def join_fragments(chains: Sequence[Sequence[SliceDetection]], geometry: StackGeometry,
                   threshold: float = 0.0) -> list[list[SliceDetection]]:
    """One chain per lesion: chains of the same class are joined when boxes of theirs on the same or an adjacent
    slice overlap (:data:`FRAGMENT_OVERLAP` of the smaller box), or when their footprints (the union of their
    boxes in the slice plane) overlap by :data:`FOOTPRINT_OVERLAP` of the smaller one and at most
    :data:`FRAGMENT_GAP_SLICES` slices lie between them; and so on transitively. On each slice the joined chain
    keeps one box, the union of its boxes there, with their best score. Footprints join only groups whose peak
    reaches ``threshold`` (findings, not the low candidates that may extend them); the others are returned as
    they are.

    A large or irregular lesion otherwise comes out as several findings: boxes side by side on one slice, a part
    stacked above another, or a chain that broke where the lesion's outline jumped between slices.
    """
    parent = list(range(len(chains)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_slice: dict[int, list[tuple[int, SliceDetection]]] = {}
    for n, chain in enumerate(chains):
        for d in chain:
            by_slice.setdefault(d.slice_index, []).append((n, d))
    for z, here in by_slice.items():
        for dz in (0, 1):
            there = here if dz == 0 else by_slice.get(z + dz, [])
            if not there:
                continue
            for i, a in here:
                box = _shifted(geometry, a.box_px, z, z + dz) if dz else np.asarray(a.box_px)
                for j, b in there:
                    if i != j and a.label == b.label and root(i) != root(j) and \
                            _overlap_of_smaller(box, np.asarray(b.box_px)) >= FRAGMENT_OVERLAP:
                        parent[root(i)] = root(j)
    while True:  # footprints grow as groups join: look again until nothing joins
        groups = {r: members for r, members in _groups(chains, root).items()
                  if max(d.score for d in members) >= threshold}
        extents = {r: (members[0].label, min(d.slice_index for d in members), max(d.slice_index for d in members),
                       np.array([min(d.box_px[0] for d in members), min(d.box_px[1] for d in members),
                                 max(d.box_px[2] for d in members), max(d.box_px[3] for d in members)]))
                   for r, members in groups.items()}
        joined = False
        keys = list(extents)
        for n, a in enumerate(keys):
            for b in keys[n + 1:]:
                (la, a0, a1, fa), (lb, b0, b1, fb) = extents[a], extents[b]
                if la != lb or root(a) == root(b):
                    continue
                between = max(b0 - a1, a0 - b1, 1) - 1  # slices strictly between the two (0: they touch or overlap)
                if between <= FRAGMENT_GAP_SLICES and _overlap_of_smaller(fa, fb) >= FOOTPRINT_OVERLAP:
                    parent[root(a)] = root(b)
                    joined = True
        if not joined:
            break
    out = []
    for members in _groups(chains, root).values():
        per_slice: dict[int, list[SliceDetection]] = {}
        for d in members:
            per_slice.setdefault(d.slice_index, []).append(d)
        out.append([SliceDetection(z, (min(d.box_px[0] for d in ds), min(d.box_px[1] for d in ds),
                                       max(d.box_px[2] for d in ds), max(d.box_px[3] for d in ds)),
                                   max(d.score for d in ds), ds[0].label)
                    for z, ds in sorted(per_slice.items())])
    return out


def _groups(chains: Sequence[Sequence[SliceDetection]], root: Callable[[int], int]) -> dict[int, list[SliceDetection]]:
    """The detections of the chains under each root."""
    groups: dict[int, list[SliceDetection]] = {}
    for n, chain in enumerate(chains):
        groups.setdefault(root(n), []).extend(chain)
    return groups


def _clipped(box: tuple[float, float, float, float], rows: int, columns: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (float(np.clip(x1, 0, columns)), float(np.clip(y1, 0, rows)),
            float(np.clip(x2, 0, columns)), float(np.clip(y2, 0, rows)))


def _pixel_span(low: float, high: float, size: int) -> tuple[int, int]:
    """Pixels (start, end exclusive) at least half inside the edges [low, high]; at least one pixel."""
    start = int(np.clip(np.ceil(low), 0, size - 1))
    return start, int(np.clip(np.floor(high) + 1, start + 1, size))


def to_finding(chain: Sequence[SliceDetection], geometry: StackGeometry, cls: ModelClass) -> Finding:
    """A finding from one chain: peak score, score-weighted centre (LPS mm), extents and per-slice boxes.

    ``size_mm`` is the extent along (row direction, column direction, slice normal): the widest
    box on any slice, and the span of the slices plus one median slice gap. ``voxel_box`` holds
    every pixel at least half inside the union of the boxes.
    """
    _, rows, columns = geometry.shape
    boxes = np.array([d.box_px for d in chain], dtype=np.float64)
    scores = np.array([d.score for d in chain], dtype=np.float64)
    z = np.array([d.slice_index for d in chain], dtype=np.float64)
    centres = np.stack([z, (boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2], axis=1)
    centre = (geometry.voxel_to_patient(centres) * scores[:, None]).sum(axis=0) / scores.sum()
    dy, dx = geometry.pixel_spacing_mm
    coords = geometry.slice_coordinates_mm
    gap = float(np.median(geometry.slice_gaps_mm))
    size = (
        float((boxes[:, 2] - boxes[:, 0]).max() * dx),
        float((boxes[:, 3] - boxes[:, 1]).max() * dy),
        float(coords[int(z.max())] - coords[int(z.min())] + gap),
    )
    y0, y1 = _pixel_span(boxes[:, 1].min(), boxes[:, 3].max(), rows)
    x0, x1 = _pixel_span(boxes[:, 0].min(), boxes[:, 2].max(), columns)
    voxel_box = (int(z.min()), y0, x0, int(z.max()) + 1, y1, x1)
    slices = tuple(
        SliceBox(geometry.sop_instance_uids[d.slice_index], _clipped(d.box_px, rows, columns), float(d.score))
        for d in chain
    )
    return Finding(
        label=cls.label,
        finding_type=cls.finding_type,
        score=float(scores.max()),
        centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
        size_mm=size,
        voxel_box=voxel_box,
        slices=slices,
        finding_site=cls.finding_site,
    )


def merge_findings(
    detections: Sequence[SliceDetection],
    geometry: StackGeometry,
    classes: Sequence[ModelClass],
    operating_threshold: float,
) -> list[Finding]:
    """3D findings whose peak score reaches ``operating_threshold``, best first: boxes linked across slices, the
    fragments of one lesion joined (:func:`join_fragments`).

    Boxes that leave the image are clipped to it; a box left empty by clipping is dropped first.
    """
    _, rows, columns = geometry.shape
    inside = [
        d for d in detections
        if (b := _clipped(d.box_px, rows, columns))[0] < b[2] and b[1] < b[3]
    ]
    chains = [c for c in join_fragments(link_slices(inside, geometry), geometry, operating_threshold)
              if max(d.score for d in c) >= operating_threshold]
    findings = [to_finding(c, geometry, classes[c[0].label]) for c in chains]
    return sorted(findings, key=lambda f: -f.score)
