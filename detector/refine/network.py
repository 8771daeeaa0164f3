"""The second stage's network: a small 3D CNN over the candidate's patch, joined with the first stage's features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FEATURES = 5
"""Width of :func:`detector.refine.patches.candidate_features`."""


@dataclass(frozen=True)
class PatchNetConfig:
    in_channels: int = 2
    widths: tuple[int, ...] = (8, 16, 32, 64)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
    )


class PatchNet(nn.Module):
    """Patch (N, C, V, V, V) and first-stage features (N, 5) -> one logit per candidate (lesion or not)."""

    def __init__(self, config: PatchNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or PatchNetConfig()
        layers: list[nn.Module] = []
        cin = self.config.in_channels
        for k, width in enumerate(self.config.widths):
            layers.append(_block(cin, width))
            if k < len(self.config.widths) - 1:
                layers.append(nn.MaxPool3d(2))
            cin = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(cin * 2 + FEATURES, 64), nn.ReLU(inplace=True), nn.Linear(64, 1))

    def forward(self, patches: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        x = self.body(patches)
        pooled = torch.cat([x.mean(dim=(2, 3, 4)), x.amax(dim=(2, 3, 4))], dim=1)
        return self.head(torch.cat([pooled, features], dim=1)).squeeze(1)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> PatchNet:
        """Rebuild from a flat state dict whose ``config.*`` tensors carry the config (tensors-only archives)."""
        widths = tuple(int(v) for v in state["config.widths"].tolist())
        net = cls(PatchNetConfig(in_channels=int(state["config.in_channels"]), widths=widths))
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("config.")})
        return net

    def flat_state(self) -> dict[str, torch.Tensor]:
        """A tensors-only state dict (what :func:`detector.registry.load_state_dict` reads) with the config."""
        return {**self.state_dict(), "config.in_channels": torch.tensor(self.config.in_channels),
                "config.widths": torch.tensor(self.config.widths)}


__all__ = ["FEATURES", "PatchNet", "PatchNetConfig"]
