"""ctnode::deform_roi_pool and aligned RoIAlign against the reference, analytic values and gradients."""

from __future__ import annotations

import pytest
import torch

from detector.ops import DeformRoIPoolPack, deform_roi_pool, roi_align
from detector.ops import _reference as reference

F64 = torch.float64

ROIS = [
    [0, 1.0, 1.0, 6.0, 5.0],
    [1, 0.3, 2.2, 9.7, 7.9],
    [0, -3.0, -2.0, 4.0, 3.0],  # partly outside the image
    [1, 11.0, 9.5, 14.0, 12.0],  # wholly outside
    [0, 4.0, 4.0, 4.0, 4.0],  # degenerate: a point
    [1, 2.0, 3.0, 7.5, 3.0],  # degenerate: zero height
    [0, 0.0, 0.0, 9.0, 8.0],  # the whole image
]


def make_inputs(device: str, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 9, generator=gen, dtype=dtype).to(device)
    rois = torch.tensor(ROIS, dtype=dtype, device=device)
    offset = (torch.randn(len(ROIS), 2, 3, 2, generator=gen, dtype=dtype) * 2).to(device)
    return x, rois, offset


@pytest.mark.parametrize("with_offset", [False, True])
@pytest.mark.parametrize(("sampling_ratio", "spatial_scale"), [(0, 1.0), (2, 1.0), (0, 0.5), (3, 0.75)])
def test_matches_reference(sampling_ratio: int, spatial_scale: float, with_offset: bool, device: str) -> None:
    x, rois, offset = make_inputs(device)
    off = offset if with_offset else None
    options = {"output_size": (3, 2), "spatial_scale": spatial_scale, "sampling_ratio": sampling_ratio}
    out = deform_roi_pool(x, rois, off, gamma=0.3, **options)
    expected = reference.deform_roi_pool(x, rois, off, (3, 2), spatial_scale, sampling_ratio, 0.3)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_roi_align_is_the_offset_free_case(device: str) -> None:
    x, rois, offset = make_inputs(device)
    plain = roi_align(x, rois, (3, 2), sampling_ratio=2)
    torch.testing.assert_close(deform_roi_pool(x, rois, torch.zeros_like(offset), output_size=(3, 2), sampling_ratio=2), plain)
    torch.testing.assert_close(deform_roi_pool(x, rois, offset, output_size=(3, 2), sampling_ratio=2, gamma=0.0), plain)


def test_aligned_roi_align_of_a_ramp_is_the_bin_centre(device: str) -> None:
    # Pixel i covers [i, i + 1) in box coordinates, so with aligned=True the
    # value of a ramp x -> x averaged over a bin is its centre minus 0.5.
    ramp = torch.arange(16, dtype=F64, device=device).expand(1, 1, 16, 16).contiguous()
    rois = torch.tensor([[0, 2.0, 3.0, 10.0, 11.0]], dtype=F64, device=device)
    out = roi_align(ramp, rois, (2, 4), sampling_ratio=2)[0, 0]
    centres = 2.0 + (torch.arange(4, dtype=F64, device=device) + 0.5) * 2.0 - 0.5
    torch.testing.assert_close(out, centres.expand(2, 4), atol=1e-12, rtol=0)


def test_offsets_shift_by_gamma_times_roi_size(device: str) -> None:
    ramp = torch.arange(32, dtype=F64, device=device).expand(1, 1, 32, 32).contiguous()
    rois = torch.tensor([[0, 4.0, 4.0, 12.0, 12.0]], dtype=F64, device=device)
    offset = torch.zeros(1, 2, 1, 1, dtype=F64, device=device)
    offset[0, 1] = 0.5  # dx: gamma 0.5 * width 8 * 0.5 = 2 pixels right
    shifted = deform_roi_pool(ramp, rois, offset, output_size=1, sampling_ratio=2, gamma=0.5)
    plain = roi_align(ramp, rois, 1, sampling_ratio=2)
    torch.testing.assert_close(shifted - plain, torch.full_like(plain, 2.0), atol=1e-12, rtol=0)


def test_empty_rois(device: str) -> None:
    x, _, _ = make_inputs(device)
    x.requires_grad_()
    rois = torch.zeros(0, 5, dtype=F64, device=device)
    out = deform_roi_pool(x, rois, torch.zeros(0, 2, 2, 2, dtype=F64, device=device), output_size=2)
    assert out.shape == (0, 3, 2, 2)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_gradcheck_input_offset_and_mask(device: str) -> None:
    x, rois, offset = make_inputs(device)
    mask = torch.rand(len(ROIS), 1, 3, 2, dtype=F64, device=device)
    leaves = [t.clone().requires_grad_() for t in (x, offset, mask)]

    def fn(x, offset, mask):
        return deform_roi_pool(x, rois, offset, mask, output_size=(3, 2), sampling_ratio=2, gamma=0.2)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradients_match_reference(device: str) -> None:
    x, rois, offset = make_inputs(device)

    def grads(fn) -> list[torch.Tensor]:
        leaves = [x.clone().requires_grad_(), offset.clone().requires_grad_()]
        out = fn(leaves[0], rois, leaves[1], (3, 2), 1.0, 0, 0.3)
        return list(torch.autograd.grad(out, leaves, torch.linspace(-1, 1, out.numel(), dtype=F64, device=device).view_as(out)))

    ours = grads(torch.ops.ctnode.deform_roi_pool)
    for a, b in zip(ours, grads(reference.deform_roi_pool)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_bad_batch_index_is_refused() -> None:
    x, rois, _ = make_inputs("cpu")
    with pytest.raises(RuntimeError, match=r"batch indices in \[0, 2\)"):
        roi_align(x, rois + torch.tensor([2.0, 0, 0, 0, 0], dtype=F64), 2)


@pytest.mark.parametrize("modulated", [False, True])
def test_fresh_pooling_layer_equals_roi_align(modulated: bool, device: str) -> None:
    torch.manual_seed(0)
    x, rois, _ = make_inputs(device)
    layer = DeformRoIPoolPack(3, (3, 2), sampling_ratio=2, hidden_channels=16, modulated=modulated).to(device, F64)
    out = layer(x, rois)
    torch.testing.assert_close(out, roi_align(x, rois, (3, 2), sampling_ratio=2), atol=1e-12, rtol=0)
    out.square().sum().backward()
    assert layer.offset_mlp[-1].weight.grad.abs().sum() > 0
