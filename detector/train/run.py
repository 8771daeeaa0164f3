"""A whole training run: config and manifest in; weights, model card, evaluation reports and training log out."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from detector.data import Manifest, ManifestError, StudyEntry, load_manifest
from detector.evaluate import EvaluationReport, evaluate_studies
from detector.evaluate.labelled import SYNTHETIC_CACHE
from detector.evaluate.labelled import studies_in
from detector.infer import LoadedModel, card_path, load_model
from detector.io import read_headers
from detector.models import RetinaNet
from detector.refine import PatchNet, PatchSpec, Refiner
from detector.refine.network import PatchNetConfig
from detector.registry import (
    EvaluationFigure,
    ModelCard,
    SecondStage,
    TrainedStudy,
    TrainingRecord,
    save_card,
    sha256_file,
)
from detector.synth.sets import synthetic_entries
from detector.train.checkpoint import CheckpointError, TrainLog
from detector.train.config import TrainConfig, TrainConfigError, load_train_config
from detector.train.loop import TrainSettings, train
from detector.train.pool import read_backgrounds, sample_pool
from detector.train.second_stage import StageSettings, fit, mine

DEFAULT_OUT = Path("var") / "train"
CHECKPOINT = "checkpoint.pt"
TRAINING_POOL = "synthetic training pool"
console = Console(stderr=True)


@dataclass(frozen=True)
class Studies:
    """The manifest studies a run uses: backgrounds for synthetic lesions, validation (the operating point), test."""

    backgrounds: tuple[StudyEntry, ...]
    validation: tuple[StudyEntry, ...]
    test: tuple[StudyEntry, ...]


def select_studies(config: TrainConfig, manifest: Manifest, source: Path, cache: Path = SYNTHETIC_CACHE) -> Studies:
    """``data.backgrounds`` (default: the train studies of the target's body part), and the validation and test
    studies of that body part with the manifest's synthetic sets over them (written under ``cache`` the first
    time); a study without a body part counts for any. ``source``: the config, for errors."""
    body_part = config.spec.body_part

    def of_body_part(studies: Sequence[StudyEntry]) -> tuple[StudyEntry, ...]:
        return tuple(s for s in studies if s.body_part in (None, body_part))

    train_studies = {s.id: s for s in manifest.role("train")}
    if config.data.backgrounds is None:
        backgrounds = of_body_part(train_studies.values())
    else:
        wrong = [i for i in config.data.backgrounds if i not in train_studies]
        if wrong:
            raise TrainConfigError(f"{source}: data.backgrounds: {', '.join(wrong)} not train studies of manifest "
                                   f"{manifest.source} (its train studies: {', '.join(train_studies) or 'none'})")
        backgrounds = tuple(train_studies[i] for i in config.data.backgrounds)
    if not backgrounds:
        raise TrainConfigError(f"{source}: data: manifest {manifest.source} has no {body_part} train study")

    def held_out(role: str) -> tuple[StudyEntry, ...]:
        return of_body_part([*manifest.role(role), *synthetic_entries(manifest, (role,), cache)])

    validation = held_out("validation")
    if not validation:
        raise TrainConfigError(f"{source}: data: manifest {manifest.source} has no {body_part} validation study "
                               "to choose the operating threshold on")
    return Studies(backgrounds, validation, held_out("test"))


def _trained_study(study: StudyEntry, use: str) -> TrainedStudy:
    """The study with its Study and Series Instance UIDs, from its files' headers."""
    headers = read_headers(study.path).headers
    study_uids = Counter(h.study_instance_uid for h in headers if h.study_instance_uid)
    return TrainedStudy(id=study.id, patient=study.patient, use=use,
                        study_instance_uid=study_uids.most_common(1)[0][0] if study_uids else "",
                        series_instance_uids=tuple(sorted({h.series_instance_uid for h in headers})))


def training_record(config: TrainConfig, manifest: Manifest, studies: Studies, samples: int,
                    iterations: int) -> TrainingRecord:
    """What the model saw: its backgrounds and the validation studies its threshold was chosen on."""
    seen = [_trained_study(s, "background") for s in studies.backgrounds]
    seen += [_trained_study(s, "calibration") for s in studies.validation]
    return TrainingRecord(manifest=manifest.name, studies=tuple(seen), seeds=(config.data.seed,), samples=samples,
                          iterations=iterations)


def settings_of(config: TrainConfig) -> TrainSettings:
    s = config.schedule
    return TrainSettings(iterations=s.iterations, budget_s=s.budget_s, batch=s.batch,
                         crop_px=s.crop_px or config.spec.crop_px, lr=s.lr, weight_decay=s.weight_decay,
                         seed=config.data.seed, augmentation=config.augmentation,
                         checkpoint_every_s=s.checkpoint_every_s)


def _loss(log: TrainLog, start: int | None, stop: int | None) -> float:
    return round(log.mean("cls", start, stop) + log.mean("box", start, stop), 4)


def write_log(log: TrainLog, path: Path) -> None:
    """``training.json``: iterations, the step each session started at, timing and loss."""
    summary = {
        "iterations": len(log.cls),
        "sessions": log.sessions,
        "seconds_training": round(sum(log.seconds), 3),
        "seconds_per_iteration_median": round(float(np.median(log.seconds)), 4) if log.seconds else None,
        "loss_first_100": _loss(log, 0, 100),
        "loss_last_100": _loss(log, -100, None),
    }
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _evaluate(model: LoadedModel, studies: Sequence[StudyEntry], out: Path) -> EvaluationReport:
    report = evaluate_studies(model, studies, training=model.card.training)
    report.write(out)
    return report


def first_stage_card(config: TrainConfig, weights: Path, record: TrainingRecord) -> ModelCard:
    """The card of freshly trained detector ``weights``, with a provisional threshold (see :func:`evaluated_card`)."""
    spec = config.spec
    return ModelCard(name=config.name, version=config.version, weights_file=weights.name,
                     weights_sha256=sha256_file(weights), body_part=spec.body_part, classes=spec.classes,
                     input_spec=spec.input_spec, operating_threshold=0.5, training=record)


def evaluated_card(config: TrainConfig, dataset: str, studies: Studies, model: LoadedModel, out: Path) -> ModelCard:
    """``model``'s card with its threshold the lowest with at most ``evaluation.fp_per_scan`` false positives per
    validation scan, its figures those of the test studies at that threshold; reports under ``out``. The card's
    own threshold is provisional: the validation evaluation scores every finding and the real one comes from it."""
    spec = config.spec
    validation = _evaluate(model, studies.validation, out / "validation")
    card = replace(model.card, operating_threshold=validation.threshold_at(config.evaluation.fp_per_scan))
    console.print(f"operating threshold {card.operating_threshold:.4f}: <= {config.evaluation.fp_per_scan:g} "
                  f"false positive(s) per scan on {', '.join(s.id for s in studies.validation)}")
    if not studies.test:
        console.print(f"manifest {dataset} has no {spec.body_part} test study: the card carries no test figures")
        return card
    test = _evaluate(replace(model, card=card), studies.test, out / "test")
    backgrounds = sorted({s.patient for s in studies.test})
    return replace(card, evaluation=test.figures(
        f"{dataset}: {len(studies.test)} test studies of patient(s) {', '.join(backgrounds)} (real, and synthetic "
        "lesions inserted into them); threshold chosen on the validation studies"))


def _first_stage_path(config: TrainConfig, config_path: Path) -> Path:
    """The first stage's card: beside the config, else a shipped model's name."""
    assert config.second_stage is not None
    beside = config_path.parent / config.second_stage.first_stage
    return beside if beside.is_file() else card_path(config.second_stage.first_stage)


def train_second_stage(config: TrainConfig, config_path: Path, manifest: Manifest, studies: Studies,
                       out: Path) -> Path:
    """Fit a second stage over ``second_stage.first_stage`` on the candidates it finds in the train studies and the
    manifest's synthetic sets over them; write both weights and the two-stage card (threshold on the validation
    studies, figures on the test studies) under ``out``. Returns the card's path."""
    stage = config.second_stage
    assert stage is not None
    first = replace(load_model(_first_stage_path(config, config_path)), refiner=None)  # its detector alone
    if first.card.body_part != config.spec.body_part:
        raise TrainConfigError(f"{config_path}: second_stage.first_stage is a {first.card.body_part} model, the "
                               f"target is {config.spec.body_part}")
    sources = [*studies.backgrounds, *(studies.validation if "validation" in stage.mine_roles else ())]
    names = {s.id for s in sources}
    entries = [*sources, *(s for s in synthetic_entries(manifest, stage.mine_roles, SYNTHETIC_CACHE)
                           if s.id.split("+", 1)[0] in names and s.id not in names)]
    labelled = [study for entry in entries for study in studies_in(entry)]
    spec = PatchSpec(windows=first.card.input_spec.windows, side_mm=stage.side_mm, voxels=stage.voxels,
                     scale=stage.scale)
    samples = mine(labelled, first, spec, stage.candidate_threshold, stage.max_candidates, config.data.seed)
    torch.manual_seed(config.data.seed)
    network = PatchNet(PatchNetConfig(in_channels=len(spec.windows)))
    losses = fit(samples, network, StageSettings(iterations=stage.iterations, batch=stage.batch, lr=stage.lr,
                                                 seed=config.data.seed))
    detector_weights = out / first.card.weights_file
    shutil.copyfile(_first_stage_path(config, config_path).parent / first.card.weights_file, detector_weights)
    weights = out / f"{config.name}-{config.version}-second-stage.pt"
    torch.save(network.flat_state(), weights)
    earlier = first.card.training.studies if first.card.training else ()
    mined = tuple(_trained_study(e, "labelled") for e in entries)
    calibration = tuple(_trained_study(s, "calibration") for s in studies.validation)
    record = TrainingRecord(manifest=manifest.name, studies=(*earlier, *mined, *calibration),
                            seeds=(config.data.seed,), samples=len(samples.labels), iterations=stage.iterations)
    second = SecondStage(weights_file=weights.name, weights_sha256=sha256_file(weights),
                         candidate_threshold=stage.candidate_threshold, max_candidates=stage.max_candidates,
                         side_mm=stage.side_mm, voxels=stage.voxels, scale=stage.scale)
    card = replace(first.card, name=config.name, version=config.version, evaluation=(), training=record,
                   second_stage=second)
    refiner = Refiner(spec=spec, network=network, candidate_threshold=stage.candidate_threshold,
                      max_candidates=stage.max_candidates)
    card = evaluated_card(config, manifest.name, studies, LoadedModel(card, first.network, refiner),
                          out / "evaluation")
    loss = EvaluationFigure("second stage: final training loss (mean of the last 50 iterations)",
                            round(float(np.mean(losses[-50:])), 4), "candidates mined on the train studies")
    card = replace(card, evaluation=(*card.evaluation, loss))
    card_file = out / f"{config.name}.json"
    save_card(card, card_file)
    return card_file


def run_training(config_path: Path, out: Path | None = None, resume: bool | None = None) -> Path:
    """Train the model ``config_path`` describes and write, under ``out`` (default ``var/train/NAME-VERSION``),
    its weights, its card (threshold at ``evaluation.fp_per_scan`` on the validation studies, figures on the
    test studies, the training record), ``evaluation/`` reports, ``training.json`` and the checkpoint.

    ``resume``: continue an existing checkpoint (True) or start over (False); None refuses to touch one.
    Returns the card's path.
    """
    config = load_train_config(config_path)
    if config.data.manifest is None:
        raise TrainConfigError(f"{config_path}: site: a node's studies are read by `ctnode train` on that node")
    try:
        manifest = load_manifest(config.data.manifest)
    except ManifestError as exc:
        raise TrainConfigError(f"{config_path}: data.manifest: {exc}") from exc
    studies = select_studies(config, manifest, Path(config_path))
    out = Path(out) if out is not None else DEFAULT_OUT / f"{config.name}-{config.version}"
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and resume is None:
        raise CheckpointError(f"{checkpoint} exists: --resume to continue that run, --no-resume to start over")
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        torch.set_num_threads(config.schedule.threads)
    if config.second_stage is not None:
        return train_second_stage(config, Path(config_path), manifest, studies, out)
    spec = config.spec
    torch.manual_seed(config.data.seed)
    model = RetinaNet(config.detector_config())
    backgrounds = read_backgrounds(studies.backgrounds)
    pool = sample_pool(spec, backgrounds, config.data.pool or spec.pool, config.data.negatives, config.data.seed)
    key = {"target": config.target, "manifest": manifest.name, "backgrounds": [s.id for s in studies.backgrounds],
           "negatives": config.data.negatives}
    log = train(model, pool, spec.input_spec, settings_of(config), checkpoint, bool(resume), key)
    write_log(log, out / "training.json")
    console.print(f"loss (cls+box) first 100 {_loss(log, 0, 100)} -> last 100 {_loss(log, -100, None)}")

    weights = out / f"{config.name}-{config.version}.pt"
    torch.save(model.export_state(), weights)
    record = training_record(config, manifest, studies, len(pool), len(log.cls))
    loss = EvaluationFigure("final training loss (mean of the last 100 iterations)", _loss(log, -100, None),
                            TRAINING_POOL)
    card = evaluated_card(config, manifest.name, studies,
                          LoadedModel(first_stage_card(config, weights, record), model.eval()), out / "evaluation")
    card = replace(card, evaluation=(*card.evaluation, loss))
    card_file = out / f"{config.name}.json"
    save_card(card, card_file)
    return card_file
