"""`python -m detector.train TARGET...`: train a model of each target and ship it as card + weights.

The 0.2.0 models were trained in stages on this 2-core machine (``--threads 1``), each stage's card
listing its iterations: head ``head`` (1440 s) then ``head --init ctnode-head-0.2.0.pt --lr 5e-4
--budget-s 720``; chest ``chest`` (1440 s), then twice ``--init`` with ``--lr 5e-4`` (720 s, then
600 s with ``--pool 1000``). The first stages ran before lesions were kept out of the air around the
patient and before the chest series' own tumour became an ignore region; the last stage of each ran
with this code, and every evaluation figure was measured with it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from detector.infer import load_model
from detector.io import Volume, read_ct_volume
from detector.models import DetectorConfig, RetinaNet
from detector.models.retinanet import CONFIG_KEY
from detector.postprocess.decode import decode_slice
from detector.registry import EvaluationFigure, ModelCard, load_card, save_card, sha256_file
from detector.train.annotations import Box, known_findings
from detector.train.loop import TrainSettings, train
from detector.train.samples import MIN_BOX_PX, Sample, render_sample
from detector.train.targets import TARGETS, TargetSpec

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "detector" / "registry" / "models"
VERSION = "0.2.0"
TRAINING_POOL = "synthetic training pool"
FP_PER_SLICE = 0.1
"""The operating point: the lowest threshold with at most this many false positives per slice on the
calibration seeds (0.02 left the first head model no usable sensitivity)."""
HIT_MIN_PX = 2.0
SIZE_BANDS = ((MIN_BOX_PX, 5.0), (5.0, 10.0), (10.0, float("inf")))
"""Lesion cross-section bands (longer box side, model pixels = mm) the sensitivity is also reported in."""
EVAL_SLICES = 240
_M_MMAP_THRESHOLD = -3
console = Console(stderr=True)


def data_root() -> Path:
    return Path(os.environ.get("CTNODE_TEST_DATA", REPO.parent / "shared" / "ct"))


Background = tuple[Volume, dict[int, list[Box]]]


def _backgrounds(spec: TargetSpec) -> list[Background]:
    """Each background series of ``spec`` with the real findings its annotations mark."""
    out = []
    for folder in spec.backgrounds:
        volume = read_ct_volume(data_root() / folder)[0]
        out.append((volume, known_findings(data_root() / folder, volume)))
    return out


def _pool(spec: TargetSpec, volumes: list[Background], count: int, negatives: float, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in track(range(count), description=f"{spec.target} samples (seed {seed})", console=console):
        volume, known = volumes[int(rng.integers(len(volumes)))]
        lesions = 0 if rng.random() < negatives else int(rng.integers(1, 3))
        sample = render_sample(spec.target, volume, spec.input_spec, rng, lesions, known)
        out.append(replace(sample, image=sample.image.half()))
    return out


@dataclass
class Outcome:
    """Per lesion cross-section: the best score of the detections hitting it (0: none) and its size (model px);
    the scores of the detections hitting no lesion; how many slices were read."""

    lesion_scores: list[float] = field(default_factory=list)
    lesion_sizes: list[float] = field(default_factory=list)
    false_scores: list[list[float]] = field(default_factory=list)
    """Per slice, the scores of its false positives."""

    @property
    def slices(self) -> int:
        return len(self.false_scores)

    def sensitivity(self, threshold: float, band: tuple[float, float] | None = None) -> tuple[float, int]:
        """(fraction of the lesion cross-sections in ``band`` hit at ``threshold``, how many there are)."""
        low, high = band or (0.0, float("inf"))
        hits = [s >= threshold for s, size in zip(self.lesion_scores, self.lesion_sizes, strict=True)
                if low <= size < high]
        return (float(np.mean(hits)) if hits else float("nan")), len(hits)

    def fp_per_slice(self, threshold: float) -> float:
        return sum(sum(s >= threshold for s in scores) for scores in self.false_scores) / max(self.slices, 1)

    def bootstrap(self, threshold: float, rounds: int = 1000, seed: int = 0) -> tuple[tuple[float, float], ...]:
        """95% percentile-bootstrap intervals of (sensitivity, FP/slice), resampling lesions and slices."""
        rng = np.random.default_rng(seed)
        hits = np.array([s >= threshold for s in self.lesion_scores], dtype=np.float64)
        fps = np.array([sum(s >= threshold for s in scores) for scores in self.false_scores], dtype=np.float64)
        out = []
        for values in (hits, fps):
            if values.size == 0:
                out.append((float("nan"), float("nan")))
                continue
            means = values[rng.integers(values.size, size=(rounds, values.size))].mean(axis=1)
            out.append((round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)))
        return tuple(out)


def _near(centres: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    radius = max(float((box[2:] - box[:2]).max()) / 2, HIT_MIN_PX)
    return (centres - (box[:2] + box[2:]) / 2).norm(dim=1) <= radius


def _hits(model: RetinaNet, samples: list[Sample], threshold: float) -> Outcome:
    """Score every lesion cross-section and every false positive of ``samples`` down to ``threshold``.

    A hit is a detection centre within the lesion box's half-side (at least ``HIT_MIN_PX``) of its
    centre, the slice-level form of the evaluation protocol's "within the lesion's radius, min 2 mm".
    Detections on an ignore box (a cross-section under ``MIN_BOX_PX``, or a real finding the background
    series' annotations mark) are neither hits nor false positives.
    """
    outcome = Outcome()
    with torch.no_grad():
        for s in samples:
            logits, deltas = model(s.image.float()[None])
            det = decode_slice(logits[0], deltas[0], model.anchors(*s.image.shape[-2:]), threshold)
            centres = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
            spared = torch.zeros(len(det), dtype=torch.bool)
            for box in s.boxes:
                near = _near(centres, box)
                spared |= near
                outcome.lesion_scores.append(float(det.scores[near].max()) if near.any() else 0.0)
                outcome.lesion_sizes.append(float((box[2:] - box[:2]).max()))
            for box in s.ignore:
                spared |= _near(centres, box)
            outcome.false_scores.append(det.scores[~spared].tolist())
    return outcome


def _operating_threshold(outcome: Outcome) -> float:
    """The lowest threshold leaving at most ``FP_PER_SLICE`` false positives per calibration slice."""
    allowed = int(FP_PER_SLICE * outcome.slices)
    ranked = sorted((s for scores in outcome.false_scores for s in scores), reverse=True)
    threshold = ranked[allowed] + 1e-4 if len(ranked) > allowed else 0.05
    return float(np.clip(threshold, 0.05, 0.95))


def _band_name(band: tuple[float, float]) -> str:
    low, high = band
    return f"{low:g}-{high:g} mm" if high != float("inf") else f">= {low:g} mm"


def _figures(outcome: Outcome, threshold: float, dataset: str) -> tuple[EvaluationFigure, ...]:
    sensitivity, lesions = outcome.sensitivity(threshold)
    sensitivity_ci, fp_ci = outcome.bootstrap(threshold)
    figures = [
        EvaluationFigure(f"slice-level sensitivity at operating threshold ({lesions} lesion cross-sections)",
                         round(sensitivity, 4), dataset, sensitivity_ci),
        EvaluationFigure(f"false positives per slice at operating threshold ({outcome.slices} slices; "
                         f"calibrated to {FP_PER_SLICE:g} FP/slice)",
                         round(outcome.fp_per_slice(threshold), 4), dataset, fp_ci),
    ]
    for band in SIZE_BANDS:
        value, count = outcome.sensitivity(threshold, band)
        if count:
            figures.append(EvaluationFigure(
                f"slice-level sensitivity, cross-section {_band_name(band)} ({count})", round(value, 4), dataset))
    return tuple(figures)


def _state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state.pop(CONFIG_KEY, None)
    return state


def _earlier_stages(init: Path, spec: TargetSpec) -> tuple[EvaluationFigure, ...]:
    """The training figures of the stage ``init`` came from (its card beside it), renamed as an earlier stage."""
    path = init.with_name(f"{spec.name}.json")
    if not path.is_file() or load_card(path).weights_file != init.name:
        return ()
    return tuple(
        replace(e, metric=f"earlier stage: {e.metric}") for e in load_card(path).evaluation if e.dataset == TRAINING_POOL
    )


def run(spec: TargetSpec, settings: TrainSettings, pool_size: int, evaluate_only: bool, models: Path = MODELS,
        init: Path | None = None) -> None:
    """Train (or, with ``evaluate_only``, reload the weights in ``models``), calibrate, measure and ship the model.

    ``init``: weights (an exported state) to start from instead of a fresh network: a second stage.
    """
    torch.manual_seed(settings.seed)
    volumes = _backgrounds(spec)
    if evaluate_only:
        loaded = load_model(models / f"{spec.name}.json")
        model = loaded.network
        training = tuple(e for e in loaded.card.evaluation if e.dataset == TRAINING_POOL)
        version, weights = loaded.card.version, models / loaded.card.weights_file
    else:
        pool = _pool(spec, volumes, pool_size, 0.25, seed=settings.seed)
        model = RetinaNet(DetectorConfig(in_channels=spec.input_spec.channels, num_classes=len(spec.classes)))
        earlier: tuple[EvaluationFigure, ...] = ()
        if init is not None:
            model.load_state_dict(_state(init), strict=True)
            earlier = _earlier_stages(init, spec)
            console.print(f"{spec.name}: starting from {init.name}")
        log = train(model, pool, settings)
        n = len(log.cls)
        console.print(f"{spec.name}: {n} iterations; loss (cls+box) first 100 "
                      f"{log.mean('cls', 0, 100) + log.mean('box', 0, 100):.3f} -> last 100 "
                      f"{log.mean('cls', n - 100, n) + log.mean('box', n - 100, n):.3f}")
        training = (
            *earlier,
            EvaluationFigure("training iterations", float(n), TRAINING_POOL),
            EvaluationFigure(f"training crop side (model pixels), batch {settings.batch}",
                             float(settings.crop_px), TRAINING_POOL),
            EvaluationFigure("final training loss (mean of last 100 iterations)",
                             round(log.mean("cls", -100, None) + log.mean("box", -100, None), 4), TRAINING_POOL),
        )
        version, weights = VERSION, models / f"{spec.name}-{VERSION}.pt"
        models.mkdir(parents=True, exist_ok=True)
        torch.save(model.export_state(), weights)
    calibration = _pool(spec, volumes, EVAL_SLICES, 0.3, seed=settings.seed + 1000)
    test = _pool(spec, volumes, EVAL_SLICES, 0.3, seed=settings.seed + 2000)
    threshold = _operating_threshold(_hits(model, calibration, 0.05))
    outcome = _hits(model, test, threshold)
    dataset = (f"synthetic lesions on held-out seeds, same backgrounds as training ({', '.join(spec.backgrounds)}); "
               f"lesion cross-sections >= {MIN_BOX_PX:g} mm, smaller ones neither hits nor false positives")
    if any(known for _, known in volumes):
        dataset += "; detections on the series' own annotated findings neither hits nor false positives"
    figures = _figures(outcome, threshold, dataset)
    for figure in figures:
        console.print(f"{spec.name} (threshold {threshold:.3f}): {figure.metric}: {figure.value} {figure.ci95 or ''}")
    card = ModelCard(
        name=spec.name,
        version=version,
        weights_file=weights.name,
        weights_sha256=sha256_file(weights),
        body_part=spec.body_part,
        classes=spec.classes,
        input_spec=spec.input_spec,
        operating_threshold=round(threshold, 4),
        evaluation=(*figures, *training),
    )
    save_card(card, models / f"{spec.name}.json")


def _fixed_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at 128 KiB: its dynamic growth put every pooled image on the heap between
    the float32 temporaries of rendering, and the fragments held several times the pool's own size."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="+", choices=sorted(TARGETS))
    parser.add_argument("--budget-s", type=float, default=1440.0, help="training wall-clock budget per target")
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--pool", type=int, default=None, help="training samples rendered (default: the target's)")
    parser.add_argument("--crop", type=int, default=None,
                        help="training crop side, model pixels, a multiple of 32 (default: the target's)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models-dir", type=Path, default=MODELS,
                        help="where the card and weights go (and are read from with --evaluate-only)")
    parser.add_argument("--init", type=Path, default=None,
                        help="weights file (TARGET's exported state) to continue from; one target only")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="recalibrate and re-measure the shipped weights instead of training")
    args = parser.parse_args()
    if args.init is not None and len(args.targets) != 1:
        parser.error("--init takes one target")
    torch.set_num_threads(args.threads)
    _fixed_mmap_threshold()
    for name in args.targets:
        spec = TARGETS[name]
        settings = TrainSettings(iterations=args.iterations, budget_s=args.budget_s, crop_px=args.crop or spec.crop_px,
                                 lr=args.lr, seed=args.seed)
        run(spec, settings, args.pool or spec.pool, args.evaluate_only, args.models_dir, args.init)


if __name__ == "__main__":
    main()
