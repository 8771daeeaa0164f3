"""Fine-tuning on a site's reviewed studies: the split, the pool from reviewed lesions, and the card with its lineage.

The narrow face to the node: the node reads its database and store and hands over :class:`SiteCase` objects (a
:class:`~detector.evaluate.LabelledStudy` with its reviewed lesions, a hashed patient key, the feedback ids and
the centres of the findings readers rejected); nothing here knows where they came from.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from detector.evaluate import EvaluationOptions, EvaluationReport, LabelledStudy, evaluate_labelled
from detector.infer import LoadedModel, load_model
from detector.io import Volume, read_ct_volume
from detector.labels.lesions import LesionRecord
from detector.preprocess import InputSpec, model_input
from detector.registry import (
    EvaluationFigure,
    Lineage,
    ModelCard,
    TrainedStudy,
    TrainingRecord,
    save_card,
    sha256_file,
)
from detector.synth import slab
from detector.train.annotations import Box
from detector.train.config import TrainConfig, TrainConfigError
from detector.train.loop import train
from detector.train.pool import fixed_mmap_threshold
from detector.train.run import CHECKPOINT, _loss, settings_of, write_log
from detector.train.samples import MIN_BOX_PX, Sample, render_sample

ROLES = ("train", "validation", "test")
console = Console(stderr=True)
Point = tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class SiteCase:
    """One reviewed study of the site: the series its run read with the review's lesions as truth."""

    study: LabelledStudy
    patient_key: str | None
    """A one-way hash of the study's Patient ID (never the ID itself); None when the study names no patient."""
    feedback_ids: tuple[int, ...]
    rejected_mm: tuple[Point, ...] = ()
    """Centres of the run's findings the reader rejected: where the model was wrong, for hard negatives."""

    @property
    def study_instance_uid(self) -> str:
        return self.study.study_instance_uid


@dataclass(frozen=True)
class SiteSplit:
    """The cases of each role, and whether patients or studies were kept whole."""

    train: tuple[SiteCase, ...]
    validation: tuple[SiteCase, ...]
    test: tuple[SiteCase, ...]
    split_by: str
    seed: int

    def role(self, role: str) -> tuple[SiteCase, ...]:
        return {"train": self.train, "validation": self.validation, "test": self.test}[role]


def hash_patient(patient_id: str, salt: str = "ctnode-site") -> str:
    """The key a patient's studies are grouped by: sha256 of a salt and the ID, 16 hex digits; logs see only this."""
    return hashlib.sha256(f"{salt}\x00{patient_id}".encode()).hexdigest()[:16]


def site_digest(cases: Sequence[SiteCase]) -> str:
    """sha256 over the sorted Study Instance UIDs and the sorted feedback ids the cases carry."""
    h = hashlib.sha256()
    for uid in sorted(c.study_instance_uid for c in cases):
        h.update(f"study {uid}\n".encode())
    for fid in sorted({f for c in cases for f in c.feedback_ids}):
        h.update(f"feedback {fid}\n".encode())
    return h.hexdigest()


def split_cases(cases: Sequence[SiteCase], fractions: tuple[float, float, float], seed: int) -> SiteSplit:
    """Deterministic split: groups (one per patient key, or per study when any case names no patient) ordered by
    sha256(seed, key), then cut by ``fractions``; validation and test get at least one group each when there
    are three groups or more. The same cases and seed always give the same split."""
    by_patient = all(c.patient_key for c in cases)
    groups: dict[str, list[SiteCase]] = {}
    for case in cases:
        key = case.patient_key if by_patient else case.study_instance_uid
        groups.setdefault(str(key), []).append(case)
    order = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}\x00{k}".encode()).hexdigest())
    n = len(order)
    n_test = round(n * fractions[2])
    n_val = round(n * fractions[1])
    if n >= 3:
        n_test, n_val = max(n_test, 1), max(n_val, 1)
    n_train = max(n - n_test - n_val, 1 if n else 0)
    n_val = max(0, min(n_val, n - n_train - n_test))
    names = {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
             "test": order[n_train + n_val:]}

    def of(role: str) -> tuple[SiteCase, ...]:
        chosen = set(names[role])
        return tuple(sorted((c for k in chosen for c in groups[k]), key=lambda c: c.study_instance_uid))

    return SiteSplit(of("train"), of("validation"), of("test"), "patient" if by_patient else "study", seed)


# --- the pool -------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class SiteBackground:
    """A train case's volume, its reviewed lesions as source-pixel boxes per slice, and its rejected slices."""

    case: SiteCase
    volume: Volume
    targets: dict[int, list[Box]]
    ignores: dict[int, list[Box]]
    lesion_slices: list[list[int]]
    """Per target lesion, the slices its sphere crosses near its middle (where a sample is drawn)."""
    rejected_slices: list[int]


def lesion_boxes(volume: Volume, lesions: Sequence[LesionRecord]) -> tuple[dict[int, list[Box]], dict[int, list[Box]],
                                                                          list[list[int]]]:
    """Each lesion as a sphere of its diameter: per slice it crosses, the box (pixel edges) of its cross-section;
    (targets, ignores, per target lesion its central slices)."""
    g = volume.geometry
    depth = g.shape[0]
    gap = float(np.median(g.slice_gaps_mm)) if depth > 1 else 1.0
    dy, dx = g.pixel_spacing_mm
    targets: dict[int, list[Box]] = {}
    ignores: dict[int, list[Box]] = {}
    central: list[list[int]] = []
    for lesion in lesions:
        z, y, x = (float(v) for v in g.patient_to_voxel(lesion.centre_mm))
        radius = lesion.diameter_mm / 2
        into = ignores if lesion.ignore else targets
        middle = []
        for k in range(math.ceil(z - radius / gap), math.floor(z + radius / gap) + 1):
            if not 0 <= k < depth:
                continue
            across = math.sqrt(max(radius ** 2 - ((k - z) * gap) ** 2, 0.0))
            if across <= 0:
                continue
            into.setdefault(k, []).append((x - across / dx, y - across / dy, x + across / dx, y + across / dy))
            if abs(k - z) * gap <= 0.8 * radius or not middle:
                middle.append(k)
        if not lesion.ignore:
            central.append(middle or [int(np.clip(round(z), 0, depth - 1))])
    return targets, ignores, central


def read_site_backgrounds(cases: Sequence[SiteCase]) -> list[SiteBackground]:
    """Read each case's series (the one its run read) and place its lesions and rejected findings on it."""
    out = []
    for case in track(cases, description="site train studies", console=console):
        volume = read_ct_volume([h.path for h in case.study.headers])[0]
        targets, ignores, central = lesion_boxes(volume, case.study.lesions)
        depth = volume.geometry.shape[0]
        rejected = sorted({int(np.clip(round(float(volume.geometry.patient_to_voxel(p)[0])), 0, depth - 1))
                           for p in case.rejected_mm})
        out.append(SiteBackground(case, volume, targets, ignores, central, rejected))
    return out


def render_labelled(background: SiteBackground, spec: InputSpec, z: int) -> Sample:
    """Slice ``z`` of a site study as a sample: its reviewed lesions' cross-sections the boxes (small ones and
    ignore-marked lesions ignore boxes)."""
    volume = background.volume
    depth = volume.geometry.shape[0]
    reach = max(1, int(np.ceil(spec.context_slices * (spec.slice_step_mm or 1.0) / min(volume.geometry.slice_gaps_mm))))
    start, stop = max(z - reach, 0), min(z + reach + 1, depth)
    if stop - start < 2:
        start, stop = (start, start + 2) if start + 2 <= depth else (depth - 2, depth)
    batch = model_input(slab(volume, start, stop), [z - start], spec)

    def to_model(box: Box) -> list[float]:
        return [float(v) for v in batch.mapping.to_model(np.array([box[:2], box[2:]])).reshape(-1)]

    boxes = [to_model(b) for b in background.targets.get(z, [])]
    big = [b for b in boxes if max(b[2] - b[0], b[3] - b[1]) >= MIN_BOX_PX]
    small = [b for b in boxes if max(b[2] - b[0], b[3] - b[1]) < MIN_BOX_PX]
    small += [to_model(b) for b in background.ignores.get(z, [])]
    return Sample(image=batch.images[0], boxes=torch.tensor(big, dtype=torch.float32).reshape(-1, 4),
                  labels=torch.zeros(len(big), dtype=torch.long),
                  ignore=torch.tensor(small, dtype=torch.float32).reshape(-1, 4))


def site_pool(config: TrainConfig, spec: InputSpec, backgrounds: Sequence[SiteBackground], count: int) -> list[Sample]:
    """``count`` samples: a ``data.negatives`` share lesion-free slices (``site.hard_negatives`` of them where a
    reader rejected a finding), a ``site.synthetic`` share with synthetic lesions inserted (the study's own lesions
    ignore regions), the rest slices through a reviewed lesion. Deterministic in ``data.seed``."""
    assert config.site is not None
    fixed_mmap_threshold()
    rng = np.random.default_rng(config.data.seed)
    with_lesions = [b for b in backgrounds if b.lesion_slices]
    out = []
    for _ in track(range(count), description=f"site samples (seed {config.data.seed})", console=console):
        draw = rng.random()
        if draw < config.data.negatives or not with_lesions:
            background = backgrounds[int(rng.integers(len(backgrounds)))]
            depth = background.volume.geometry.shape[0]
            free = [k for k in range(depth) if k not in background.targets]
            hard = [k for k in background.rejected_slices if k not in background.targets]
            pick = hard if hard and rng.random() < config.site.hard_negatives else free or list(range(depth))
            sample = render_labelled(background, spec, int(pick[int(rng.integers(len(pick)))]))
        elif draw < config.data.negatives + config.site.synthetic:
            background = backgrounds[int(rng.integers(len(backgrounds)))]
            known = {z: [*background.targets.get(z, []), *background.ignores.get(z, [])]
                     for z in {*background.targets, *background.ignores}}
            sample = render_sample(config.spec.target, background.volume, spec, rng, int(rng.integers(1, 3)), known)
        else:
            background = with_lesions[int(rng.integers(len(with_lesions)))]
            slices = background.lesion_slices[int(rng.integers(len(background.lesion_slices)))]
            sample = render_labelled(background, spec, int(slices[int(rng.integers(len(slices)))]))
        out.append(replace(sample, image=sample.image.half()))
    return out


# --- the run --------------------------------------------------------------------------------------------------

def _trained(case: SiteCase, use: str) -> TrainedStudy:
    return TrainedStudy(id=case.study.id, patient=case.patient_key or "unknown", use=use,
                        study_instance_uid=case.study_instance_uid,
                        series_instance_uids=case.study.series_instance_uids)


def _evaluate(model: LoadedModel, cases: Sequence[SiteCase], out: Path, threads: int) -> EvaluationReport:
    from detector.infer import InferenceOptions

    report = evaluate_labelled(model, [c.study for c in cases], training=model.card.training,
                               options=EvaluationOptions(inference=InferenceOptions(threads=threads)))
    report.write(out)
    return report


def with_operating_threshold(card: ModelCard, threshold: float) -> ModelCard:
    """``card`` at another operating threshold (chosen on the site's validation studies). The parent's urgency
    threshold is kept where it is still at or above the new one; below it, it is raised to it: an urgent finding
    must also be reported (the fine-tuned scores are not the parent's, so the parent's margin means nothing)."""
    urgency = card.urgency
    if urgency is not None and urgency.threshold < threshold:
        console.print(f"urgency threshold {urgency.threshold:g} raised to the operating threshold {threshold:.4f}")
        urgency = replace(urgency, threshold=threshold)
    return replace(card, operating_threshold=threshold, urgency=urgency)


def fine_tune_on_site(config: TrainConfig, cases: Sequence[SiteCase], parent: Path, out: Path,
                      site_name: str, resume: bool | None = None) -> Path:
    """Split ``cases``, fine-tune the ``parent`` card's detector on the train part (initialised from its weights),
    choose the threshold on the validation part (the parent's when it is empty), measure on the test part, and
    write the weights and the card (training record and lineage) under ``out``. Returns the card's path."""
    assert config.site is not None
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and resume is None:
        from detector.train.checkpoint import CheckpointError

        raise CheckpointError(f"{checkpoint} exists: --resume to continue that run, --no-resume to start over")
    start = load_model(parent)
    if start.card.body_part.upper() != config.spec.body_part.upper():
        raise TrainConfigError(f"site.parent {parent} is a {start.card.body_part} model, the target is "
                               f"{config.spec.body_part}")
    split = split_cases(cases, config.site.fractions, config.site.split_seed)
    if not split.train:
        raise TrainConfigError(f"site {site_name}: no reviewed {config.spec.body_part} study to train on")
    console.print(f"site {site_name}: {len(cases)} reviewed studies split by {split.split_by} (seed {split.seed}): "
                  f"{len(split.train)} train, {len(split.validation)} validation, {len(split.test)} test")
    out.mkdir(parents=True, exist_ok=True)
    threads = config.schedule.threads
    if not torch.cuda.is_available():
        torch.set_num_threads(threads)
    torch.manual_seed(config.data.seed)
    network = start.network
    spec = start.card.input_spec
    backgrounds = read_site_backgrounds(split.train)
    pool = site_pool(config, spec, backgrounds, config.data.pool or config.spec.pool)
    digest = site_digest(cases)
    key = {"site": digest, "parent": start.card.weights_sha256, "split_seed": split.seed,
           "negatives": config.data.negatives, "synthetic": config.site.synthetic}
    settings = replace(settings_of(config), crop_px=config.schedule.crop_px or config.spec.crop_px)
    log = train(network, pool, spec, settings, checkpoint, bool(resume), key)
    write_log(log, out / "training.json")
    weights = out / f"{config.name}-{config.version}.pt"
    torch.save(network.export_state(), weights)
    lineage = Lineage(parent_name=start.card.name, parent_version=start.card.version,
                      parent_weights_sha256=start.card.weights_sha256, site_data_sha256=digest,
                      split_by=split.split_by, split_seed=split.seed,
                      split=tuple((role, tuple(c.study_instance_uid for c in split.role(role))) for role in ROLES))
    earlier = start.card.training.studies if start.card.training else ()
    record = TrainingRecord(manifest=f"site {site_name} (sha256 {digest[:12]})",
                            studies=(*earlier, *(_trained(c, "labelled") for c in split.train),
                                     *(_trained(c, "calibration") for c in split.validation)),
                            seeds=(config.data.seed,), samples=len(pool), iterations=len(log.cls))
    card = replace(start.card, name=config.name, version=config.version, weights_file=weights.name,
                   weights_sha256=sha256_file(weights), evaluation=(), training=record, lineage=lineage,
                   second_stage=None)
    model = LoadedModel(card, network.eval())
    if split.validation:
        validation = _evaluate(model, split.validation, out / "evaluation" / "validation", threads)
        card = with_operating_threshold(card, validation.threshold_at(config.evaluation.fp_per_scan))
        console.print(f"operating threshold {card.operating_threshold:.4f}: <= {config.evaluation.fp_per_scan:g} "
                      f"false positive(s) per scan on {len(split.validation)} validation studies")
    else:
        console.print(f"no validation study: the parent's operating threshold {card.operating_threshold:.4f} stays")
    figures: tuple[EvaluationFigure, ...] = ()
    if split.test:
        test = _evaluate(replace(model, card=card), split.test, out / "evaluation" / "test", threads)
        figures = test.figures(f"site {site_name}: {len(split.test)} held-out reviewed studies (split by "
                               f"{split.split_by}); threshold chosen on the validation studies")
    loss = EvaluationFigure("final training loss (mean of the last 100 iterations)", _loss(log, -100, None),
                            f"site {site_name}: samples of the train studies")
    card = replace(card, evaluation=(*figures, loss))
    card_file = out / f"{config.name}.json"
    save_card(card, card_file)
    return card_file
