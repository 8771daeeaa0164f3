"""Pure-PyTorch references of the ctnode operators, for tests and benchmarks only."""

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair


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
    """DCNv2 through grid_sample on a one-pixel zero-padded input (so any H, W >= 1 works)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = input.shape
    o, cg, kh, kw = weight.shape
    groups, taps = c // cg, kh * kw
    ho, wo = offset.shape[-2:]
    offset_groups = offset.shape[1] // (2 * taps)
    arange = lambda size: torch.arange(size, dtype=input.dtype, device=input.device)  # noqa: E731
    tap_y = (arange(kh) * dh).repeat_interleave(kw)
    tap_x = (arange(kw) * dw).repeat(kh)
    base_y = (arange(ho) * sh - ph)[None, :, None] + tap_y[:, None, None]
    base_x = (arange(wo) * sw - pw)[None, None, :] + tap_x[:, None, None]
    off = offset.reshape(n, offset_groups, taps, 2, ho, wo)
    y = base_y + off[:, :, :, 0]
    x = base_x + off[:, :, :, 1]
    grid = torch.stack(((x + 1) / (w + 1) * 2 - 1, (y + 1) / (h + 1) * 2 - 1), dim=-1)
    padded = F.pad(input, (1, 1, 1, 1)).reshape(n * offset_groups, c // offset_groups, h + 2, w + 2)
    sampled = F.grid_sample(
        padded,
        grid.reshape(n * offset_groups, taps * ho, wo, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    ).reshape(n, offset_groups, c // offset_groups, taps, ho, wo)
    if mask is not None:
        sampled = sampled * mask.reshape(n, offset_groups, 1, taps, ho, wo)
    columns = sampled.reshape(n, groups, cg * taps, ho * wo)
    out = torch.einsum("gok,ngkp->ngop", weight.reshape(groups, o // groups, cg * taps), columns)
    out = out.reshape(n, o, ho, wo)
    return out if bias is None else out + bias.view(1, o, 1, 1)


def _roi_bilinear(plane: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """RoIAlign bilinear sampling of plane [C, H, W] at points y, x (same shape S) -> [C, *S]."""
    h, w = plane.shape[-2:]
    outside = (y < -1) | (y > h) | (x < -1) | (x > w)
    y = y.clamp(min=0)
    x = x.clamp(min=0)
    y0 = y.floor().long().clamp(max=h - 1)
    x0 = x.floor().long().clamp(max=w - 1)
    y = torch.where(y0 >= h - 1, y0.to(y.dtype), y)
    x = torch.where(x0 >= w - 1, x0.to(x.dtype), x)
    y1 = (y0 + 1).clamp(max=h - 1)
    x1 = (x0 + 1).clamp(max=w - 1)
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    value = (
        plane[:, y0, x0] * (hy * hx)
        + plane[:, y0, x1] * (hy * lx)
        + plane[:, y1, x0] * (ly * hx)
        + plane[:, y1, x1] * (ly * lx)
    )
    return torch.where(outside, torch.zeros_like(value), value)


def deform_roi_pool(
    input: Tensor,
    rois: Tensor,
    offset: Tensor | None,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    gamma: float,
) -> Tensor:
    """Deformable RoI pooling (aligned RoIAlign when ``offset`` is None), one RoI at a time."""
    ph, pw = output_size
    outputs = []
    for r, roi in enumerate(rois):
        batch, x1, y1, x2, y2 = roi.tolist()
        start_x, start_y = x1 * spatial_scale - 0.5, y1 * spatial_scale - 0.5
        roi_w, roi_h = (x2 - x1) * spatial_scale, (y2 - y1) * spatial_scale
        bin_h, bin_w = roi_h / ph, roi_w / pw
        grid_h = sampling_ratio if sampling_ratio > 0 else max(int(-(-roi_h // ph)), 1)
        grid_w = sampling_ratio if sampling_ratio > 0 else max(int(-(-roi_w // pw)), 1)
        plane = input[int(batch)]
        iy = torch.arange(grid_h, dtype=input.dtype, device=input.device)
        ix = torch.arange(grid_w, dtype=input.dtype, device=input.device)
        by = torch.arange(ph, dtype=input.dtype, device=input.device)
        bx = torch.arange(pw, dtype=input.dtype, device=input.device)
        y = start_y + by[:, None, None, None] * bin_h + (iy[None, None, :, None] + 0.5) * bin_h / grid_h
        x = start_x + bx[None, :, None, None] * bin_w + (ix[None, None, None, :] + 0.5) * bin_w / grid_w
        if offset is not None:
            y = y + gamma * roi_h * offset[r, 0][:, :, None, None]
            x = x + gamma * roi_w * offset[r, 1][:, :, None, None]
        y, x = torch.broadcast_tensors(y, x)
        outputs.append(_roi_bilinear(plane, y, x).sum((-1, -2)) / (grid_h * grid_w))
    if not outputs:
        return input.new_zeros((0, input.shape[1], ph, pw))
    return torch.stack(outputs)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS over [N, 2 * D] boxes (min corner, then max corner), highest score first."""
    order = torch.sort(scores, descending=True, stable=True).indices
    d = boxes.shape[1] // 2
    lo, hi = boxes[:, :d], boxes[:, d:]
    volume = (hi - lo).prod(dim=1)
    kept: list[int] = []
    removed = torch.zeros(len(boxes), dtype=torch.bool)
    for i in order.tolist():
        if removed[i]:
            continue
        kept.append(i)
        inter = (torch.minimum(hi[i], hi) - torch.maximum(lo[i], lo)).clamp(min=0).prod(dim=1)
        iou = inter / (volume[i] + volume - inter)
        removed |= (iou > iou_threshold).cpu()
    return torch.tensor(kept, dtype=torch.long, device=boxes.device)
