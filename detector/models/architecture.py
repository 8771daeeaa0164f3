"""Detector architecture as data: every part the ablation switches (DCN, FPN, focal loss) is a field here."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

LossKind = Literal["focal", "bce"]


@dataclass(frozen=True)
class DetectorConfig:
    """A RetinaNet-style detector: ResNet-style stages, optional FPN, one head shared across levels.

    Stage ``i`` runs at stride ``2 ** (i + 2)`` (the stem halves, every stage halves again).
    ``anchor_sizes[i]`` are the square anchor sides (model pixels) predicted at stage ``i``'s
    level; with ``fpn`` off, only the last stage is used and it carries every anchor size.
    """

    in_channels: int
    num_classes: int
    stem_channels: int = 16
    stage_channels: tuple[int, ...] = (24, 32, 64, 96)
    stage_blocks: tuple[int, ...] = (1, 1, 2, 1)
    dcn_stages: tuple[int, ...] = (2, 3)
    fpn: bool = True
    fpn_channels: int = 48
    head_convs: int = 2
    anchor_sizes: tuple[tuple[float, ...], ...] = ((4.0, 6.0), (8.0, 12.0), (16.0, 24.0), (32.0, 48.0))
    loss: LossKind = "focal"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    prior_probability: float = 0.01

    def __post_init__(self) -> None:
        stages = len(self.stage_channels)
        if len(self.stage_blocks) != stages or len(self.anchor_sizes) != stages:
            raise ValueError(
                f"stage_channels, stage_blocks and anchor_sizes need one entry per stage, got "
                f"{stages}, {len(self.stage_blocks)} and {len(self.anchor_sizes)}"
            )
        if any(not 0 <= s < stages for s in self.dcn_stages):
            raise ValueError(f"dcn_stages {self.dcn_stages} must index the {stages} stages")
        if len({len(a) for a in self.anchor_sizes}) != 1:
            raise ValueError(f"every level needs the same number of anchors, got {self.anchor_sizes}")
        if self.loss not in ("focal", "bce"):
            raise ValueError(f"loss must be 'focal' or 'bce', got {self.loss!r}")
        if not 0.0 < self.prior_probability < 1.0:
            raise ValueError(f"prior_probability must be in (0, 1), got {self.prior_probability}")

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of every level the head predicts from."""
        all_strides = tuple(2 ** (i + 2) for i in range(len(self.stage_channels)))
        return all_strides if self.fpn else all_strides[-1:]

    @property
    def level_anchor_sizes(self) -> tuple[tuple[float, ...], ...]:
        """Anchor sides per predicted level."""
        if self.fpn:
            return self.anchor_sizes
        return (tuple(s for level in self.anchor_sizes for s in level),)

    @property
    def anchors_per_location(self) -> int:
        return len(self.level_anchor_sizes[0])

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DetectorConfig:
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown detector config field(s) {unknown}")
        for key in ("stage_channels", "stage_blocks", "dcn_stages"):
            if key in data:
                data[key] = tuple(data[key])
        if "anchor_sizes" in data:
            data["anchor_sizes"] = tuple(tuple(float(s) for s in level) for level in data["anchor_sizes"])
        return cls(**data)
