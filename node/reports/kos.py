"""The optional Key Object Selection: the key slices of the run's findings, flagged for the reader."""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes

from node.reports.captions import key_slice
from node.reports.prepared import PreparedReport
from node.reports.sources import no_identifier_warnings
from node.events import OutputKind

KOS_SERIES_DESCRIPTION = "AI key slices (not for diagnosis)"


@no_identifier_warnings()
def build_kos(report: PreparedReport) -> hd.ko.KeyObjectSelectionDocument:
    """A KOS titled "Of Interest" listing each finding's key slice once; ValueError for a run without findings."""
    series, options, run = report.series, report.options, report.run
    if not run.findings:
        raise ValueError("a key object selection needs at least one finding whose key slice it selects")
    key_uids = list(dict.fromkeys(key_slice(f).sop_instance_uid for f in run.findings))
    keys = series.headers(key_uids)
    content = hd.ko.KeyObjectSelection(
        document_title=codes.cid7010.OfInterest,
        referenced_objects=keys,
        description=f"Key slices of {len(run.findings)} {run.algorithm.name} finding(s); {options.banner_text}"[:1024],
    )
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=keys,
        content=content,
        **report.identity(OutputKind.KOS),
        institution_name=options.institution_name,
        institutional_department_name=options.institutional_department_name,
        series_description=KOS_SERIES_DESCRIPTION,
    )
    for item in document.ContentSequence:
        if item.ValueType == "IMAGE" and "ConceptNameCodeSequence" in item:
            del item.ConceptNameCodeSequence  # TID 2010 forbids a concept name on the selected IMAGE items
    report.stamp(document)
    return document
