"""Model card: what a shipped model is, what it expects and how it was measured; JSON with validation."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.findings import Code
from detector.io.context import CONTEXT_NAMES
from detector.preprocess.regions import ANATOMIES
from detector.preprocess.spec import HUWindow, InputSpec

SCHEMA_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelCardError(ValueError):
    """A model card is malformed; the message names the card and the offending field."""


@dataclass(frozen=True)
class ModelClass:
    """One output class of the detector and the codes its findings are reported with."""

    label: str
    finding_type: Code
    finding_site: Code | None = None


@dataclass(frozen=True)
class EvaluationFigure:
    """One measured figure, e.g. metric "CPM" = 0.81 on "head test split v1", with its 95% CI.

    ``held_out`` False: some of the dataset's studies were used in training (``training_overlap`` says which), so
    the figure is not a held-out one.
    """

    metric: str
    value: float
    dataset: str
    ci95: tuple[float, float] | None = None
    held_out: bool = True
    training_overlap: str = ""

    def __post_init__(self) -> None:
        if self.held_out == bool(self.training_overlap):
            raise ValueError(f"figure {self.metric!r} on {self.dataset!r}: a figure that is not held out says why "
                             "(training_overlap), and only such a figure")


@dataclass(frozen=True)
class TrainedStudy:
    """A study a model saw in training: as a background for synthetic lesions or with its real labels.

    The UIDs let an evaluation recognise the study under any folder name.
    """

    id: str
    patient: str
    use: str
    """"background" (synthetic lesions inserted), "labelled" (its real labels trained on), or "calibration"."""
    study_instance_uid: str = ""
    series_instance_uids: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingRecord:
    """What a model was trained on: the manifest, the studies it saw, seeds and sample counts."""

    manifest: str
    studies: tuple[TrainedStudy, ...]
    seeds: tuple[int, ...] = ()
    samples: int = 0
    iterations: int = 0

    def seen(self, study_instance_uid: str, series_instance_uids: tuple[str, ...] = ()) -> TrainedStudy | None:
        """The trained study that is the given study (by Study UID, or any shared Series UID), if any."""
        for s in self.studies:
            if (study_instance_uid and s.study_instance_uid == study_instance_uid) or (
                set(series_instance_uids) & set(s.series_instance_uids)
            ):
                return s
        return None


@dataclass(frozen=True)
class Lineage:
    """Where a fine-tuned model comes from: its parent card, the site data it learnt from and how that was split.

    ``site_data_sha256``: sha256 over the sorted Study Instance UIDs and feedback ids used; ``split``: the Study
    Instance UIDs of each role (train, validation, test; the test studies never trained on); ``split_by``: "patient"
    (hashed Patient IDs kept a patient's studies in one role) or "study" (patients unknown)."""

    parent_name: str
    parent_version: str
    parent_weights_sha256: str
    site_data_sha256: str
    split_by: str
    split_seed: int
    split: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        for digest, name in ((self.parent_weights_sha256, "parent.weights_sha256"),
                             (self.site_data_sha256, "site_data_sha256")):
            if not _SHA256.fullmatch(digest):
                raise ModelCardError(f"lineage.{name} must be 64 lowercase hex digits, got {digest!r}")
        if self.split_by not in ("patient", "study"):
            raise ModelCardError(f"lineage.split_by must be patient or study, got {self.split_by!r}")

    def role(self, role: str) -> tuple[str, ...]:
        """The Study Instance UIDs the split gave ``role`` (none when it has no such role)."""
        return dict(self.split).get(role, ())


@dataclass(frozen=True)
class Domain:
    """What series the model may read (the domain gate): contrast phase, slice thickness, coverage along the table."""

    contrast: str = "any"
    """"non-contrast", "contrast" or "any"."""
    slice_thickness_mm: tuple[float, float] = (0.5, 5.5)
    min_coverage_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.contrast not in ("non-contrast", "contrast", "any"):
            raise ModelCardError(f"domain.contrast must be non-contrast, contrast or any, got {self.contrast!r}")
        low, high = self.slice_thickness_mm
        if not 0 < low <= high:
            raise ModelCardError(f"domain.slice_thickness_mm must be [low, high] with 0 < low <= high, got "
                                 f"{list(self.slice_thickness_mm)}")


@dataclass(frozen=True)
class SecondStage:
    """The second stage (see :mod:`detector.refine`): its weights next to the card, the first-stage score that
    makes a candidate, how many of the best candidates it reads, and its patch (cube side, voxels per axis, and
    how much larger than the candidate the cube grows). The card's operating threshold applies to its scores."""

    weights_file: str
    weights_sha256: str
    candidate_threshold: float
    max_candidates: int = 200
    side_mm: float = 48.0
    voxels: int = 24
    scale: float = 1.5

    def __post_init__(self) -> None:
        if Path(self.weights_file).name != self.weights_file:
            raise ModelCardError(f"second_stage.weights.file {self.weights_file!r} must be a bare file name")
        if not _SHA256.fullmatch(self.weights_sha256):
            raise ModelCardError(f"second_stage.weights.sha256 must be 64 lowercase hex digits, "
                                 f"got {self.weights_sha256!r}")
        if not 0.0 < self.candidate_threshold < 1.0:
            raise ModelCardError(f"second_stage.candidate_threshold must be in (0, 1), got {self.candidate_threshold}")
        if self.max_candidates < 1 or self.voxels < 8 or self.side_mm <= 0 or self.scale <= 0:
            raise ModelCardError("second_stage: max_candidates >= 1, voxels >= 8, side_mm > 0 and scale > 0 "
                                 "are required")


@dataclass(frozen=True)
class UrgentClass:
    """A finding type that makes a study urgent: its class label, and the size (largest extent, mm) from which it
    does (0: any size)."""

    label: str
    min_size_mm: float = 0.0


@dataclass(frozen=True)
class Urgency:
    """What makes a study suspected positive (triage): a finding of an urgent class at or above ``threshold`` (a
    score, separate from the reporting threshold and not below it) and at least its class's size."""

    threshold: float
    classes: tuple[UrgentClass, ...]

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ModelCardError(f"urgency.threshold must be in (0, 1), got {self.threshold}")
        if not self.classes:
            raise ModelCardError("urgency.classes must name at least one class")
        for urgent in self.classes:
            if urgent.min_size_mm < 0:
                raise ModelCardError(f"urgency.classes: min_size_mm of {urgent.label!r} must be >= 0")


@dataclass(frozen=True)
class ModelCard:
    """A model's identity, weights (file next to the card, and its sha256), classes, input and operating point."""

    name: str
    version: str
    weights_file: str
    weights_sha256: str
    body_part: str
    classes: tuple[ModelClass, ...]
    input_spec: InputSpec
    operating_threshold: float
    evaluation: tuple[EvaluationFigure, ...] = ()
    training: TrainingRecord | None = None
    max_findings: int = 10
    """At most this many findings per study are reported (the best ones); the rest are dropped and audited."""
    domain: Domain = Domain()
    second_stage: SecondStage | None = None
    anatomy: str = "none"
    """Where findings must be centred to be reported (:mod:`detector.preprocess.regions`): body, lungs, intracranial
    or none."""
    lineage: Lineage | None = None
    """A fine-tuned model's parent, site data digest and split (see :class:`Lineage`)."""
    urgency: Urgency | None = None
    """What makes a study urgent (:mod:`detector.triage`); None: no finding of this model is urgent."""
    context: tuple[str, ...] = ()
    """The study context beyond the pixels the model uses (names from :data:`detector.io.context.CONTEXT_NAMES`)."""

    def __post_init__(self) -> None:
        for field_name in ("name", "version", "weights_file", "body_part"):
            if not getattr(self, field_name).strip():
                raise ModelCardError(f"model card field {field_name!r} must not be empty")
        if Path(self.weights_file).name != self.weights_file:
            raise ModelCardError(f"weights_file {self.weights_file!r} must be a bare file name next to the card")
        if not _SHA256.fullmatch(self.weights_sha256):
            raise ModelCardError(f"weights_sha256 must be 64 lowercase hex digits, got {self.weights_sha256!r}")
        if not self.classes:
            raise ModelCardError("a model card needs at least one class")
        labels = [c.label for c in self.classes]
        if len(set(labels)) != len(labels):
            raise ModelCardError(f"class labels must be unique, got {labels}")
        if not 0.0 < self.operating_threshold < 1.0:
            raise ModelCardError(f"operating_threshold must be in (0, 1), got {self.operating_threshold}")
        if self.max_findings < 1:
            raise ModelCardError(f"max_findings must be at least 1, got {self.max_findings}")
        if self.anatomy not in ANATOMIES:
            raise ModelCardError(f"anatomy must be one of {', '.join(ANATOMIES)}, got {self.anatomy!r}")
        unknown = [name for name in self.context if name not in CONTEXT_NAMES]
        if unknown or len(set(self.context)) != len(self.context):
            raise ModelCardError(f"context must name distinct items of {', '.join(CONTEXT_NAMES)}, "
                                 f"got {list(self.context)}")
        if self.urgency is not None:
            if self.urgency.threshold < self.operating_threshold:
                raise ModelCardError(f"urgency.threshold {self.urgency.threshold} is below the operating threshold "
                                     f"{self.operating_threshold}: an urgent finding must also be reported")
            for urgent in self.urgency.classes:
                if urgent.label not in labels:
                    raise ModelCardError(f"urgency names class {urgent.label!r}, which the card has not ({labels})")


class _Fields:
    """Reads one JSON object, naming every problem by its path in the card."""

    def __init__(self, data: Any, where: str, allowed: set[str], required: set[str]) -> None:
        name = where or "top level"
        if not isinstance(data, dict):
            raise ModelCardError(f"{name}: expected an object, got {type(data).__name__}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ModelCardError(f"{name}: unknown field(s) {unknown}")
        missing = sorted(k for k in required if data.get(k) is None)
        if missing:
            raise ModelCardError(f"{name}: missing or null field(s) {missing}")
        self.data, self.where = data, where

    def at(self, key: str) -> str:
        """The path of ``key`` in the card, for messages."""
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        """The value at ``key`` if it has type ``kind``; ``default`` when it is absent or null."""
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ModelCardError(f"{self.at(key)}: expected {names}, got {json.dumps(value)}")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        """A JSON number as float (``default`` when absent or null)."""
        value = self.get(key, (int, float), default)
        return value if value is None else float(value)

    def items(self, key: str) -> list[tuple[str, Any]]:
        """(path, item) for each element of the list at ``key``."""
        return [(f"{self.at(key)}[{i}]", item) for i, item in enumerate(self.get(key, list, []))]


_CODE_FIELDS = {"value", "scheme", "meaning"}


def _code(data: Any, where: str) -> Code:
    f = _Fields(data, where, _CODE_FIELDS, _CODE_FIELDS)
    return Code(value=f.get("value", str), scheme=f.get("scheme", str), meaning=f.get("meaning", str))


def _class(data: Any, where: str) -> ModelClass:
    f = _Fields(data, where, {"label", "finding_type", "finding_site"}, {"label", "finding_type"})
    site = f.get("finding_site", dict)
    return ModelClass(
        label=f.get("label", str),
        finding_type=_code(f.data["finding_type"], f.at("finding_type")),
        finding_site=None if site is None else _code(site, f.at("finding_site")),
    )


def _figure(data: Any, where: str) -> EvaluationFigure:
    f = _Fields(data, where, {"metric", "value", "dataset", "ci95", "held_out", "training_overlap"},
                {"metric", "value", "dataset"})
    ci = f.get("ci95", list)
    numbers = ci is not None and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ci)
    if ci is not None and (len(ci) != 2 or not numbers):
        raise ModelCardError(f"{f.at('ci95')}: expected [low, high], got {json.dumps(ci)}")
    held_out = f.data.get("held_out", True)
    if not isinstance(held_out, bool):
        raise ModelCardError(f"{f.at('held_out')}: expected true or false, got {json.dumps(held_out)}")
    try:
        return EvaluationFigure(
            metric=f.get("metric", str),
            value=f.number("value"),
            dataset=f.get("dataset", str),
            ci95=None if ci is None else (float(ci[0]), float(ci[1])),
            held_out=held_out,
            training_overlap=f.get("training_overlap", str, ""),
        )
    except ValueError as exc:
        raise ModelCardError(f"{where}: {exc}") from exc


def _input_spec(data: Any, where: str) -> InputSpec:
    keys = {"pixel_spacing_mm", "windows", "context_slices", "slice_step_mm", "pad_multiple"}
    f = _Fields(data, where, keys, {"pixel_spacing_mm", "windows"})
    windows = []
    for w_where, item in f.items("windows"):
        w = _Fields(item, w_where, {"centre", "width"}, {"centre", "width"})
        try:
            windows.append(HUWindow(w.number("centre"), w.number("width")))
        except ValueError as exc:
            raise ModelCardError(f"{w_where}: {exc}") from exc
    values = {
        "pixel_spacing_mm": f.number("pixel_spacing_mm"),
        "context_slices": f.get("context_slices", int, 1),
        "slice_step_mm": f.number("slice_step_mm"),
        "pad_multiple": f.get("pad_multiple", int, 32),
    }
    try:
        return InputSpec(windows=tuple(windows), **values)
    except ValueError as exc:
        raise ModelCardError(f"{where}: {exc}") from exc


def _training(data: Any, where: str) -> TrainingRecord:
    keys = {"manifest", "studies", "seeds", "samples", "iterations"}
    f = _Fields(data, where, keys, {"manifest", "studies"})
    studies = []
    for s_where, item in f.items("studies"):
        s = _Fields(item, s_where, {"id", "patient", "use", "study_instance_uid", "series_instance_uids"},
                    {"id", "patient", "use"})
        use = s.get("use", str)
        if use not in ("background", "labelled", "calibration"):
            raise ModelCardError(f"{s.at('use')}: expected background, labelled or calibration, got {use!r}")
        series = s.get("series_instance_uids", list, [])
        if not all(isinstance(u, str) for u in series):
            raise ModelCardError(f"{s.at('series_instance_uids')}: expected a list of UID strings")
        studies.append(TrainedStudy(id=s.get("id", str), patient=s.get("patient", str), use=use,
                                    study_instance_uid=s.get("study_instance_uid", str, ""),
                                    series_instance_uids=tuple(series)))
    seeds = f.get("seeds", list, [])
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds):
        raise ModelCardError(f"{f.at('seeds')}: expected a list of integers")
    return TrainingRecord(manifest=f.get("manifest", str), studies=tuple(studies), seeds=tuple(seeds),
                          samples=f.get("samples", int, 0), iterations=f.get("iterations", int, 0))


def _domain(data: Any, where: str) -> Domain:
    if data is None:
        return Domain()
    f = _Fields(data, where, {"contrast", "slice_thickness_mm", "min_coverage_mm"}, set())
    span = f.get("slice_thickness_mm", list, [0.5, 5.5])
    if len(span) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in span):
        raise ModelCardError(f"{f.at('slice_thickness_mm')}: expected [low, high], got {json.dumps(span)}")
    return Domain(contrast=f.get("contrast", str, "any"), slice_thickness_mm=(float(span[0]), float(span[1])),
                  min_coverage_mm=f.number("min_coverage_mm", 0.0))


def _second_stage(data: Any, where: str) -> SecondStage | None:
    if data is None:
        return None
    keys = {"weights", "candidate_threshold", "max_candidates", "side_mm", "voxels", "scale"}
    f = _Fields(data, where, keys, {"weights", "candidate_threshold"})
    weights = _Fields(data["weights"], f.at("weights"), {"file", "sha256"}, {"file", "sha256"})
    return SecondStage(weights_file=weights.get("file", str), weights_sha256=weights.get("sha256", str),
                       candidate_threshold=f.number("candidate_threshold"),
                       max_candidates=f.get("max_candidates", int, 200), side_mm=f.number("side_mm", 48.0),
                       voxels=f.get("voxels", int, 24), scale=f.number("scale", 1.5))


def _lineage(data: Any, where: str) -> Lineage | None:
    if data is None:
        return None
    keys = {"parent", "site_data_sha256", "split_by", "split_seed", "split"}
    f = _Fields(data, where, keys, keys)
    parent = _Fields(data["parent"], f.at("parent"), {"name", "version", "weights_sha256"},
                     {"name", "version", "weights_sha256"})
    split = _Fields(data["split"], f.at("split"), {"train", "validation", "test"}, set())
    roles = []
    for role in ("train", "validation", "test"):
        uids = split.get(role, list, [])
        if not all(isinstance(u, str) for u in uids):
            raise ModelCardError(f"{split.at(role)}: expected a list of Study Instance UIDs")
        roles.append((role, tuple(uids)))
    return Lineage(parent_name=parent.get("name", str), parent_version=parent.get("version", str),
                   parent_weights_sha256=parent.get("weights_sha256", str),
                   site_data_sha256=f.get("site_data_sha256", str), split_by=f.get("split_by", str),
                   split_seed=f.get("split_seed", int), split=tuple(roles))


def _urgency(data: Any, where: str) -> Urgency | None:
    if data is None:
        return None
    f = _Fields(data, where, {"threshold", "classes"}, {"threshold", "classes"})
    classes = []
    for c_where, item in f.items("classes"):
        c = _Fields(item, c_where, {"label", "min_size_mm"}, {"label"})
        classes.append(UrgentClass(label=c.get("label", str), min_size_mm=c.number("min_size_mm", 0.0)))
    return Urgency(threshold=f.number("threshold"), classes=tuple(classes))


def _urgency_dict(urgency: Urgency) -> dict[str, Any]:
    return {"threshold": urgency.threshold,
            "classes": [{"label": c.label, "min_size_mm": c.min_size_mm} for c in urgency.classes]}


def _lineage_dict(lineage: Lineage) -> dict[str, Any]:
    return {"parent": {"name": lineage.parent_name, "version": lineage.parent_version,
                       "weights_sha256": lineage.parent_weights_sha256},
            "site_data_sha256": lineage.site_data_sha256, "split_by": lineage.split_by,
            "split_seed": lineage.split_seed, "split": {role: list(uids) for role, uids in lineage.split}}


def _training_dict(record: TrainingRecord) -> dict[str, Any]:
    return {
        "manifest": record.manifest,
        "studies": [
            {"id": s.id, "patient": s.patient, "use": s.use, "study_instance_uid": s.study_instance_uid,
             "series_instance_uids": list(s.series_instance_uids)}
            for s in record.studies
        ],
        "seeds": list(record.seeds),
        "samples": record.samples,
        "iterations": record.iterations,
    }


_CARD_FIELDS = {
    "schema_version", "name", "version", "weights", "body_part",
    "classes", "input", "operating_threshold", "evaluation", "training", "max_findings", "domain",
    "second_stage", "anatomy", "lineage", "urgency", "context",
}


def card_from_dict(data: Any, source: str = "model card") -> ModelCard:
    """Validate a decoded JSON card; every error names ``source`` and the field's path."""
    try:
        optional = {"evaluation", "training", "max_findings", "domain", "second_stage", "anatomy", "lineage",
                    "urgency", "context"}
        f = _Fields(data, "", _CARD_FIELDS, _CARD_FIELDS - optional)
        if f.get("schema_version", int) != SCHEMA_VERSION:
            version = data["schema_version"]
            raise ModelCardError(f"schema_version: {version} is not supported, expected {SCHEMA_VERSION}")
        weights = _Fields(data["weights"], "weights", {"file", "sha256"}, {"file", "sha256"})
        return ModelCard(
            name=f.get("name", str),
            version=f.get("version", str),
            weights_file=weights.get("file", str),
            weights_sha256=weights.get("sha256", str),
            body_part=f.get("body_part", str),
            classes=tuple(_class(item, where) for where, item in f.items("classes")),
            input_spec=_input_spec(data["input"], f.at("input")),
            operating_threshold=f.number("operating_threshold"),
            evaluation=tuple(_figure(item, where) for where, item in f.items("evaluation")),
            training=None if data.get("training") is None else _training(data["training"], f.at("training")),
            max_findings=f.get("max_findings", int, 10),
            domain=_domain(data.get("domain"), f.at("domain")),
            second_stage=_second_stage(data.get("second_stage"), f.at("second_stage")),
            anatomy=f.get("anatomy", str, "none"),
            lineage=_lineage(data.get("lineage"), f.at("lineage")),
            urgency=_urgency(data.get("urgency"), f.at("urgency")),
            context=tuple(_context_name(item, where) for where, item in f.items("context")),
        )
    except ModelCardError as exc:
        raise ModelCardError(f"{source}: {exc}") from exc


def _context_name(item: Any, where: str) -> str:
    if not isinstance(item, str):
        raise ModelCardError(f"{where}: expected str, got {json.dumps(item)}")
    return item


def _code_dict(code: Code | None) -> dict[str, str] | None:
    return None if code is None else {"value": code.value, "scheme": code.scheme, "meaning": code.meaning}


def _second_stage_dict(stage: SecondStage) -> dict[str, Any]:
    return {"weights": {"file": stage.weights_file, "sha256": stage.weights_sha256},
            "candidate_threshold": stage.candidate_threshold, "max_candidates": stage.max_candidates,
            "side_mm": stage.side_mm, "voxels": stage.voxels, "scale": stage.scale}


def card_to_dict(card: ModelCard) -> dict[str, Any]:
    """The card as the JSON object ``card_from_dict`` reads."""
    spec = card.input_spec
    return {
        "schema_version": SCHEMA_VERSION,
        "name": card.name,
        "version": card.version,
        "weights": {"file": card.weights_file, "sha256": card.weights_sha256},
        "body_part": card.body_part,
        "classes": [
            {"label": c.label, "finding_type": _code_dict(c.finding_type), "finding_site": _code_dict(c.finding_site)}
            for c in card.classes
        ],
        "input": {
            "pixel_spacing_mm": spec.pixel_spacing_mm,
            "windows": [{"centre": w.centre, "width": w.width} for w in spec.windows],
            "context_slices": spec.context_slices,
            "slice_step_mm": spec.slice_step_mm,
            "pad_multiple": spec.pad_multiple,
        },
        "operating_threshold": card.operating_threshold,
        "max_findings": card.max_findings,
        "anatomy": card.anatomy,
        "domain": {"contrast": card.domain.contrast, "slice_thickness_mm": list(card.domain.slice_thickness_mm),
                   "min_coverage_mm": card.domain.min_coverage_mm},
        "evaluation": [
            {
                "metric": e.metric,
                "value": e.value,
                "dataset": e.dataset,
                "ci95": None if e.ci95 is None else list(e.ci95),
                **({} if e.held_out else {"held_out": False, "training_overlap": e.training_overlap}),
            }
            for e in card.evaluation
        ],
        **({} if card.training is None else {"training": _training_dict(card.training)}),
        **({} if card.second_stage is None else {"second_stage": _second_stage_dict(card.second_stage)}),
        **({} if card.lineage is None else {"lineage": _lineage_dict(card.lineage)}),
        **({} if card.urgency is None else {"urgency": _urgency_dict(card.urgency)}),
        **({"context": list(card.context)} if card.context else {}),
    }


def load_card(path: Path) -> ModelCard:
    """Read and validate a model card JSON file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise ModelCardError(f"model card {path}: not valid JSON ({where})") from exc
    except UnicodeDecodeError as exc:
        raise ModelCardError(f"model card {path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    return card_from_dict(data, source=f"model card {path}")


def save_card(card: ModelCard, path: Path) -> None:
    """Write the card as indented JSON, atomically (temp file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        json.dump(card_to_dict(card), out, indent=2)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
