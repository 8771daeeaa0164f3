"""The training pool: background studies read once, and synthetic-lesion samples rendered from them."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from rich.console import Console
from rich.progress import track

from detector.data import StudyEntry
from detector.io import Volume, read_ct_volume
from detector.train.annotations import Box, known_findings
from detector.train.samples import Sample, render_sample
from detector.train.targets import TargetSpec

_M_MMAP_THRESHOLD = -3
console = Console(stderr=True)


@dataclass(frozen=True, eq=False)
class Background:
    """A study's CT volume (the io stage's own series selection) and the real findings its annotations mark."""

    study: StudyEntry
    volume: Volume
    known: dict[int, list[Box]]


def read_backgrounds(studies: Sequence[StudyEntry]) -> list[Background]:
    """Read every study's volume and its annotated findings (ignore regions in training)."""
    out = []
    for study in studies:
        volume = read_ct_volume(study.path)[0]
        out.append(Background(study, volume, known_findings(study.path, volume)))
    return out


def sample_pool(spec: TargetSpec, backgrounds: Sequence[Background], count: int, negatives: float,
                seed: int) -> list[Sample]:
    """``count`` samples (half-precision images), a fraction ``negatives`` without lesions, each on a random
    background; the same arguments always give the same pool."""
    fixed_mmap_threshold()
    rng = np.random.default_rng(seed)
    out = []
    for _ in track(range(count), description=f"{spec.target} samples (seed {seed})", console=console):
        background = backgrounds[int(rng.integers(len(backgrounds)))]
        lesions = 0 if rng.random() < negatives else int(rng.integers(1, 3))
        sample = render_sample(spec.target, background.volume, spec.input_spec, rng, lesions, background.known)
        out.append(replace(sample, image=sample.image.half()))
    return out


def fixed_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at 128 KiB: its dynamic growth put every pooled image on the heap between
    the float32 temporaries of rendering, and the fragments held several times the pool's own size."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
