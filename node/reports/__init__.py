"""Report stage: the DICOM objects (TID 1500 SR, Secondary Capture, GSPS, KOS) a run sends back to the PACS."""

from node.events import OutputKind
from node.reports.bundle import (
    ReportObjects,
    build_not_analysed_objects,
    build_report_objects,
    report_stage,
    write_report_objects,
)
from node.reports.gsps import build_gsps
from node.reports.kos import build_kos
from node.reports.options import (
    AlgorithmIdentity,
    EarlierReport,
    ReportOptions,
    ReportRun,
)
from node.reports.prepared import PreparedReport
from node.reports.sc import build_secondary_captures
from node.reports.sr import build_sr
from node.reports.uids import Part, RunUids, derive_uid
from node.storage.objects import OutputObject

__all__ = [
    "AlgorithmIdentity",
    "EarlierReport",
    "OutputKind",
    "OutputObject",
    "Part",
    "PreparedReport",
    "ReportObjects",
    "ReportOptions",
    "ReportRun",
    "RunUids",
    "build_gsps",
    "build_kos",
    "build_not_analysed_objects",
    "build_report_objects",
    "build_secondary_captures",
    "build_sr",
    "derive_uid",
    "report_stage",
    "write_report_objects",
]
