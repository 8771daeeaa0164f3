"""Python face of ctnode's C++/CUDA operators (torch.ops.ctnode.*): deformable convolution and NMS."""

from detector.ops.deform_conv2d import DeformConv2d, ModulatedDeformConv2dPack, deform_conv2d
from detector.ops.nms import nms

__all__ = [
    "DeformConv2d",
    "ModulatedDeformConv2dPack",
    "deform_conv2d",
    "nms",
]
