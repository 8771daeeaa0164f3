"""Training the second stage: candidates mined by the first stage on labelled studies, a PatchNet fitted to them.

Each candidate of a study (the first stage's findings down to the candidate threshold, the best
``max_candidates``) becomes a patch labelled lesion (it hits a target), not (a false positive), or is left out (it
lies in an ignore region). Jittered patches at every target's centre add positives the first stage missed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from detector.evaluate.froc import classify
from detector.evaluate.labelled import LabelledStudy
from detector.findings import Finding
from detector.infer import LoadedModel, findings_at, slice_detections
from detector.infer.inference import CANDIDATE_FRACTION
from detector.io import HeaderScan, load_volume, select_series
from detector.labels import read_labels
from detector.labels.lesions import planes_from_headers
from detector.refine import PatchNet, PatchSpec, candidate_features, extract_patches

console = Console(stderr=True)
JITTERED = 4
"""Positives added per target lesion, around its centre."""


@dataclass(frozen=True)
class Samples:
    """Patches (half precision), first-stage features and labels (1 lesion, 0 not)."""

    patches: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor

    @staticmethod
    def joined(parts: Sequence[Samples]) -> Samples:
        return Samples(torch.cat([p.patches for p in parts]), torch.cat([p.features for p in parts]),
                       torch.cat([p.labels for p in parts]))


@dataclass(frozen=True)
class StageSettings:
    """The second stage's schedule: iterations of ``batch`` patches (a third of them lesions), AdamW one-cycle."""

    iterations: int = 500
    batch: int = 48
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def _jittered(lesion_centre: Sequence[float], diameter: float, like: Finding, rng: np.random.Generator) -> Finding:
    centre = np.asarray(lesion_centre) + rng.normal(0.0, max(1.0, diameter / 8), 3)
    size = diameter * rng.uniform(0.8, 1.3)
    return Finding(label=like.label, finding_type=like.finding_type, score=float(rng.uniform(0.2, 0.9)),
                   centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])), size_mm=(size, size, size),
                   voxel_box=like.voxel_box, slices=like.slices[:1] * max(1, round(size / 2.5)))


def mine_study(study: LabelledStudy, model: LoadedModel, spec: PatchSpec, candidate_threshold: float,
               max_candidates: int, seed: int) -> tuple[Samples, int, int]:
    """(the study's labelled patches, its target lesions, how many of them a candidate hits)."""
    lesions = read_labels(study.labels, planes_from_headers(study.headers))
    volume = load_volume(select_series(HeaderScan(headers=study.headers, ignored=())).chosen)
    detections = slice_detections(volume, model, floor=candidate_threshold * CANDIDATE_FRACTION)
    candidates = findings_at(detections, volume, model, candidate_threshold)[:max_candidates]
    targets = [lesion for lesion in lesions if not lesion.ignore]
    ignores = [lesion for lesion in lesions if lesion.ignore]
    outcomes = [classify(f.centre_mm, targets, ignores) for f in candidates]
    kept = [f for f, o in zip(candidates, outcomes, strict=True) if not o.ignored]
    labels = [1.0 if o.hits else 0.0 for o in outcomes if not o.ignored]
    hit = {i for o in outcomes for i in o.hits}
    rng = np.random.default_rng([seed, len(study.headers)])
    if candidates:
        kept += [_jittered(t.centre_mm, t.diameter_mm, candidates[0], rng) for t in targets for _ in range(JITTERED)]
        labels += [1.0] * (len(targets) * JITTERED)
    samples = Samples(extract_patches(volume, kept, spec).half(), candidate_features(kept),
                      torch.tensor(labels, dtype=torch.float32))
    return samples, len(targets), len(hit)


def mine(studies: Sequence[LabelledStudy], model: LoadedModel, spec: PatchSpec, candidate_threshold: float,
         max_candidates: int, seed: int) -> Samples:
    """Labelled patches of every study, with a progress bar and the candidates' recall of the target lesions."""
    parts: list[Samples] = []
    targets = hits = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("mining candidates", total=len(studies))
        for study in studies:
            bar.update(task, description=f"mining {study.id}")
            samples, n_targets, n_hits = mine_study(study, model, spec, candidate_threshold, max_candidates, seed)
            parts.append(samples)
            targets, hits = targets + n_targets, hits + n_hits
            bar.advance(task)
    joined = Samples.joined(parts)
    positives = int(joined.labels.sum())
    console.print(f"mined {len(joined.labels)} patches from {len(studies)} studies ({positives} lesion, "
                  f"{len(joined.labels) - positives} not); candidates hit {hits} of {targets} target lesions")
    return joined


def _augmented(patches: torch.Tensor, features: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips on each axis, a quarter turn in-plane, patch noise, and noise on the first stage's score."""
    x = patches.float()
    for axis in (2, 3, 4):
        flip = torch.rand(len(x), generator=g) < 0.5
        x[flip] = x[flip].flip(axis)
    x = torch.rot90(x, int(torch.randint(4, (1,), generator=g)), (3, 4))
    x = x + 0.02 * torch.randn(x.shape, generator=g)
    f = features.clone()
    f[:, 0] += 0.3 * torch.randn(len(f), generator=g)
    return x, f


def fit(samples: Samples, network: PatchNet, settings: StageSettings) -> list[float]:
    """Train ``network`` in place on ``samples``; returns the loss of every iteration."""
    positives = torch.where(samples.labels == 1)[0]
    negatives = torch.where(samples.labels == 0)[0]
    if not len(positives) or not len(negatives):
        raise ValueError(f"the second stage needs lesion and non-lesion patches, got {len(positives)} and "
                         f"{len(negatives)}")
    g = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    optimiser = torch.optim.AdamW(network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=settings.lr, total_steps=settings.iterations)
    losses: list[float] = []
    lesion_share = settings.batch // 3
    started = time.monotonic()
    network.train()
    with Progress(TextColumn("second stage"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[loss]}"), console=console, transient=True) as bar:
        task = bar.add_task("", total=settings.iterations, loss="")
        for _ in range(settings.iterations):
            index = torch.cat([positives[torch.randint(len(positives), (lesion_share,), generator=g)],
                               negatives[torch.randint(len(negatives), (settings.batch - lesion_share,), generator=g)]])
            x, f = _augmented(samples.patches[index], samples.features[index], g)
            loss = F.binary_cross_entropy_with_logits(network(x, f), samples.labels[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            bar.update(task, advance=1, loss=f"loss {np.mean(losses[-50:]):.4f}")
    network.eval()
    console.print(f"second stage: {settings.iterations} iterations in {time.monotonic() - started:.0f} s, loss "
                  f"{np.mean(losses[:50]):.4f} -> {np.mean(losses[-50:]):.4f}")
    return losses
