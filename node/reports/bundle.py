"""The report stage of a run: build all its objects (SR, SCs, optional GSPS and KOS) from one prepared input and
write them to a folder, returning what the audit and the outbox record about each."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import structlog
from pydicom.dataset import Dataset

from node.events import OutputKind
from node.reports.gsps import build_gsps
from node.reports.kos import build_kos
from node.reports.options import ReportOptions, ReportRun
from node.reports.prepared import PreparedReport
from node.reports.sc import build_not_analysed_page, build_secondary_captures
from node.reports.sr import build_not_analysed_sr, build_sr
from node.storage.durable import fsync_dir, fsync_file
from node.storage.objects import OutputObject

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ReportObjects:
    """The DICOM objects a run sends to the PACS; GSPS and KOS are None when disabled or without findings.

    ``omissions``: what the objects leave out or empty because the source images lack it (for the audit).
    """

    sr: Dataset
    secondary_captures: tuple[Dataset, ...]
    gsps: Dataset | None = None
    kos: Dataset | None = None
    omissions: tuple[str, ...] = ()

    def named(self) -> list[tuple[str, OutputKind, Dataset]]:
        """(file name, kind, object) in sending order: SR, SCs (summary last), GSPS, KOS."""
        items = [("sr.dcm", OutputKind.SR, self.sr)]
        items += [(f"sc-{n + 1:03d}.dcm", OutputKind.SC, sc) for n, sc in enumerate(self.secondary_captures)]
        if self.gsps is not None:
            items.append(("gsps.dcm", OutputKind.GSPS, self.gsps))
        if self.kos is not None:
            items.append(("kos.dcm", OutputKind.KOS, self.kos))
        return items


def build_report_objects(run: ReportRun, options: ReportOptions) -> ReportObjects:
    """Every object the run emits under ``options``; the same run and options always give the same bytes."""
    report = PreparedReport.of(run, options)
    with_findings = bool(run.findings)
    objects = ReportObjects(
        sr=build_sr(report),
        secondary_captures=tuple(build_secondary_captures(report)),
        gsps=build_gsps(report) if options.enable_gsps and with_findings else None,
        kos=build_kos(report) if options.enable_kos and with_findings else None,
        omissions=report.series.omissions,
    )
    log.info("report objects built", run_id=run.run_id, findings=len(run.findings),
             objects=[name for name, _, _ in objects.named()])
    return objects


def build_not_analysed_objects(run: ReportRun, options: ReportOptions, reason: str) -> ReportObjects:
    """The SR and the SC page that say the study was not analysed and why (``run`` has no findings; its sources
    are the series the model was to read)."""
    report = PreparedReport.of(run, options)
    return ReportObjects(sr=build_not_analysed_sr(report, reason), secondary_captures=(build_not_analysed_page(
        report, reason),), omissions=report.series.omissions)


def write_report_objects(objects: ReportObjects, folder: Path) -> list[OutputObject]:
    """Write each object as a DICOM Part 10 file under ``folder`` (created), atomically and durably."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, kind, dataset in objects.named():
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        path = folder / name
        partial = folder / f".{name}.partial"
        partial.write_bytes(data)
        fsync_file(partial)
        os.replace(partial, path)
        written.append(OutputObject(
            path=path.resolve(), kind=kind, sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=str(dataset.SOPInstanceUID), series_instance_uid=str(dataset.SeriesInstanceUID),
            study_instance_uid=str(dataset.StudyInstanceUID),
            transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID), sha256=hashlib.sha256(data).hexdigest(),
        ))
    fsync_dir(folder)
    log.info("report objects written", folder=str(folder), files=len(written))
    return written


def report_stage(run: ReportRun, options: ReportOptions, folder: Path) -> tuple[ReportObjects, list[OutputObject]]:
    """The report stage, as the worker and ``ctnode detect --dicom`` run it: build every object, write them."""
    objects = build_report_objects(run, options)
    return objects, write_report_objects(objects, folder)
