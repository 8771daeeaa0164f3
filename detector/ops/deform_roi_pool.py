"""Deformable RoI pooling and aligned RoIAlign over torch.ops.ctnode.deform_roi_pool, and the pooling layer."""

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

import detector.ops._library  # noqa: F401  (registers torch.ops.ctnode)


def deform_roi_pool(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> Tensor:
    """Deformable (optionally modulated) RoI pooling; aligned RoIAlign when ``offset`` is None.

    RoI k = (b, x1, y1, x2, y2) in input coordinates is scaled by
    ``spatial_scale`` and shifted by -0.5 px (aligned), then split into
    ph x pw bins of size (h / ph, w / pw). Bin (i, j) averages bilinear samples
    (RoIAlign borders: points beyond one pixel outside read 0, others are
    clamped into the image) on a grid of ``sampling_ratio``^2 points (adaptive
    ceil(bin size) when 0, at least one), all shifted by
    ``gamma * (h, w) * offset[k, :, i, j]``, i.e. offsets are in RoI-size units.
    ``out[k, c, i, j] = mask[k, 0, i, j] * mean(samples)`` when modulated.

    Args:
        input: [N, C, H, W] feature map.
        rois: [K, 5] (batch index, x1, y1, x2, y2); degenerate boxes sample their single point.
        offset: [K, 2, ph, pw] ordered (dy, dx), or None.
        mask: [K, 1, ph, pw] modulation, or None.

    Returns:
        [K, C, ph, pw]. Gradients flow to input, offset and mask, not to rois.
    """
    size = list(_pair(output_size))
    out = torch.ops.ctnode.deform_roi_pool(input, rois, offset, size, spatial_scale, sampling_ratio, gamma)
    return out if mask is None else out * mask


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
) -> Tensor:
    """RoIAlign with aligned=True: deform_roi_pool without offsets. [N, C, H, W], [K, 5] -> [K, C, ph, pw]."""
    return deform_roi_pool(
        input, rois, output_size=output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio
    )


@torch.library.register_fake("ctnode::deform_roi_pool")
def _deform_roi_pool_fake(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    output_size: list[int],
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
) -> Tensor:
    return input.new_empty((rois.shape[0], input.shape[1], output_size[0], output_size[1]))


@torch.library.register_fake("ctnode::_deform_roi_pool_backward")
def _deform_roi_pool_backward_fake(
    grad_output: Tensor,
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    output_size: list[int],
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
) -> tuple[Tensor, Tensor]:
    return input.new_empty(input.shape), input.new_empty((0,) if offset is None else offset.shape)


class DeformRoIPoolPack(nn.Module):
    """Deformable RoI pooling that predicts its own per-bin offsets (and mask when modulated).

    The RoI is first pooled without offsets; a two-layer MLP on those
    features predicts (dy, dx) per bin (and a mask logit, mask = 2 * sigmoid);
    the RoI is pooled again with them. The MLPs' last layers are
    zero-initialised, so a fresh layer equals aligned RoIAlign.
    """

    def __init__(
        self,
        in_channels: int,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
        hidden_channels: int = 256,
        modulated: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.gamma = gamma
        bins = self.output_size[0] * self.output_size[1]
        self.offset_mlp = self._mlp(in_channels * bins, hidden_channels, 2 * bins)
        self.mask_mlp = self._mlp(in_channels * bins, hidden_channels, bins) if modulated else None

    @staticmethod
    def _mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
        last = nn.Linear(hidden, out_features)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), last)

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        """[N, C, H, W], [K, 5] -> [K, C, ph, pw]."""
        ph, pw = self.output_size
        options = {
            "output_size": self.output_size,
            "spatial_scale": self.spatial_scale,
            "sampling_ratio": self.sampling_ratio,
            "gamma": self.gamma,
        }
        plain = deform_roi_pool(input, rois, **options).flatten(1)
        offset = self.offset_mlp(plain).view(-1, 2, ph, pw)
        mask = None if self.mask_mlp is None else 2 * torch.sigmoid(self.mask_mlp(plain)).view(-1, 1, ph, pw)
        return deform_roi_pool(input, rois, offset, mask, **options)
