"""The training loop: random crops with flips from a sample pool, AdamW with cosine decay, loss history."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from detector.models import RetinaNet, detection_loss
from detector.train.matching import training_targets
from detector.train.samples import Sample, crop


@dataclass(frozen=True)
class TrainSettings:
    """How long and how to train: a wall-clock budget bounds the run as well as ``iterations``."""

    iterations: int = 3000
    budget_s: float = 540.0
    batch: int = 8
    crop_px: int = 192
    lesion_fraction: float = 0.75
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    report_every: int = 250
    """Iterations between the loss lines ``train`` prints (mean of the last ``report_every``); 0: none."""


@dataclass
class TrainLog:
    """Per-iteration (classification, box) losses and how many iterations ran."""

    cls: list[float] = field(default_factory=list)
    box: list[float] = field(default_factory=list)

    def mean(self, which: str, start: int, stop: int | None) -> float:
        values = getattr(self, which)[start:stop]
        return float(np.mean(values)) if values else float("nan")


def _flip(sample: Sample, rng: np.random.Generator) -> Sample:
    if rng.random() >= 0.5:
        return sample
    size_x = sample.image.shape[-1]

    def flipped(boxes: torch.Tensor) -> torch.Tensor:
        out = boxes.clone()
        out[:, [0, 2]] = size_x - 1 - boxes[:, [2, 0]]
        return out

    return Sample(image=sample.image.flip(-1), boxes=flipped(sample.boxes), labels=sample.labels,
                  ignore=flipped(sample.ignore))


def train(model: RetinaNet, pool: list[Sample], settings: TrainSettings) -> TrainLog:
    """Train ``model`` in place on crops of ``pool``; stops at ``iterations`` or ``budget_s``, whichever first."""
    rng = np.random.default_rng(settings.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    log = TrainLog()
    model.train()
    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("training", total=settings.iterations, loss=float("nan"))
        for step in range(settings.iterations):
            elapsed = time.monotonic() - started
            if elapsed > settings.budget_s:
                break
            fraction = max(step / settings.iterations, elapsed / settings.budget_s)
            warmup = min(1.0, (step + 1) / 100)
            for group in optimiser.param_groups:
                group["lr"] = settings.lr * warmup * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))
            picks = rng.integers(len(pool), size=settings.batch)
            batch = [
                _flip(crop(pool[int(i)], settings.crop_px, rng, rng.random() < settings.lesion_fraction), rng)
                for i in picks
            ]
            images = torch.stack([s.image.float() for s in batch])
            anchors = model.anchors(*images.shape[-2:])
            targets = [training_targets(anchors, s.boxes, s.labels, s.ignore) for s in batch]
            logits, deltas = model(images)
            cls_loss, box_loss = detection_loss(model.config, logits, deltas, targets)
            optimiser.zero_grad(set_to_none=True)
            (cls_loss + box_loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
            log.cls.append(float(cls_loss.detach()))
            log.box.append(float(box_loss.detach()))
            progress.update(task, advance=1, loss=log.cls[-1] + log.box[-1])
            done = step + 1
            if settings.report_every and done % settings.report_every == 0:
                start = done - settings.report_every
                progress.console.print(
                    f"iteration {done}: {time.monotonic() - started:.0f} s, lr {optimiser.param_groups[0]['lr']:.2e}, "
                    f"loss cls {log.mean('cls', start, done):.4f} box {log.mean('box', start, done):.4f}"
                )
    model.eval()
    return log
