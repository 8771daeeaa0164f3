"""The training config (YAML; examples in configs/): identity, target, architecture, data, schedule, augmentation."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from detector.data.yamlfile import read_yaml
from detector.models import DetectorConfig
from detector.train.targets import TARGETS, TargetSpec

_FROM_TARGET = ("in_channels", "num_classes")


class TrainConfigError(ValueError):
    """A training config cannot be used; the message is one line naming the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Data(_Section):
    """Which studies the samples come from, how many samples, and the seed of everything random."""

    manifest: Path | None = None
    """The dataset manifest; none when the data comes from a node (``site``)."""
    backgrounds: tuple[str, ...] | None = None
    """Manifest ids of train studies; default: every train study of the target's body part (or of none)."""
    pool: int | None = Field(None, gt=0)
    negatives: float = Field(0.25, ge=0.0, le=1.0)
    seed: int = 0


class Schedule(_Section):
    """How long and how to train; ``iterations`` or ``budget_s``, whichever ends first."""

    iterations: int = Field(20000, gt=0)
    budget_s: float = Field(1440.0, gt=0.0)
    batch: int = Field(8, gt=0)
    crop_px: int | None = Field(None, gt=0, multiple_of=32)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    threads: int = Field(1, gt=0)
    """CPU threads (when there is no CUDA device)."""
    checkpoint_every_s: float = Field(120.0, ge=0.0)
    """Seconds between checkpoints; 0: after every iteration."""


class Augmentation(_Section):
    """Per-crop augmentation, in HU on the windowed channels (saturated pixels and padding stay as they are)."""

    flips: bool = True
    hu_noise_sigma: tuple[float, float] | None = None
    """Gaussian noise whose sigma (HU) is drawn uniformly from this range per crop; None: off."""
    intensity_scale: float = Field(0.0, ge=0.0, lt=1.0)
    """HU scaled by a factor drawn from [1 - s, 1 + s] per crop; 0: off."""
    intensity_offset_hu: float = Field(0.0, ge=0.0)
    """HU shifted by an offset drawn from [-o, o] per crop; 0: off."""

    @field_validator("hu_noise_sigma")
    @classmethod
    def _range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0.0 <= value[0] <= value[1]:
            raise PydanticCustomError("sigma_range", "expected [low, high] with 0 <= low <= high, got {value}",
                                      {"value": list(value)})
        return value


class Evaluation(_Section):
    """The operating point: the lowest threshold with at most ``fp_per_scan`` false positives per validation scan
    (the manifest's validation studies and the synthetic sets over them)."""

    fp_per_scan: float = Field(1.0, gt=0.0)


class SiteSource(_Section):
    """Fine-tune on a node's own reviewed studies (read by `ctnode train`, which knows the node): its studies with
    lesion-level feedback, split by patient (hashed Patient ID; by study when patients are unknown) into train,
    validation and test with ``split_seed``; the test part is never trained on. Nothing leaves the node."""

    config: Path | None = None
    """The node's config YAML (relative to this file): its database and store."""
    database_url: str | None = None
    store_dir: Path | None = None
    since: datetime | None = None
    until: datetime | None = None
    body_part: str | None = None
    """Default: the target's body part."""
    parent: str | None = None
    """The card to fine-tune (a shipped name or a card path); default: the live model of the node's route for
    the body part."""
    fractions: tuple[float, float, float] = (0.5, 0.15, 0.35)
    """Shares of the patients (or studies) in train, validation and test."""
    split_seed: int = 0
    synthetic: float = Field(0.25, ge=0.0, le=1.0)
    """Share of the pool with synthetic lesions inserted into the site's train studies (their own lesions
    ignored); the rest are slices of the train studies with their reviewed lesions as boxes."""
    hard_negatives: float = Field(0.5, ge=0.0, le=1.0)
    """Share of the lesion-free samples taken on the slices of findings readers rejected."""

    @model_validator(mode="after")
    def _where(self) -> SiteSource:
        if (self.config is None) == (self.database_url is None):
            raise PydanticCustomError("site", "site: give config (the node's YAML) or database_url and store_dir")
        if self.database_url is not None and self.store_dir is None:
            raise PydanticCustomError("site", "site: database_url needs store_dir (the node's store)")
        if any(f < 0 for f in self.fractions) or self.fractions[0] <= 0 or abs(sum(self.fractions) - 1) > 1e-6:
            raise PydanticCustomError("site", "site.fractions: three shares (train, validation, test) summing to 1, "
                                      "train above 0; got {f}", {"f": list(self.fractions)})
        return self


class SecondStageConfig(_Section):
    """Train only a second stage over an existing detector: its candidates mined on the train studies (and the
    manifest's synthetic sets over them), then a patch network fitted to them (see detector/refine)."""

    first_stage: str
    """The detector's card: a path relative to the config, or a shipped model's name."""
    mine_roles: tuple[Literal["train", "validation"], ...] = ("train",)
    """Whose studies (and synthetic sets) give the candidates: the train studies (``data.backgrounds``), and with
    "validation" the validation studies too (hard negatives from more scanners; the threshold is then chosen on
    studies the second stage saw, and only the test figures are held out)."""
    candidate_threshold: float = Field(0.1, gt=0.0, lt=1.0)
    max_candidates: int = Field(200, gt=0)
    side_mm: float = Field(48.0, gt=0.0)
    voxels: int = Field(24, ge=8)
    scale: float = Field(1.5, gt=0.0)
    iterations: int = Field(500, gt=0)
    batch: int = Field(48, ge=3)
    lr: float = Field(2e-3, gt=0.0)


class TrainConfig(_Section):
    """One training run: the model's identity, its target and architecture, data, schedule and evaluation."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    target: Literal["head", "chest"]
    architecture: dict[str, Any] = Field(default_factory=dict)
    data: Data
    schedule: Schedule = Field(default_factory=Schedule)
    augmentation: Augmentation = Field(default_factory=Augmentation)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    second_stage: SecondStageConfig | None = None
    site: SiteSource | None = None

    @property
    def spec(self) -> TargetSpec:
        return TARGETS[self.target]

    def detector_config(self) -> DetectorConfig:
        """The network: the defaults, ``architecture`` over them, channels and classes from the target."""
        spec = self.spec
        values = {**self.architecture, "in_channels": spec.input_spec.channels, "num_classes": len(spec.classes)}
        return TypeAdapter(DetectorConfig).validate_python(values)

    @model_validator(mode="after")
    def _source(self) -> TrainConfig:
        if (self.data.manifest is None) == (self.site is None):
            raise PydanticCustomError("data", "give data.manifest (a dataset) or site (a node's reviewed studies)")
        if self.site is not None and self.second_stage is not None:
            raise PydanticCustomError("site", "site fine-tunes a detector; second_stage is not supported with it")
        return self

    @model_validator(mode="after")
    def _architecture(self) -> TrainConfig:
        known = {f.name for f in fields(DetectorConfig)} - set(_FROM_TARGET)
        unknown = sorted(set(self.architecture) - known)
        if unknown:
            raise PydanticCustomError("architecture", "architecture: unknown field(s) {unknown}; known: {known}",
                                      {"unknown": unknown, "known": ", ".join(sorted(known))})
        try:
            self.detector_config()
        except ValidationError as exc:
            raise PydanticCustomError("architecture", "{detail}", {"detail": _describe(exc, "architecture")}) from exc
        return self


def _describe(exc: ValidationError, prefix: str = "") -> str:
    """Every error of ``exc`` on one line: ``field.path: message``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in (prefix, *error["loc"]) if p != "")
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def load_train_config(path: Path) -> TrainConfig:
    """Read and validate a training config; ``data.manifest`` comes back resolved against the file's folder."""
    path = Path(path)
    try:
        data = read_yaml(path)
    except ValueError as exc:
        raise TrainConfigError(str(exc)) from exc
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: expected a mapping of name, version, target, data, ...")
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise TrainConfigError(f"{path}: {_describe(exc)}") from exc
    if config.site is not None:
        site = config.site
        update = {k: (path.parent / v).resolve() for k, v in (("config", site.config), ("store_dir", site.store_dir))
                  if v is not None}
        return config.model_copy(update={"site": site.model_copy(update=update)})
    assert config.data.manifest is not None
    manifest = (path.parent / config.data.manifest).resolve()
    return config.model_copy(update={"data": config.data.model_copy(update={"manifest": manifest})})
