"""Python face of ctnode's C++/CUDA operators (torch.ops.ctnode.*): deformable conv, deformable RoI pooling, NMS."""

from detector.ops.deform_conv2d import DeformConv2d, ModulatedDeformConv2dPack, deform_conv2d

__all__ = ["DeformConv2d", "ModulatedDeformConv2dPack", "deform_conv2d"]
