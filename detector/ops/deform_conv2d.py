"""Modulated deformable convolution (DCNv2) over torch.ops.ctnode.deform_conv2d, and its layers."""

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

import detector.ops._library  # noqa: F401  (registers torch.ops.ctnode)


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> Tensor:
    """Modulated deformable convolution (DCNv2; DCNv1 when ``mask`` is None).

    For output position p and kernel tap k with grid point p_k,
    ``out[n, o, p] = bias[o] + sum_{c, k} weight[o, c, k] * mask[n, g(c), k, p]
    * x[n, c](p * stride - padding + p_k * dilation + (dy, dx)[n, g(c), k, p])``,
    where x(y, x) is zero-padding bilinear interpolation (a point outside
    (-1, H) x (-1, W) reads 0) and g(c) is the offset group of channel c.

    Args:
        input: [N, C, H, W].
        offset: [N, 2 * G_off * kh * kw, Ho, Wo], ordered (offset group, tap, (dy, dx));
            taps run row-major over the kernel.
        weight: [O, C / groups, kh, kw]; ``groups`` is C / weight.shape[1].
        bias: [O] or None.
        mask: [N, G_off * kh * kw, Ho, Wo] modulation scalars, or None (all ones).
        stride, padding, dilation: as for conv2d.

    Returns:
        [N, O, Ho, Wo] with Ho = (H + 2 * pad - dilation * (kh - 1) - 1) // stride + 1.
    """
    kh, kw = weight.shape[-2:]
    if input.dim() != 4 or weight.dim() != 4 or weight.shape[1] == 0:
        raise ValueError(
            f"deform_conv2d: input must be [N, C, H, W] and weight [O, C / groups, kh, kw], "
            f"got {tuple(input.shape)} and {tuple(weight.shape)}"
        )
    groups = input.shape[1] // weight.shape[1]
    offset_groups = offset.shape[1] // (2 * kh * kw)
    return torch.ops.ctnode.deform_conv2d(
        input,
        weight,
        offset,
        mask,
        bias,
        list(_pair(stride)),
        list(_pair(padding)),
        list(_pair(dilation)),
        groups,
        offset_groups,
    )


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.register_fake("ctnode::deform_conv2d")
def _deform_conv2d_fake(
    input: Tensor,
    weight: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    offset_groups: int,
) -> Tensor:
    n, _, h, w = input.shape
    o, _, kh, kw = weight.shape
    ho = _out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = _out_size(w, kw, stride[1], padding[1], dilation[1])
    return input.new_empty((n, o, ho, wo))


@torch.library.register_fake("ctnode::_deform_conv2d_backward")
def _deform_conv2d_backward_fake(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    offset_groups: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return (
        input.new_empty(input.shape),
        weight.new_empty(weight.shape),
        offset.new_empty(offset.shape),
        input.new_empty((0,)) if mask is None else mask.new_empty(mask.shape),
        input.new_empty((0,)) if bias is None else bias.new_empty(bias.shape),
    )


class DeformConv2d(nn.Module):
    """Deformable convolution that predicts its own offsets (DCNv1; DCNv2 with ``modulated``).

    A plain conv of the same kernel, stride, padding and dilation (linear, no
    activation) predicts 2 offsets per tap and offset group (and, when
    modulated, one mask logit, with mask = 2 * sigmoid(logit)). The predictor
    is zero-initialised, so a fresh layer computes exactly the plain conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        offset_groups: int = 1,
        bias: bool = True,
        modulated: bool = False,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups or in_channels % offset_groups:
            raise ValueError(
                f"DeformConv2d: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups}), in_channels by offset_groups ({offset_groups})"
            )
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.offset_groups = offset_groups
        self.modulated = modulated
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        taps = offset_groups * self.kernel_size[0] * self.kernel_size[1]
        self.offset_predictor = nn.Conv2d(
            in_channels,
            (3 if modulated else 2) * taps,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialises the weight like nn.Conv2d and the offset/mask predictor to zero."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.offset_predictor.weight)
        nn.init.zeros_(self.offset_predictor.bias)

    def forward(self, input: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, O, Ho, Wo]."""
        predicted = self.offset_predictor(input)
        taps = self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        offset = predicted[:, : 2 * taps]
        mask = 2 * torch.sigmoid(predicted[:, 2 * taps :]) if self.modulated else None
        return deform_conv2d(
            input,
            offset,
            self.weight,
            self.bias,
            mask,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, offset_groups={self.offset_groups}, modulated={self.modulated}"
        )


class ModulatedDeformConv2dPack(DeformConv2d):
    """DCNv2 layer: DeformConv2d with a predicted modulation mask (2 * sigmoid, 1 when fresh)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        offset_groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            offset_groups,
            bias,
            modulated=True,
        )
