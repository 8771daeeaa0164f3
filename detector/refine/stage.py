"""Apply the second stage: candidates in, the same findings with the second stage's scores out, best first."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from detector.findings import Finding
from detector.io import Volume
from detector.refine.network import PatchNet
from detector.refine.patches import PatchSpec, candidate_features, extract_patches

BATCH = 32
"""Candidates per forward pass (bounds memory)."""


@dataclass(frozen=True, eq=False)
class Refiner:
    """A trained second stage: its patch geometry, its network (eval mode), the first-stage score that makes a
    candidate (``candidate_threshold``) and how many of the best candidates it reads per study."""

    spec: PatchSpec
    network: PatchNet
    candidate_threshold: float
    max_candidates: int

    def scores(self, volume: Volume, candidates: Sequence[Finding], device: torch.device | None = None) -> list[float]:
        """The second stage's probability for each candidate."""
        device = device or torch.device("cpu")
        network = self.network.to(device).eval()
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(candidates), BATCH):
                part = candidates[start:start + BATCH]
                patches = extract_patches(volume, part, self.spec).to(device)
                logits = network(patches, candidate_features(part).to(device))
                out += torch.sigmoid(logits.float()).cpu().tolist()
        return out


def refined(refiner: Refiner, volume: Volume, candidates: Sequence[Finding],
            device: torch.device | None = None) -> list[Finding]:
    """The ``max_candidates`` best candidates (by first-stage score) re-scored by the second stage, best first;
    the per-slice box scores keep the first stage's values."""
    kept = sorted(candidates, key=lambda f: -f.score)[:refiner.max_candidates]
    scored = [dataclasses.replace(f, score=s) for f, s in zip(kept, refiner.scores(volume, kept, device), strict=True)]
    return sorted(scored, key=lambda f: -f.score)
