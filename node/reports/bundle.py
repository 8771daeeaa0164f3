"""All objects of one run in one place: build them (SR, SCs, optional GSPS and KOS) and write them to a folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydicom.dataset import Dataset

from node.storage.durable import fsync_dir, fsync_file
from node.reports.gsps import build_gsps
from node.reports.kos import build_kos
from node.reports.options import ReportOptions, ReportRun
from node.reports.sc import build_secondary_captures
from node.reports.sources import SourceSeries
from node.reports.sr import build_sr

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

    def named(self) -> list[tuple[str, Dataset]]:
        """(file name, object) pairs in sending order: SR, SCs (summary last), GSPS, KOS."""
        pairs = [("sr.dcm", self.sr)]
        pairs += [(f"sc-{n + 1:03d}.dcm", sc) for n, sc in enumerate(self.secondary_captures)]
        if self.gsps is not None:
            pairs.append(("gsps.dcm", self.gsps))
        if self.kos is not None:
            pairs.append(("kos.dcm", self.kos))
        return pairs


def build_report_objects(run: ReportRun, options: ReportOptions) -> ReportObjects:
    """Every object the run emits under ``options``; the same run and options always give the same UIDs."""
    with_findings = bool(run.findings)
    objects = ReportObjects(
        sr=build_sr(run, options),
        secondary_captures=tuple(build_secondary_captures(run, options)),
        gsps=build_gsps(run, options) if options.enable_gsps and with_findings else None,
        kos=build_kos(run, options) if options.enable_kos and with_findings else None,
        omissions=SourceSeries(run.sources).omissions,
    )
    log.info(
        "report objects built",
        run_id=run.run_id,
        findings=len(run.findings),
        objects=[name for name, _ in objects.named()],
    )
    return objects


def write_report_objects(objects: ReportObjects, folder: Path) -> list[Path]:
    """Write each object as a DICOM Part 10 file under ``folder`` (created), atomically and durably; the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, dataset in objects.named():
        path = folder / name
        partial = folder / f".{name}.partial"
        dataset.save_as(partial, enforce_file_format=True)
        fsync_file(partial)
        os.replace(partial, path)
        paths.append(path)
    fsync_dir(folder)
    log.info("report objects written", folder=str(folder), files=len(paths))
    return paths
