"""Synthetic study sets: many labelled studies over one real background, planned from a seed, written once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from detector.data import Manifest, StudyEntry, SyntheticSet
from detector.synth.placement import Target
from detector.synth.studies import (
    JSON_NAME,
    LABELS,
    Background,
    read_background,
    write_synthetic_study,
)


def study_plan(studies: int, lesions: int, negatives: int, seed: int) -> list[tuple[int, int]]:
    """(seed, lesion count) per study: positives with 1..``lesions`` lesions drawn from their seed, then negatives."""
    positives = [(seed + n, int(np.random.default_rng([seed + n, lesions]).integers(1, lesions + 1)))
                 for n in range(studies)]
    return positives + [(seed + studies + n, 0) for n in range(negatives)]


def write_set(background: Path, out: Path, target: Target, studies: int, lesions: int, negatives: int, seed: int,
              each: Callable[[Path], None] | None = None) -> list[Path]:
    """The planned studies as ``out/<background folder name>-<seed>``; a folder already written (the writer is
    deterministic) is kept. ``each`` is called with every study folder as it is done. Returns the folders."""
    source: Background | None = None
    name = background.resolve().name
    folders = []
    for study_seed, count in study_plan(studies, lesions, negatives, seed):
        folder = out / f"{name}-{study_seed}"
        if not (folder / LABELS / JSON_NAME).exists():
            source = source or read_background(background)
            write_synthetic_study(source, folder, target, count, study_seed)
        folders.append(folder)
        if each is not None:
            each(folder)
    return folders


def synthetic_entries(manifest: Manifest, roles: Sequence[str], cache: Path) -> list[StudyEntry]:
    """The manifest's synthetic studies whose background has one of ``roles``, written under ``cache/<manifest>``
    when not there yet; each one an entry of its background's patient and role."""
    entries = []
    for spec in manifest.synthetic:
        background = manifest.by_id(spec.background)
        if background.role not in roles:
            continue
        folders = write_set(background.path, cache / manifest.name, spec.target, spec.studies, spec.lesions,
                            spec.negatives, spec.seed)
        entries += [StudyEntry(id=f"{background.id}+{folder.name.rsplit('-', 1)[1]}", path=folder,
                               patient=background.patient, role=background.role, body_part=background.body_part)
                    for folder in folders]
    return entries


__all__ = ["SyntheticSet", "study_plan", "synthetic_entries", "write_set"]
