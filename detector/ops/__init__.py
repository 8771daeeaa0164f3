"""Python face of ctnode's C++/CUDA operators (torch.ops.ctnode.*): deformable conv, deformable RoI pooling, NMS."""

from detector.ops.deform_conv2d import DeformConv2d, ModulatedDeformConv2dPack, deform_conv2d
from detector.ops.deform_roi_pool import DeformRoIPoolPack, deform_roi_pool, roi_align
from detector.ops.nms import nms, nms3d

__all__ = [
    "DeformConv2d",
    "DeformRoIPoolPack",
    "ModulatedDeformConv2dPack",
    "deform_conv2d",
    "deform_roi_pool",
    "nms",
    "nms3d",
    "roi_align",
]
