"""`ctnode detect PATH`: run a model on a folder of DICOM files, print the findings, write overlays and DICOM objects."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Optional

import pydicom
import typer
from PIL import Image
from rich.console import Console
from rich.table import Table

from detector.findings import Finding
from detector.infer import (
    DetectionResult,
    InferenceOptions,
    LoadedModel,
    OutOfDomainError,
    card_path,
    detect_series,
    domain_reasons,
    load_model,
)
from detector.infer.gate import read_pixels, sampled_files
from detector.io import InstanceHeader, SeriesInputError, read_headers
from detector.registry import ModelCardError
from node.cli.common import ConfigOpt, settings_from
from node.config import ReportOptions, Route
from node.pipeline.routing import RoutingDecision, SeriesFacts, route_study
from node.reports import report_stage
from node.reports.captions import finding_caption, key_slice
from node.reports.from_detection import options_for, report_run
from node.reports.options import DEFAULT_BANNER
from node.reports.render import DrawnBox, render_slice, windowed_gray

console = Console()


def findings_table(result: DetectionResult) -> Table:
    """One row per finding: label, score, centre and size in patient mm, slices and key slice."""
    card = result.model.card
    table = Table(title=f"{len(result.findings)} finding(s), {card.name} {card.version}, "
                        f"threshold {card.operating_threshold:.3f}")
    for column in ("#", "label", "score", "centre LPS (mm)", "size (mm)", "slices", "key slice"):
        table.add_column(column, justify="right" if column in ("#", "score") else "left")
    for n, f in enumerate(result.findings):
        z0, z1 = f.voxel_box[0], f.voxel_box[3]
        table.add_row(
            str(n + 1), f.label, f"{f.score:.3f}",
            ", ".join(f"{v:.1f}" for v in f.centre_mm), " x ".join(f"{v:.1f}" for v in f.size_mm),
            f"{z0}-{z1 - 1} ({len(f.slices)})", key_slice(f).sop_instance_uid,
        )
    return table


def write_overlays(result: DetectionResult, out: Path) -> list[Path]:
    """One PNG per finding: its key slice in the model's first window, every finding's box on that slice drawn."""
    out.mkdir(parents=True, exist_ok=True)
    window = result.model.card.input_spec.windows[0]
    uids = result.volume.geometry.sop_instance_uids
    footer = f"ctnode {result.model.card.name} {result.model.card.version}"
    written = []
    for n, finding in enumerate(result.findings):
        key = key_slice(finding).sop_instance_uid
        boxes = [
            DrawnBox(box.box_px, finding_caption(m, other))
            for m, other in enumerate(result.findings) for box in other.slices if box.sop_instance_uid == key
        ]
        gray = windowed_gray(result.volume.hu[uids.index(key)], window.centre, window.width)
        path = out / f"finding-{n + 1:03d}-{_safe(finding)}.png"
        Image.fromarray(render_slice(gray, boxes, DEFAULT_BANNER, footer)).save(path)
        written.append(path)
    return written


def _safe(finding: Finding) -> str:
    return "".join(c if c.isalnum() else "_" for c in finding.label)


def detection_run_id(result: DetectionResult) -> str:
    """A run id for a command-line detection: the same series and model weights always give the same UIDs."""
    card = result.model.card
    key = "\n".join([result.volume.series_instance_uid, card.weights_sha256, *result.volume.geometry.sop_instance_uids])
    return "detect-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def write_dicom(result: DetectionResult, options: ReportOptions, out: Path) -> list[Path]:
    """Every object the node would send to the PACS for this detection (SR, SCs, optional GSPS/KOS) under ``out``."""
    objects, written = report_stage(report_run(result, detection_run_id(result)),
                                    options_for(result.model.card, options), out)
    for omission in objects.omissions:
        console.print(f"[yellow]left out:[/yellow] {omission}")
    return [w.path for w in written]


def series_facts(headers: Sequence[InstanceHeader]) -> tuple[list[SeriesFacts], dict[str, list[Path]]]:
    """What routing looks at in each series of a folder (read from the first file of each), and each series' files."""
    files: dict[str, list[Path]] = {}
    for h in headers:
        files.setdefault(h.series_instance_uid, []).append(h.path)
    facts = []
    for uid, paths in files.items():
        ds = pydicom.dcmread(paths[0], stop_before_pixels=True, specific_tags=list(_ROUTING_TAGS))
        facts.append(SeriesFacts(uid, _int(ds.get("SeriesNumber")), ds.get("Modality"), ds.get("BodyPartExamined"),
                                 ds.get("SeriesDescription"), ds.get("StudyDescription"), frozenset()))
    return facts, files


_ROUTING_TAGS = ("SeriesNumber", "Modality", "BodyPartExamined", "SeriesDescription", "StudyDescription")


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _route(path: Path, routes: Sequence[Route]) -> tuple[RoutingDecision, dict[str, list[Path]]]:
    headers = read_headers(path).headers
    facts, files = series_facts(headers)

    def pixels(series: SeriesFacts) -> tuple[str | None, str]:
        reading = read_pixels(sampled_files([h for h in headers if h.series_instance_uid == series.series_instance_uid]))
        return reading.body_part, reading.evidence

    return route_study(routes, facts, pixels), files


def _chosen_runs(path: Path, model: str | None, routes: Sequence[Route]) -> list[tuple[str, Path | list[Path]]]:
    """(model, what it reads) as the node would route the folder; ``model`` overrides, with a warning when routing
    would have chosen otherwise. Exit 1 when no route applies and no model was named."""
    chosen = card_path(model) if model is not None else None
    decision, files = _route(path, routes)
    if model is not None:
        routed = [r.model for r in decision.routed]
        if chosen not in {card_path(r) for r in routed}:
            console.print(f"[yellow]warning:[/yellow] the node would not run {model} on this study "
                          f"({'it routes it to ' + ', '.join(routed) if routed else 'no route applies'}); "
                          "running it because -m says so")
            for line in decision.explain():
                console.print(f"  {line}")
        return [(model, path)]
    for line in decision.explain():
        console.print(line)
    if not decision.routed:
        console.print("[red]cannot detect:[/red] no route applies to this study (the node would skip it); "
                      "name a model with -m to run one anyway")
        raise typer.Exit(1)
    return [(r.model, [p for uid in r.series_instance_uids for p in files[uid]]) for r in decision.routed]


def detect(
    path: Annotated[Path, typer.Argument(help="Folder (or file) of DICOM instances of one study.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Shipped model (head, chest) or a card JSON; "
                                                 "default: the model the node's routes choose.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for overlay PNGs.")] = None,
    dicom: Annotated[bool, typer.Option("--dicom", help="Also write, under OUT/dicom, every DICOM object the node "
                                                        "would send to the PACS (SR, SC, optional GSPS/KOS).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Find focal findings in the series a radiologist would read, with the model the node would route it to."""
    if dicom and out is None:
        console.print("[red]--dicom needs --out DIR[/red]")
        raise typer.Exit(2)
    settings = settings_from(config)
    try:
        runs = _chosen_runs(path, model, settings.pipeline.routes)
        for name, source in runs:
            folder = out if out is None or len(runs) == 1 else out / card_path(name).stem
            _detect_one(source, load_model(name), folder, dicom, settings.reports, forced=model is not None)
    except OutOfDomainError as exc:
        console.print(f"[red]refused by the model's domain gate[/red] (the node would skip this run): {exc}; "
                      "name the model with -m to read it anyway")
        raise typer.Exit(1) from exc
    except (SeriesInputError, ModelCardError, LookupError) as exc:
        console.print(f"[red]cannot detect:[/red] {exc}")
        raise typer.Exit(1) from exc


def _detect_one(source: Path | list[Path], loaded: LoadedModel, out: Path | None, dicom: bool,
                report_options: ReportOptions, forced: bool) -> None:
    """One model on one source; ``forced`` (the user named the model) reads past the domain gate, with a warning."""
    result = detect_series(source, loaded, options=InferenceOptions(progress=True), gate=not forced)
    if forced and (reasons := domain_reasons(result.volume, loaded.card)):
        console.print(f"[yellow]warning:[/yellow] the model's domain gate would refuse this series "
                      f"({'; '.join(reasons)}); reading it because -m says so")
    for line in result.selection.reasons:
        console.print(line)
    console.print(findings_table(result))
    if result.dropped:
        console.print(f"[yellow]{len(result.dropped)} more finding(s) passed the threshold[/yellow] and were left out: "
                      f"at most {len(result.findings)} per study are reported (the model card's max_findings)")
    if out is not None:
        for written in write_overlays(result, out):
            console.print(f"wrote {written}")
    if dicom and out is not None:
        for written in write_dicom(result, report_options, out / "dicom"):
            console.print(f"wrote {written}")
