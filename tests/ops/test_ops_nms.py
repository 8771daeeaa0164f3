"""ctnode::nms of 2D boxes against the reference greedy NMS."""

from __future__ import annotations

import pytest
import torch

from detector.ops import nms
from detector.ops import _reference as reference


def random_boxes(count: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered boxes (so many overlap), some outside [0, 100] and some degenerate."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randint(-10, 110, (count // 4 + 1, 2), generator=gen).to(dtype)
    centre = centres[torch.randint(len(centres), (count,), generator=gen)] + torch.randn(count, 2, generator=gen, dtype=dtype) * 3
    size = torch.rand(count, 2, generator=gen, dtype=dtype) * 20
    size[::7] = 0  # degenerate
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    scores = torch.rand(count, generator=gen, dtype=dtype).round(decimals=2)  # ties
    return boxes, scores


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9])
def test_matches_reference(threshold: float, device: str) -> None:
    for seed, count in ((0, 1), (1, 17), (2, 300), (3, 1000)):
        boxes, scores = random_boxes(count, seed)
        kept = nms(boxes.to(device), scores.to(device), threshold)
        assert kept.dtype == torch.long and kept.device.type == device
        assert torch.equal(kept.cpu(), reference.nms(boxes, scores, threshold))


def test_known_example() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.9])
    # IoU(0, 1) = 81 / 119 = 0.68; box 3 ties box 0 and comes later, IoU 1.
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]


def test_degenerate_boxes_never_suppress_each_other() -> None:
    boxes = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10.0]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.0).tolist() == [0, 1, 2]


def test_empty_input(device: str) -> None:
    kept = nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), 0.5)
    assert kept.shape == (0,) and kept.dtype == torch.long


def test_wrong_box_width_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        nms(torch.zeros(3, 6), torch.zeros(3), 0.5)
    with pytest.raises(RuntimeError, match=r"boxes must be \[N, 4\]"):
        torch.ops.ctnode.nms(torch.zeros(3, 6), torch.zeros(3), 0.5)
    with pytest.raises(RuntimeError, match=r"scores must be \[N = 3\]"):
        torch.ops.ctnode.nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
