"""detector.postprocess: decoding with NMS, and the 3D merge of hand-built per-slice boxes into findings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.findings import Code
from detector.io import StackGeometry
from detector.models import encode
from detector.postprocess import SliceDetection, decode_slice, link_slices, merge_findings
from detector.registry import ModelClass

CLASSES = (
    ModelClass("bleed", Code("274100004", "SCT", "Cerebral hemorrhage"), Code("12738006", "SCT", "Brain")),
    ModelClass("nodule", Code("427359005", "SCT", "Solitary nodule of lung")),
)


def _geometry(depth: int = 10, gap_mm: float = 2.0, shift_x_mm_per_slice: float = 0.0) -> StackGeometry:
    """An axial stack, 0.5 mm pixels, 64x64, slice k at z = 100 + k * gap (optionally sheared in x)."""
    positions = np.array([[-10.0 + k * shift_x_mm_per_slice, -20.0, 100.0 + k * gap_mm] for k in range(depth)])
    return StackGeometry(
        row_direction=np.array([1.0, 0.0, 0.0]),
        column_direction=np.array([0.0, 1.0, 0.0]),
        pixel_spacing_mm=(0.5, 0.5),
        positions_mm=positions,
        sop_instance_uids=tuple(f"1.2.3.{k}" for k in range(depth)),
        shape=(depth, 64, 64),
    )


def _det(z: int, box: tuple[float, float, float, float], score: float, label: int = 0) -> SliceDetection:
    return SliceDetection(z, box, score, label)


def test_boxes_on_consecutive_slices_merge_into_one_finding_with_patient_centre_and_size() -> None:
    g = _geometry()
    detections = [
        _det(3, (10.0, 20.0, 18.0, 28.0), 0.6),
        _det(4, (9.0, 19.0, 19.0, 29.0), 0.9),
        _det(5, (10.0, 20.0, 18.0, 28.0), 0.6),
    ]
    [finding] = merge_findings(detections, g, CLASSES, operating_threshold=0.5)
    assert finding.label == "bleed" and finding.finding_type == CLASSES[0].finding_type
    assert finding.finding_site == CLASSES[0].finding_site
    assert finding.score == pytest.approx(0.9)
    # every box is centred on pixel (14, 24); slices 3..5 symmetric around 4 -> z = 100 + 4 * 2
    assert finding.centre_mm == pytest.approx((-10.0 + 14 * 0.5, -20.0 + 24 * 0.5, 108.0))
    # widest box 10 px = 5 mm in x and y; slices 3..5 span 4 mm plus one 2 mm gap
    assert finding.size_mm == pytest.approx((5.0, 5.0, 6.0))
    assert finding.voxel_box == (3, 19, 9, 6, 30, 20)
    assert [s.sop_instance_uid for s in finding.slices] == ["1.2.3.3", "1.2.3.4", "1.2.3.5"]
    assert [s.score for s in finding.slices] == pytest.approx([0.6, 0.9, 0.6])


def test_a_missing_slice_splits_a_chain_the_join_mends_it_and_a_distant_box_is_its_own_finding() -> None:
    g = _geometry()
    detections = [
        _det(1, (10.0, 10.0, 16.0, 16.0), 0.8),
        _det(2, (10.0, 10.0, 16.0, 16.0), 0.7),
        _det(4, (10.0, 10.0, 16.0, 16.0), 0.75),
        _det(2, (40.0, 40.0, 46.0, 46.0), 0.65),
    ]
    assert len(link_slices(detections, g)) == 3
    findings = merge_findings(detections, g, CLASSES, operating_threshold=0.5)
    assert [(f.voxel_box[0], f.voxel_box[3]) for f in findings] == [(1, 5), (2, 3)]
    assert [len(f.slices) for f in findings] == [3, 1]
    assert [f.score for f in findings] == pytest.approx([0.8, 0.65])


def test_different_classes_never_merge() -> None:
    g = _geometry()
    detections = [_det(2, (10.0, 10.0, 16.0, 16.0), 0.8, 0), _det(3, (10.0, 10.0, 16.0, 16.0), 0.7, 1)]
    findings = merge_findings(detections, g, CLASSES, operating_threshold=0.5)
    assert sorted(f.label for f in findings) == ["bleed", "nodule"]
    assert all(len(f.slices) == 1 for f in findings)


def test_the_operating_threshold_applies_to_the_peak_and_weak_slices_extend_a_strong_finding() -> None:
    g = _geometry()
    detections = [
        _det(5, (10.0, 10.0, 16.0, 16.0), 0.3),
        _det(6, (10.0, 10.0, 16.0, 16.0), 0.7),
        _det(7, (10.0, 10.0, 16.0, 16.0), 0.3),
        _det(2, (40.0, 40.0, 46.0, 46.0), 0.45),
    ]
    [finding] = merge_findings(detections, g, CLASSES, operating_threshold=0.5)
    assert finding.voxel_box[0::3] == (5, 8)
    assert merge_findings(detections, g, CLASSES, operating_threshold=0.71) == []


def test_one_box_per_slice_per_chain_the_best_linked_one() -> None:
    g = _geometry()
    detections = [
        _det(3, (10.0, 10.0, 20.0, 20.0), 0.9),
        _det(4, (11.0, 11.0, 21.0, 21.0), 0.6),
        _det(4, (9.0, 9.0, 19.0, 19.0), 0.8),
    ]
    chains = link_slices(detections, g)
    assert [[d.score for d in c] for c in chains] == [[0.9, 0.8], [0.6]]


def test_linking_follows_the_in_plane_shift_of_a_tilted_stack() -> None:
    # each slice origin moves 5 mm (10 px) in x: the same patient point sits 10 px further left per slice
    g = _geometry(shift_x_mm_per_slice=5.0)
    detections = [_det(3, (30.0, 10.0, 36.0, 16.0), 0.9), _det(4, (20.0, 10.0, 26.0, 16.0), 0.8)]
    assert len(link_slices(detections, g)) == 1
    unshifted = [_det(3, (30.0, 10.0, 36.0, 16.0), 0.9), _det(4, (30.0, 10.0, 36.0, 16.0), 0.8)]
    assert len(link_slices(unshifted, g)) == 2


def test_boxes_are_clipped_to_the_image_and_empty_ones_dropped() -> None:
    g = _geometry()
    detections = [_det(1, (-3.0, 60.0, 4.0, 70.0), 0.9), _det(2, (70.0, 10.0, 80.0, 20.0), 0.95)]
    [finding] = merge_findings(detections, g, CLASSES, operating_threshold=0.5)
    assert finding.slices[0].box_px == (0.0, 60.0, 4.0, 64.0)


def test_decode_suppresses_overlapping_boxes_and_keeps_classes_apart() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [30.0, 30.0, 40.0, 40.0]])
    targets = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.5, 0.5, 10.5, 10.5], [30.0, 30.0, 40.0, 40.0]])
    deltas = encode(targets, anchors)
    p = torch.tensor([[0.9, 0.02], [0.8, 0.7], [0.3, 0.01]])
    logits = torch.log(p / (1 - p))
    det = decode_slice(logits, deltas, anchors, score_threshold=0.25)
    assert det.scores.tolist() == pytest.approx([0.9, 0.7, 0.3])
    assert det.labels.tolist() == [0, 1, 0]
    assert torch.allclose(det.boxes, targets[[0, 1, 2]], atol=1e-5)
    assert len(decode_slice(logits, deltas, anchors, score_threshold=0.95)) == 0


def test_fragments_of_one_lesion_are_joined_and_separate_lesions_are_not() -> None:
    """Boxes side by side on a slice, and a part stacked two slices above, are one lesion; a box elsewhere is not."""
    from detector.postprocess.merge import SliceDetection, join_fragments, link_slices

    geometry = _geometry(depth=16)
    detections = [SliceDetection(z, (10, 10, 20, 24), 0.9, 0) for z in range(3, 8)]
    detections += [SliceDetection(z, (17, 10, 30, 24), 0.5, 0) for z in range(3, 6)]  # overlaps it in-plane
    detections += [SliceDetection(z, (11, 11, 21, 23), 0.6, 0) for z in range(10, 13)]  # stacked, 2 slices apart
    detections += [SliceDetection(z, (45, 45, 55, 55), 0.8, 0) for z in range(3, 8)]  # another lesion
    chains = link_slices(detections, geometry)
    joined = join_fragments(chains, geometry, threshold=0.4)
    assert len(chains) == 4 and len(joined) == 2
    lesion = max(joined, key=len)
    assert [d.slice_index for d in lesion] == [3, 4, 5, 6, 7, 10, 11, 12]
    assert lesion[0].box_px == (10, 10, 30, 24) and lesion[0].score == 0.9
