"""From network outputs to findings: box decoding, per-slice NMS, 2D -> 3D merge, the operating threshold."""

from detector.postprocess.decode import Detections, decode_slice
from detector.postprocess.merge import SliceDetection, link_slices, merge_findings, to_finding

__all__ = ["Detections", "SliceDetection", "decode_slice", "link_slices", "merge_findings", "to_finding"]
