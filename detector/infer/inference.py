"""Inference engine: a whole series through the network in bounded slice batches, CPU or CUDA (autocast)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.progress import Progress

from detector.findings import Finding
from detector.infer.gate import OutOfDomainError, domain_reasons
from detector.infer.models import LoadedModel
from detector.io import SelectionPolicy, SeriesSelection, Volume, read_ct_volume
from detector.postprocess import SliceDetection, decode_slice, merge_findings
from detector.preprocess import model_input
from detector.preprocess.regions import AnatomyMask, anatomy_mask
from detector.refine import refined

CANDIDATE_FRACTION = 0.5
"""Per-slice boxes down to this fraction of the operating threshold may extend a finding whose peak passes it."""


class InferenceCancelled(Exception):
    """The caller's ``should_stop`` asked the inference to stop between two slice batches."""


@dataclass(frozen=True)
class InferenceOptions:
    """How to run: slices per batch (bounds memory), device (default CUDA when present), CPU threads, progress bar.

    ``threads`` None keeps torch's setting (one per core); a number applies during the run only.
    ``should_stop``: asked before each slice batch; True stops the inference with ``InferenceCancelled``
    (a lower-priority run making way for a more urgent one).
    """

    batch_slices: int = 8
    device: torch.device | None = None
    threads: int | None = None
    progress: bool = False
    should_stop: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        if self.batch_slices < 1:
            raise ValueError(f"batch_slices must be >= 1, got {self.batch_slices}")


@dataclass(frozen=True, eq=False)
class DetectionResult:
    """What one run of the detector on a study produced, and what it read.

    ``dropped``: findings past the operating threshold that the per-study cap left out (lowest scores).
    """

    findings: list[Finding]
    volume: Volume
    selection: SeriesSelection
    model: LoadedModel
    dropped: list[Finding] = field(default_factory=list)


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` intra-op CPU threads (None: torch's default), restoring the previous setting."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def default_device() -> torch.device:
    """CUDA when a device is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def slice_detections(
    volume: Volume, model: LoadedModel, options: InferenceOptions | None = None, floor: float | None = None
) -> list[SliceDetection]:
    """Every slice's NMS-ed detections (source pixels) down to ``floor`` (default: the candidate score).

    Only ``batch_slices`` inputs are built and on the device at a time; on CUDA each batch is copied
    from pinned memory and the network runs under float16 autocast. The model's network is moved to the
    device. A lower ``floor`` lets an evaluation apply :func:`findings_at` at every threshold from one pass.
    On the CPU the network runs in channels-last memory format: about 30% less time on the chest series and 18% on
    the head's, with scores that agree with the contiguous layout's to 1e-5.
    """
    options = options or InferenceOptions()
    device = options.device or default_device()
    batch_slices = options.batch_slices
    card = model.card
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    network = model.network.to(device, memory_format=layout)
    threshold = candidate_threshold(model) * CANDIDATE_FRACTION if floor is None else floor
    depth = volume.geometry.shape[0]
    out: list[SliceDetection] = []
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()
    bar = Progress(disable=not options.progress, transient=True)
    with _threads(options.threads), torch.no_grad(), autocast, bar:
        task = bar.add_task("detecting", total=depth)
        for start in range(0, depth, batch_slices):
            if options.should_stop is not None and options.should_stop():
                raise InferenceCancelled(f"stopped by the caller after {start} of {depth} slices")
            batch = model_input(volume, range(start, min(start + batch_slices, depth)), card.input_spec)
            images = batch.images.contiguous(memory_format=layout)
            if device.type == "cuda":
                images = images.pin_memory().to(device, non_blocking=True)
            logits, deltas = network(images)
            anchors = network.anchors(*images.shape[-2:]).to(device)
            for k, index in enumerate(batch.slice_indices):
                det = decode_slice(logits[k], deltas[k], anchors, threshold)
                boxes = batch.mapping.box_to_source(det.boxes.cpu().numpy())
                out += [
                    SliceDetection(index, (float(b[0]), float(b[1]), float(b[2]), float(b[3])), float(s), int(c))
                    for b, s, c in zip(boxes, det.scores.cpu().tolist(), det.labels.cpu().tolist(), strict=True)
                ]
            bar.advance(task, len(batch.slice_indices))
    return out


def candidate_threshold(model: LoadedModel) -> float:
    """The first-stage score a finding's peak needs: the second stage's candidate threshold when the model has one,
    else the operating threshold."""
    return model.refiner.candidate_threshold if model.refiner else model.card.operating_threshold


def region(volume: Volume, model: LoadedModel, anatomy: str | None = None) -> AnatomyMask | None:
    """The mask the findings must be centred in: ``anatomy`` (default the card's); None when that is "none"."""
    return anatomy_mask(volume, anatomy or model.card.anatomy)


def _merged(detections: Sequence[SliceDetection], volume: Volume, model: LoadedModel, threshold: float,
            mask: AnatomyMask | None) -> list[Finding]:
    """First-stage 3D findings whose peak reaches ``threshold`` and whose centre lies in ``mask`` (if any); boxes
    down to ``CANDIDATE_FRACTION`` of it may extend them."""
    candidates = [d for d in detections if d.score >= threshold * CANDIDATE_FRACTION]
    found = merge_findings(candidates, volume.geometry, model.card.classes, threshold)
    if mask is None or not found:
        return found
    inside = mask.contains(volume.geometry.patient_to_voxel([f.centre_mm for f in found]))
    return [f for f, keep in zip(found, inside, strict=True) if keep]


def scored_findings(detections: Sequence[SliceDetection], volume: Volume, model: LoadedModel,
                    device: torch.device | None = None, mask: AnatomyMask | None = None) -> list[Finding] | None:
    """With a second stage, every candidate (in ``mask``, if any) with its final score, best first (a threshold
    then only filters); None for a one-stage model, whose findings depend on the threshold they are merged at."""
    if model.refiner is None:
        return None
    candidates = _merged(detections, volume, model, model.refiner.candidate_threshold, mask)
    return refined(model.refiner, volume, candidates, device)


def findings_at(
    detections: Sequence[SliceDetection], volume: Volume, model: LoadedModel, threshold: float | None = None,
    scored: list[Finding] | None = None, mask: AnatomyMask | None = None,
) -> list[Finding]:
    """The 3D findings the node reports at ``threshold`` (default: the card's operating threshold), best first.

    One-stage model: boxes down to ``CANDIDATE_FRACTION`` of the threshold may extend a finding whose peak reaches
    it. Two-stage model: the candidates whose second-stage score reaches it (``scored``, from
    :func:`scored_findings`, saves re-scoring at every threshold). Either way only findings centred in ``mask``
    (the card's anatomy, from :func:`region`) are kept.
    """
    threshold = model.card.operating_threshold if threshold is None else threshold
    if model.refiner is None:
        return _merged(detections, volume, model, threshold, mask)
    scored = scored if scored is not None else scored_findings(detections, volume, model, mask=mask)
    return [f for f in scored or [] if f.score >= threshold]


def capped(findings: list[Finding], limit: int) -> tuple[list[Finding], list[Finding]]:
    """(the ``limit`` best findings, the rest): the per-study cap on what is reported."""
    return findings[:limit], findings[limit:]


def detect_volume(
    volume: Volume, model: LoadedModel, options: InferenceOptions | None = None, max_findings: int | None = None,
    anatomy: str | None = None,
) -> tuple[list[Finding], list[Finding]]:
    """(3D findings in ``volume`` at the card's operating threshold, centred in ``anatomy`` (default the card's),
    best first, at most ``max_findings`` (default the card's), the findings the cap dropped)."""
    options = options or InferenceOptions()
    mask = region(volume, model, anatomy)
    detections = slice_detections(volume, model, options)
    scored = scored_findings(detections, volume, model, options.device or default_device(), mask)
    found = findings_at(detections, volume, model, scored=scored, mask=mask)
    return capped(found, max_findings or model.card.max_findings)


def detect_series(
    source: Path | Iterable[Path],
    model: LoadedModel,
    policy: SelectionPolicy | None = None,
    options: InferenceOptions | None = None,
    max_findings: int | None = None,
    gate: bool = True,
    anatomy: str | None = None,
) -> DetectionResult:
    """The whole detect stage: select and load the series to read from ``source``, check it is in the model's
    domain (``OutOfDomainError`` with the reasons when not; ``gate`` False skips the check), find its findings
    (at most ``max_findings``, default the card's; centred in ``anatomy``, default the card's)."""
    volume, selection = read_ct_volume(source, policy)
    if gate and (reasons := domain_reasons(volume, model.card)):
        raise OutOfDomainError(reasons, volume.headers)
    findings, dropped = detect_volume(volume, model, options, max_findings, anatomy)
    return DetectionResult(findings, volume, selection, model, dropped)
