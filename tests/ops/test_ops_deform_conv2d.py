"""ctnode::deform_conv2d against conv2d, shifted conv2d and the grid_sample reference; gradients; layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detector.ops import DeformConv2d, ModulatedDeformConv2dPack, deform_conv2d
from detector.ops import _reference as reference

F64 = torch.float64

# (batch, in, height, width, out, kernel, stride, padding, dilation, groups, offset_groups)
SHAPES = {
    "plain": (2, 4, 7, 6, 5, 3, 1, 1, 1, 1, 1),
    "groups": (2, 6, 6, 7, 4, 3, 1, 1, 1, 2, 1),
    "offset_groups": (1, 6, 6, 6, 3, 3, 1, 1, 1, 1, 3),
    "groups_and_offset_groups": (2, 8, 5, 6, 4, 3, 1, 1, 1, 4, 2),
    "stride2": (2, 3, 9, 8, 4, 3, 2, 1, 1, 1, 1),
    "dilation2": (1, 3, 9, 9, 2, 3, 1, 2, 2, 1, 1),
    "kernel_2x1_nopad": (2, 3, 5, 6, 2, (2, 1), 1, 0, 1, 1, 1),
    "batch1": (1, 2, 5, 5, 3, 3, 1, 1, 1, 1, 1),
    "batch33": (33, 2, 4, 4, 2, 3, 1, 1, 1, 1, 1),
    "one_pixel": (2, 3, 1, 1, 2, 1, 1, 0, 1, 1, 1),
}


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return v if isinstance(v, tuple) else (v, v)


def make_case(name: str, device: str, dtype: torch.dtype = F64, scale: float = 2.0, seed: int = 0) -> dict:
    """Random input, weight, bias, offset (times ``scale``) and mask of the named shape."""
    n, c, h, w, o, k, s, p, d, g, og = SHAPES[name]
    kh, kw = _pair(k)
    gen = torch.Generator().manual_seed(seed)
    ho = (h + 2 * p - d * (kh - 1) - 1) // s + 1
    wo = (w + 2 * p - d * (kw - 1) - 1) // s + 1
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype).to(device)  # noqa: E731
    return {
        "input": rand(n, c, h, w),
        "weight": rand(o, c // g, kh, kw),
        "bias": rand(o),
        "offset": rand(n, 2 * og * kh * kw, ho, wo) * scale,
        "mask": torch.rand(n, og * kh * kw, ho, wo, generator=gen, dtype=dtype).to(device),
        "conv": {"stride": s, "padding": p, "dilation": d},
        "groups": g,
    }


def run(fn, case: dict, **override) -> torch.Tensor:
    args = {k: case[k] for k in ("input", "offset", "weight", "bias", "mask")} | override
    return fn(args["input"], args["offset"], args["weight"], args["bias"], args["mask"], **case["conv"])


@pytest.mark.parametrize("name", SHAPES)
def test_zero_offset_unit_mask_equals_conv2d(name: str, device: str) -> None:
    case = make_case(name, device)
    out = run(deform_conv2d, case, offset=torch.zeros_like(case["offset"]), mask=torch.ones_like(case["mask"]))
    expected = F.conv2d(case["input"], case["weight"], case["bias"], groups=case["groups"], **case["conv"])
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
    no_mask = run(deform_conv2d, case, offset=torch.zeros_like(case["offset"]), mask=None)
    torch.testing.assert_close(no_mask, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("shift", [(1, 0), (0, -2), (-1, 3), (2, 2)])
@pytest.mark.parametrize("name", ["plain", "groups", "stride2", "dilation2"])
def test_integer_offsets_equal_conv2d_of_shifted_input(name: str, shift: tuple[int, int], device: str) -> None:
    case = make_case(name, device)
    dy, dx = shift
    offset = torch.zeros_like(case["offset"])
    offset[:, 0::2] = dy
    offset[:, 1::2] = dx
    p = case["conv"]["padding"]
    # shifted[y, x] = input[y - p + dy, x - p + dx] on the padded canvas, zero
    # outside the image (F.pad crops where an amount is negative).
    shifted = F.pad(case["input"], (p - dx, p + dx, p - dy, p + dy))
    out = run(deform_conv2d, case, offset=offset, mask=None)
    conv = case["conv"] | {"padding": 0}
    expected = F.conv2d(shifted, case["weight"], case["bias"], groups=case["groups"], **conv)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("scale", [0.7, 4.0, 12.0])
@pytest.mark.parametrize("name", SHAPES)
def test_fractional_and_out_of_bounds_offsets_match_reference(name: str, scale: float, device: str) -> None:
    case = make_case(name, device, scale=scale)
    torch.testing.assert_close(run(deform_conv2d, case), run(reference.deform_conv2d, case), atol=1e-10, rtol=1e-10)
    no_mask = run(deform_conv2d, case, mask=None, bias=None)
    torch.testing.assert_close(no_mask, run(reference.deform_conv2d, case, mask=None, bias=None), atol=1e-10, rtol=0)


def test_sample_outside_the_padded_border_reads_zero(device: str) -> None:
    x = torch.ones(1, 1, 4, 4, dtype=F64, device=device)
    weight = torch.ones(1, 1, 1, 1, dtype=F64, device=device)
    offset = torch.zeros(1, 2, 4, 4, dtype=F64, device=device)
    offset[0, 0, 0, 0] = -1.0  # y = -1: on the border, reads 0
    offset[0, 0, 0, 1] = -0.5  # y = -0.5: half of row 0
    offset[0, 1, 3, 3] = 1.0  # x = 4 = W: reads 0
    offset[0, 1, 3, 2] = 0.25  # x = 2.25: inside
    out = deform_conv2d(x, offset, weight)[0, 0]
    assert out[0, 0].item() == 0.0
    assert out[0, 1].item() == 0.5
    assert out[3, 3].item() == 0.0
    assert out[3, 2].item() == 1.0


def _off_kink_offsets(case: dict, seed: int = 1) -> torch.Tensor:
    """Offsets whose fractional part stays in [0.2, 0.8], away from bilinear kinks."""
    gen = torch.Generator().manual_seed(seed)
    shape = case["offset"].shape
    whole = torch.randint(-2, 2, shape, generator=gen).to(F64)
    frac = 0.2 + 0.6 * torch.rand(shape, generator=gen, dtype=F64)
    return (whole + frac).to(case["offset"].device)


@pytest.mark.parametrize("name", ["plain", "groups_and_offset_groups", "stride2", "dilation2"])
def test_gradcheck(name: str, device: str) -> None:
    case = make_case(name, device)
    case["offset"] = _off_kink_offsets(case)
    tensors = [case[k].clone().requires_grad_() for k in ("input", "offset", "weight", "bias", "mask")]

    def fn(x, offset, weight, bias, mask):
        return deform_conv2d(x, offset, weight, bias, mask, **case["conv"])

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-7, rtol=1e-5)


def _grads(fn, case: dict, tensors: dict) -> list[torch.Tensor]:
    leaves = {k: v.detach().clone().requires_grad_() for k, v in tensors.items()}
    out = run(fn, case, **leaves)
    grad_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    return list(torch.autograd.grad(out, list(leaves.values()), grad_out))


@pytest.mark.parametrize("name", ["plain", "groups_and_offset_groups", "stride2", "batch33", "one_pixel"])
def test_gradients_match_reference(name: str, device: str) -> None:
    case = make_case(name, device, scale=3.0)
    tensors = {k: case[k] for k in ("input", "offset", "weight", "bias", "mask")}
    ours = _grads(deform_conv2d, case, tensors)
    expected = _grads(reference.deform_conv2d, case, tensors)
    for key, a, b in zip(tensors, ours, expected):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=lambda m, key=key: f"grad of {key}: {m}")


def test_cpu_backward_is_bitwise_deterministic() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 24, 24, generator=gen)
    weight = torch.randn(8, 16, 3, 3, generator=gen)
    offset = torch.randn(2, 2 * 2 * 9, 24, 24, generator=gen) * 5
    mask = torch.rand(2, 2 * 9, 24, 24, generator=gen)
    grad_out = torch.randn(2, 8, 24, 24, generator=gen)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (x, offset, weight, mask)]
        out = deform_conv2d(leaves[0], leaves[1], leaves[2], None, leaves[3], padding=1)
        runs.append(torch.autograd.grad(out, leaves, grad_out))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def test_batch_zero(device: str) -> None:
    case = make_case("plain", device)
    empty = {k: case[k][:0].requires_grad_() for k in ("input", "offset", "mask")}
    out = deform_conv2d(empty["input"], empty["offset"], case["weight"], case["bias"], empty["mask"], **case["conv"])
    assert out.shape == (0, 5, 7, 6)
    out.sum().backward()
    assert empty["input"].grad.shape == empty["input"].shape


def test_non_contiguous_and_channels_last_inputs(device: str) -> None:
    case = make_case("groups_and_offset_groups", device, scale=3.0)
    expected = run(reference.deform_conv2d, case)
    wide = torch.stack([case["input"], torch.zeros_like(case["input"])], dim=-1)[..., 0]  # stride-2 view
    assert not wide.is_contiguous() and torch.equal(wide, case["input"])
    transposed_offset = case["offset"].transpose(-1, -2).contiguous().transpose(-1, -2)
    channels_last = case["input"].to(memory_format=torch.channels_last)
    for x, offset in ((wide, case["offset"]), (channels_last, transposed_offset)):
        torch.testing.assert_close(run(deform_conv2d, case, input=x, offset=offset), expected, atol=1e-10, rtol=0)
    tensors = {k: case[k] for k in ("input", "offset", "weight", "bias", "mask")}
    strided = _grads(deform_conv2d, case, tensors | {"input": channels_last, "offset": transposed_offset})
    for a, b in zip(strided, _grads(reference.deform_conv2d, case, tensors)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_float32_matches_float64(device: str) -> None:
    case = make_case("groups_and_offset_groups", device, scale=3.0)
    single = {k: case[k].float() for k in ("input", "offset", "weight", "bias", "mask")}
    torch.testing.assert_close(run(deform_conv2d, case, **single), run(deform_conv2d, case).float(), atol=1e-4, rtol=1e-4)


def test_float32_forward_and_gradients_match_float64_over_several_chunks(device: str) -> None:
    """float runs its own GEMM path: it agrees with float64 (and that with the reference) over several chunks."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 64, 32, 32, generator=gen, dtype=F64)
    weight = torch.randn(16, 32, 3, 3, generator=gen, dtype=F64) * 0.05
    bias = torch.randn(16, generator=gen, dtype=F64)
    offset = torch.randn(2, 2 * 2 * 9, 32, 32, generator=gen, dtype=F64) * 3
    mask = torch.rand(2, 2 * 9, 32, 32, generator=gen, dtype=F64)
    grad_out = torch.randn(2, 16, 32, 32, generator=gen, dtype=F64)
    results = {}
    for dtype in (torch.float32, F64):
        leaves = [t.to(device, dtype).requires_grad_() for t in (x, offset, weight, bias, mask)]
        out = deform_conv2d(*leaves[:4], leaves[4], padding=1)
        results[dtype] = [out, *torch.autograd.grad(out, leaves, grad_out.to(device, dtype))]
    expected = reference.deform_conv2d(*(t.to(device) for t in (x, offset, weight, bias, mask)), padding=1)
    torch.testing.assert_close(results[F64][0], expected, atol=1e-10, rtol=1e-10)
    for name, single, double in zip(["out", "input", "offset", "weight", "bias", "mask"], *results.values()):
        scale = double.abs().max().item()
        torch.testing.assert_close(
            single.double(), double, atol=1e-5 * scale, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_bad_offset_shape_names_the_expected_shape() -> None:
    case = make_case("plain", "cpu")
    with pytest.raises(RuntimeError, match=r"offset must be \[N, 2 \* offset_groups \* kh \* kw, Ho, Wo\]"):
        run(deform_conv2d, case, offset=case["offset"][:, :, :-1])


@pytest.mark.parametrize("layer", [DeformConv2d, ModulatedDeformConv2dPack])
def test_fresh_layer_equals_plain_conv_and_learns_offsets(layer: type[DeformConv2d], device: str) -> None:
    torch.manual_seed(0)
    module = layer(6, 4, 3, padding=1, groups=2, offset_groups=3).to(device, F64)
    x = torch.randn(2, 6, 8, 8, dtype=F64, device=device)
    expected = F.conv2d(x, module.weight, module.bias, padding=1, groups=2)
    out = module(x)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
    out.square().sum().backward()
    assert module.offset_predictor.weight.grad.abs().sum() > 0
    assert module.offset_predictor.weight.shape[0] == (3 if module.modulated else 2) * 3 * 9


def test_inference_mode_matches_no_grad_on_a_multi_chunk_batch():
    """Parallel workers inherit the caller's inference mode (they run ATen ops on inference tensors)."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dPack(8, 8, 3, padding=1)
    torch.nn.init.normal_(layer.offset_predictor.weight, std=0.1)
    x = torch.randn(4, 8, 24, 24)
    with torch.no_grad():
        expected = layer(x)
    with torch.inference_mode():
        got = layer(x)
    torch.testing.assert_close(got, expected)
