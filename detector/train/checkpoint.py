"""Training checkpoints: network, optimiser, every RNG, step, elapsed time and loss log, written atomically."""

from __future__ import annotations

import os
import pickle
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed; the message is one line naming the file."""


@dataclass
class TrainLog:
    """Per-iteration (classification, box) losses and wall seconds, and the step each session started at."""

    cls: list[float] = field(default_factory=list)
    box: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)
    """The step every run of the loop started from: [0] for one run, [0, k] after a resume at step k."""

    def mean(self, which: str, start: int | None, stop: int | None) -> float:
        values = getattr(self, which)[start:stop]
        return float(np.mean(values)) if values else float("nan")


@dataclass
class Checkpoint:
    """Everything the loop needs to continue exactly where it stopped."""

    step: int
    elapsed_s: float
    model: dict[str, torch.Tensor]
    optimiser: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, Any]
    log: TrainLog
    key: dict[str, Any]
    """What the run depends on (schedule, architecture, data); a checkpoint is resumed only under the same key."""


def rng_states(generator: np.random.Generator) -> dict[str, Any]:
    """The states of the loop's numpy ``generator``, torch's RNGs (CPU and CUDA) and Python's."""
    return {
        "generator": generator.bit_generator.state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any], generator: np.random.Generator) -> None:
    """Put back what :func:`rng_states` saved (CUDA states only where there is a device to take them)."""
    generator.bit_generator.state = states["generator"]
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(states["python"])


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write to a temporary file, fsync it, rename it over ``path`` and fsync the folder: a kill at any moment
    leaves either the previous checkpoint or this one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as out:
        torch.save({**asdict(checkpoint), "log": asdict(checkpoint.log)}, out)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint :func:`save_checkpoint` wrote."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return Checkpoint(**{**data, "log": TrainLog(**data["log"])})
    except (OSError, EOFError, RuntimeError, TypeError, KeyError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"checkpoint {path}: unreadable ({type(exc).__name__}: {first})") from exc
