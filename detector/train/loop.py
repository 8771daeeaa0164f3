"""The training loop: augmented pool crops, AdamW with warm-up and cosine decay, AMP on CUDA, checkpoints, resume."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from detector.models import AnchorTargets, RetinaNet, detection_loss
from detector.preprocess import InputSpec
from detector.train.augment import augment
from detector.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    TrainLog,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from detector.train.config import Augmentation
from detector.train.matching import training_targets
from detector.train.samples import Sample, crop

WARMUP = 100
CLIP_NORM = 10.0
console = Console(stderr=True)


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
    augmentation: Augmentation = field(default_factory=Augmentation)
    checkpoint_every_s: float = 120.0
    """Seconds between checkpoints (0: after every iteration); one is always written at the end."""
    report_every: int = 250
    """Iterations between the loss lines ``train`` prints (mean of the last ``report_every``); 0: none."""

    def schedule(self) -> dict[str, Any]:
        """What a resumed run must share with the checkpoint it continues (not when checkpoints or reports come)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("checkpoint_every_s", "report_every")}
        return {**out, "augmentation": self.augmentation.model_dump(mode="json")}


def _learning_rate(settings: TrainSettings, step: int, elapsed_s: float) -> float:
    """Linear warm-up, then cosine decay over the iterations or the budget, whichever is further along."""
    fraction = min(max(step / settings.iterations, elapsed_s / settings.budget_s), 1.0)
    return settings.lr * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * fraction))


def _batch(model: RetinaNet, pool: list[Sample], spec: InputSpec, settings: TrainSettings,
           rng: np.random.Generator) -> tuple[torch.Tensor, list[AnchorTargets]]:
    picks = rng.integers(len(pool), size=settings.batch)
    batch = []
    for i in picks:
        part = crop(pool[int(i)], settings.crop_px, rng, rng.random() < settings.lesion_fraction)
        batch.append(augment(replace(part, image=part.image.float()), settings.augmentation, spec, rng))
    images = torch.stack([s.image for s in batch])
    anchors = model.anchors(*images.shape[-2:])
    return images, [training_targets(anchors, s.boxes, s.labels, s.ignore) for s in batch]


def _resume(path: Path, key: dict[str, Any], model: RetinaNet, optimiser: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, rng: np.random.Generator) -> tuple[int, float, TrainLog]:
    saved = load_checkpoint(path)
    if saved.key != key:
        differ = sorted(k for k in key.keys() | saved.key.keys() if key.get(k) != saved.key.get(k))
        raise CheckpointError(f"checkpoint {path} belongs to another run ({', '.join(differ)} differ): "
                              "resume with the same config, or start over with --no-resume")
    model.load_state_dict(saved.model, strict=True)
    optimiser.load_state_dict(saved.optimiser)
    if scaler.is_enabled() and saved.scaler:
        scaler.load_state_dict(saved.scaler)
    restore_rng_states(saved.rng, rng)
    return saved.step, saved.elapsed_s, saved.log


def train(model: RetinaNet, pool: list[Sample], spec: InputSpec, settings: TrainSettings,
          checkpoint: Path | None = None, resume: bool = False, key: dict[str, Any] | None = None) -> TrainLog:
    """Train ``model`` in place on augmented crops of ``pool`` until ``iterations`` or ``budget_s``.

    On CUDA (when available) it runs under AMP with pinned host batches, else on the CPU's threads as set.
    ``checkpoint``: the file written every ``checkpoint_every_s`` and at the end; with ``resume`` and an
    existing file, training continues from its step, elapsed time, optimiser and RNG states, provided it was
    written under the same schedule, architecture, pool size and ``key`` (what else the run depends on).
    The model comes back on the CPU in eval mode.
    """
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model.to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    rng = np.random.default_rng(settings.seed)
    run_key = json.loads(json.dumps({"schedule": settings.schedule(), "architecture": model.config.to_json(),
                                     "pool": len(pool), **(key or {})}))
    step, elapsed, log = 0, 0.0, TrainLog()
    if resume and checkpoint is not None and checkpoint.exists():
        step, elapsed, log = _resume(checkpoint, run_key, model, optimiser, scaler, rng)
        console.print(f"resuming at iteration {step} ({elapsed:.0f} s trained) from {checkpoint}")
    log.sessions.append(step)

    def save() -> None:
        if checkpoint is not None:
            save_checkpoint(Checkpoint(step=step, elapsed_s=time.monotonic() - started, model=model.state_dict(),
                                       optimiser=optimiser.state_dict(), scaler=scaler.state_dict(),
                                       rng=rng_states(rng), log=log, key=run_key), checkpoint)

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[rate]:.2f} it/s"),
               TimeRemainingColumn())
    started = time.monotonic() - elapsed
    saved_at = time.monotonic()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training", total=settings.iterations, completed=step, loss=float("nan"),
                                 rate=float("nan"))
        while step < settings.iterations and time.monotonic() - started <= settings.budget_s:
            tick = time.monotonic()
            for group in optimiser.param_groups:
                group["lr"] = _learning_rate(settings, step, tick - started)
            images, targets = _batch(model, pool, spec, settings, rng)
            if cuda:
                images = images.pin_memory().to(device, non_blocking=True)
                targets = [AnchorTargets(t.labels.to(device), t.deltas.to(device)) for t in targets]
            with torch.autocast(device.type, enabled=cuda):
                logits, deltas = model(images)
            cls_loss, box_loss = detection_loss(model.config, logits.float(), deltas.float(), targets)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(cls_loss + box_loss).backward()
            scaler.unscale_(optimiser)
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
            scaler.step(optimiser)
            scaler.update()
            step += 1
            log.cls.append(float(cls_loss.detach()))
            log.box.append(float(box_loss.detach()))
            log.seconds.append(time.monotonic() - tick)
            progress.update(task, completed=step, loss=log.cls[-1] + log.box[-1],
                            rate=1.0 / max(float(np.mean(log.seconds[-20:])), 1e-9))
            if settings.report_every and step % settings.report_every == 0:
                start = step - settings.report_every
                progress.console.print(
                    f"iteration {step}: {time.monotonic() - started:.0f} s, lr {optimiser.param_groups[0]['lr']:.2e}, "
                    f"loss cls {log.mean('cls', start, step):.4f} box {log.mean('box', start, step):.4f}, "
                    f"{1000 * log.mean('seconds', start, step):.0f} ms/iteration"
                )
            if time.monotonic() - saved_at >= settings.checkpoint_every_s:
                save()
                saved_at = time.monotonic()
        save()
    console.print(f"{step} iterations ({step - log.sessions[-1]} in this run, from {log.sessions[-1]}), "
                  f"{time.monotonic() - started:.0f} s trained, "
                  f"median {1000 * float(np.median(log.seconds or [0.0])):.0f} ms/iteration")
    model.cpu().eval()
    return log
