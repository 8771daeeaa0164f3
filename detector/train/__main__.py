"""`python -m detector.train TARGET...`: train the first model of each target and ship it as card + weights."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from detector.infer import load_model
from detector.io import Volume, read_ct_volume
from detector.models import DetectorConfig, RetinaNet
from detector.postprocess.decode import decode_slice
from detector.registry import EvaluationFigure, ModelCard, save_card, sha256_file
from detector.train.loop import TrainSettings, train
from detector.train.samples import Sample, render_sample
from detector.train.targets import TARGETS, TargetSpec

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "detector" / "registry" / "models"
VERSION = "0.1.0"
TRAINING_POOL = "synthetic training pool"
FP_PER_SLICE = 0.02
HIT_MIN_PX = 2.0
console = Console(stderr=True)


def data_root() -> Path:
    return Path(os.environ.get("CTNODE_TEST_DATA", REPO.parent / "shared" / "ct"))


def _pool(spec: TargetSpec, volumes: list[Volume], count: int, negatives: float, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in track(range(count), description=f"{spec.target} samples (seed {seed})", console=console):
        volume = volumes[int(rng.integers(len(volumes)))]
        lesions = 0 if rng.random() < negatives else int(rng.integers(1, 3))
        sample = render_sample(spec.target, volume, spec.input_spec, rng, lesions)
        out.append(Sample(sample.image.half(), sample.boxes, sample.labels))
    return out


def _hits(model: RetinaNet, samples: list[Sample], threshold: float) -> tuple[list[float], list[float], int]:
    """(best score of the detections hitting each lesion, scores of detections hitting none, slices).

    A hit is a detection centre within the lesion box's half-side (at least ``HIT_MIN_PX``) of its
    centre, the slice-level form of the evaluation protocol's "within the lesion's radius, min 2 mm".
    """
    lesion_scores: list[float] = []
    false_scores: list[float] = []
    with torch.no_grad():
        for s in samples:
            logits, deltas = model(s.image.float()[None])
            det = decode_slice(logits[0], deltas[0], model.anchors(*s.image.shape[-2:]), threshold)
            centres = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
            hit = torch.zeros(len(det), dtype=torch.bool)
            for box in s.boxes:
                radius = max(float((box[2:] - box[:2]).max()) / 2, HIT_MIN_PX)
                near = (centres - (box[:2] + box[2:]) / 2).norm(dim=1) <= radius
                hit |= near
                lesion_scores.append(float(det.scores[near].max()) if near.any() else 0.0)
            false_scores += det.scores[~hit].tolist()
    return lesion_scores, false_scores, len(samples)


def _operating_threshold(false_scores: list[float], slices: int) -> float:
    allowed = int(FP_PER_SLICE * slices)
    ranked = sorted(false_scores, reverse=True)
    threshold = ranked[allowed] + 1e-4 if len(ranked) > allowed else 0.05
    return float(np.clip(threshold, 0.05, 0.95))


def run(spec: TargetSpec, settings: TrainSettings, pool_size: int, evaluate_only: bool) -> None:
    """Train (or, with ``evaluate_only``, reload the shipped weights), calibrate, measure and ship the model."""
    torch.manual_seed(settings.seed)
    volumes = [read_ct_volume(data_root() / folder)[0] for folder in spec.backgrounds]
    if evaluate_only:
        loaded = load_model(spec.name)
        model = loaded.network
        training = tuple(e for e in loaded.card.evaluation if e.dataset == TRAINING_POOL)
    else:
        pool = _pool(spec, volumes, pool_size, 0.25, seed=settings.seed)
        model = RetinaNet(DetectorConfig(in_channels=spec.input_spec.channels, num_classes=len(spec.classes)))
        log = train(model, pool, settings)
        n = len(log.cls)
        console.print(f"{spec.name}: {n} iterations; loss (cls+box) first 100 "
                      f"{log.mean('cls', 0, 100) + log.mean('box', 0, 100):.3f} -> last 100 "
                      f"{log.mean('cls', n - 100, n) + log.mean('box', n - 100, n):.3f}")
        training = (
            EvaluationFigure("training iterations", float(n), TRAINING_POOL),
            EvaluationFigure("final training loss (mean of last 100 iterations)",
                             round(log.mean("cls", -100, None) + log.mean("box", -100, None), 4), TRAINING_POOL),
        )
    calibration = _pool(spec, volumes, 120, 0.3, seed=settings.seed + 1000)
    test = _pool(spec, volumes, 120, 0.3, seed=settings.seed + 2000)
    _, false_scores, slices = _hits(model, calibration, 0.05)
    threshold = _operating_threshold(false_scores, slices)
    lesion_scores, test_false, test_slices = _hits(model, test, threshold)
    sensitivity = float(np.mean([s >= threshold for s in lesion_scores])) if lesion_scores else 0.0
    fp_rate = len(test_false) / test_slices
    console.print(f"{spec.name}: threshold {threshold:.3f}; held-out slice sensitivity {sensitivity:.3f} "
                  f"on {len(lesion_scores)} lesion slices, {fp_rate:.3f} FP/slice")
    weights = MODELS / f"{spec.name}-{VERSION}.pt"
    if not evaluate_only:
        torch.save(model.export_state(), weights)
    dataset = f"synthetic lesions on held-out seeds, same backgrounds as training ({', '.join(spec.backgrounds)})"
    card = ModelCard(
        name=spec.name,
        version=VERSION,
        weights_file=weights.name,
        weights_sha256=sha256_file(weights),
        body_part=spec.body_part,
        classes=spec.classes,
        input_spec=spec.input_spec,
        operating_threshold=round(threshold, 4),
        evaluation=(
            EvaluationFigure("slice-level sensitivity at operating threshold", round(sensitivity, 4), dataset),
            EvaluationFigure("false positives per slice at operating threshold", round(fp_rate, 4), dataset),
            *training,
        ),
    )
    save_card(card, MODELS / f"{spec.name}.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="+", choices=sorted(TARGETS))
    parser.add_argument("--budget-s", type=float, default=480.0, help="training wall-clock budget per target")
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--pool", type=int, default=1200, help="training samples rendered per target")
    parser.add_argument("--crop", type=int, default=128, help="training crop side (model pixels)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--evaluate-only", action="store_true",
                        help="recalibrate and re-measure the shipped weights instead of training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.targets:
        settings = TrainSettings(iterations=args.iterations, budget_s=args.budget_s, crop_px=args.crop, lr=args.lr)
        run(TARGETS[name], settings, args.pool, args.evaluate_only)


if __name__ == "__main__":
    main()
