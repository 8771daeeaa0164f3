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


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS over [N, 4] boxes (x1, y1, x2, y2), highest score first."""
    order = torch.sort(scores, descending=True, stable=True).indices
    lo, hi = boxes[:, :2], boxes[:, 2:]
    area = (hi - lo).prod(dim=1)
    kept: list[int] = []
    removed = torch.zeros(len(boxes), dtype=torch.bool)
    for i in order.tolist():
        if removed[i]:
            continue
        kept.append(i)
        inter = (torch.minimum(hi[i], hi) - torch.maximum(lo[i], lo)).clamp(min=0).prod(dim=1)
        iou = inter / (area[i] + area - inter)
        removed |= (iou > iou_threshold).cpu()
    return torch.tensor(kept, dtype=torch.long, device=boxes.device)
