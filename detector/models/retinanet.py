"""The detector network: backbone -> FPN (or single level) -> shared RetinaNet head, with its anchors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.models.anchors import anchors_for
from detector.models.architecture import DetectorConfig
from detector.models.backbone import Backbone
from detector.models.fpn import FeaturePyramid, SingleLevel
from detector.models.head import RetinaHead

CONFIG_KEY = "architecture"
"""State-dict key of the config, stored as the UTF-8 bytes of its JSON in a uint8 tensor."""


class RetinaNet(nn.Module):
    """Images [B, C, H, W] (H, W multiples of the coarsest stride) -> logits [B, N, K], deltas [B, N, 4]."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        if config.fpn:
            self.neck: nn.Module = FeaturePyramid(config.stage_channels, config.fpn_channels)
        else:
            self.neck = SingleLevel(config.stage_channels[-1], config.fpn_channels)
        self.head = RetinaHead(
            config.fpn_channels,
            config.head_convs,
            config.anchors_per_location,
            config.num_classes,
            config.prior_probability,
        )
        self._anchor_cache: dict[tuple[int, int], Tensor] = {}

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        levels = self.neck(self.backbone(images))
        cls, box = self.head(levels)
        batch = images.shape[0]
        k = self.config.num_classes
        logits = torch.cat([c.permute(0, 2, 3, 1).reshape(batch, -1, k) for c in cls], dim=1)
        deltas = torch.cat([b.permute(0, 2, 3, 1).reshape(batch, -1, 4) for b in box], dim=1)
        return logits, deltas

    def anchors(self, height: int, width: int) -> Tensor:
        """[N, 4] anchors for an input of ``height`` x ``width``, matching the rows of ``forward``'s outputs."""
        if (height, width) not in self._anchor_cache:
            shapes = [(-(-height // s), -(-width // s)) for s in self.config.strides]
            sizes = self.config.level_anchor_sizes
            self._anchor_cache[(height, width)] = anchors_for(shapes, self.config.strides, sizes)
        return self._anchor_cache[(height, width)]

    def export_state(self) -> dict[str, Tensor]:
        """The state dict plus the config (as a uint8 tensor), so the weights file describes its network."""
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        state[CONFIG_KEY] = torch.tensor(list(self.config.to_json().encode()), dtype=torch.uint8)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> RetinaNet:
        """Rebuild the network a state from :meth:`export_state` describes, with its weights (strictly)."""
        if CONFIG_KEY not in state:
            raise ValueError(f"weights carry no {CONFIG_KEY!r} entry; cannot tell which network they belong to")
        weights = dict(state)
        config = DetectorConfig.from_json(bytes(weights.pop(CONFIG_KEY).tolist()).decode())
        model = cls(config)
        model.load_state_dict(weights, strict=True)
        return model
