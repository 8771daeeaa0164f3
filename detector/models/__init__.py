"""The detector network and its training loss: DCNv2 ResNet-style backbone, FPN, shared RetinaNet head, focal loss."""

from detector.models.anchors import box_iou, decode, encode, level_anchors
from detector.models.architecture import DetectorConfig
from detector.models.loss import AnchorTargets, assign, detection_loss, sigmoid_focal_loss
from detector.models.retinanet import RetinaNet

__all__ = [
    "AnchorTargets",
    "DetectorConfig",
    "RetinaNet",
    "assign",
    "box_iou",
    "decode",
    "detection_loss",
    "encode",
    "level_anchors",
    "sigmoid_focal_loss",
]
