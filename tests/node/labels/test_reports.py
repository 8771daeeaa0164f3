"""Reports as records: matched by Study Instance UID or accession number, superseded, refused, audited;
and the report text of DICOM text SRs."""

from __future__ import annotations

from collections.abc import Callable

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from node.config import DEFAULT_UID_ROOT
from node.db.schema import AuditEvent, PatientIdentifier, ReportLabel, StudyReport
from node.events import AuditKind, ReportLabelValue, ReportSource
from node.labels.radiology_reports import (
    BASIC_TEXT_SR,
    ENHANCED_SR,
    IncomingReport,
    list_reports,
    record_report,
    report_text_from_sr,
    study_labels,
)

HEAD_UID = "1.2.826.0.1.3680043.8.498.101"
CHEST_UID = "1.2.826.0.1.3680043.8.498.102"
TEXT = "FINDINGS: No acute intracranial haemorrhage. Incidental 5 mm nodule at the left lung apex."


def _report(**fields: object) -> IncomingReport:
    return IncomingReport(**{"text": TEXT, "source": ReportSource.HL7, "control_id": "MSG0001",
                             "result_status": "F", **fields})  # type: ignore[arg-type]


def _audits(engine: Engine, kind: AuditKind) -> list[AuditEvent]:
    with engine.connect() as conn:
        return list(conn.execute(select(AuditEvent).where(AuditEvent.kind == str(kind)).order_by(AuditEvent.id)))


def test_an_accession_number_matches_its_study_and_the_labels_are_stored(
        engine: Engine, add_study: Callable[..., int]) -> None:
    study = add_study(HEAD_UID, "ACC-1001", "DOE^JANE")
    recorded = record_report(engine, _report(accession_numbers=["", "ACC-1001"], identifiers=["MRN-77", "DOE^JANE"]))
    assert (recorded.study_id, recorded.study_instance_uid, recorded.refused) == (study, HEAD_UID, None)
    assert recorded.labels == {"hyperdense_lesion": "negative", "lung_nodule": "positive"}
    with engine.connect() as conn:
        report = conn.execute(select(StudyReport)).one()
        labels = conn.execute(select(ReportLabel).order_by(ReportLabel.finding_type)).all()
        kept = set(conn.execute(select(PatientIdentifier.value).where(PatientIdentifier.study_id == study)).scalars())
    assert (report.study_id, report.current, report.control_id, report.result_status, report.text) == (
        study, True, "MSG0001", "F", TEXT)
    assert [(lb.finding_type, lb.value, lb.rule) for lb in labels] == [
        ("hyperdense_lesion", "negative", "negation.pre:no"), ("lung_nodule", "positive", "affirmed")]
    assert TEXT[labels[0].span_start:labels[0].span_end] == labels[0].evidence == \
        "FINDINGS: No acute intracranial haemorrhage."
    assert kept == {"ACC-1001", "DOE^JANE", "MRN-77"}
    (event,) = _audits(engine, AuditKind.REPORT_RECORDED)
    assert event.study_instance_uid == HEAD_UID
    assert event.detail["labels"] == ["hyperdense_lesion:negative", "lung_nodule:positive"]
    assert event.detail["report_id"] == report.id
    assert "ACC-1001" not in str(event.detail) and "haemorrhage" not in str(event.detail)
    assert study_labels(engine, study) == {"hyperdense_lesion": ReportLabelValue.NEGATIVE,
                                           "lung_nodule": ReportLabelValue.POSITIVE}


def test_a_study_instance_uid_matches_before_any_accession(engine: Engine, add_study: Callable[..., int]) -> None:
    add_study(HEAD_UID, "ACC-1001")
    chest = add_study(CHEST_UID, "ACC-2002")
    recorded = record_report(engine, _report(study_instance_uids=[CHEST_UID], accession_numbers=["ACC-9999"]))
    assert (recorded.study_id, recorded.study_instance_uid) == (chest, CHEST_UID)


def test_unknown_ambiguous_and_contradictory_reports_are_kept_refused_and_audited(
        engine: Engine, add_study: Callable[..., int]) -> None:
    add_study(HEAD_UID, "ACC-SHARED")
    add_study(CHEST_UID, "ACC-SHARED", "ACC-2002")
    unknown = record_report(engine, _report(accession_numbers=["ACC-NONE"]))
    ambiguous = record_report(engine, _report(accession_numbers=["ACC-SHARED"]))
    contradictory = record_report(engine, _report(study_instance_uids=[HEAD_UID], accession_numbers=["ACC-2002"]))
    assert unknown.refused == "no study with its accession number"
    assert ambiguous.refused == "its accession number matches 2 studies"
    assert contradictory.refused == "its Study Instance UID and its accession number name different studies"
    with engine.connect() as conn:
        rows = conn.execute(select(StudyReport).order_by(StudyReport.id)).all()
        assert conn.execute(select(ReportLabel)).all() == []
    assert [(r.study_id, r.current, r.text) for r in rows] == [(None, False, TEXT)] * 3
    events = _audits(engine, AuditKind.REPORT_REFUSED)
    assert [e.detail["reason"] for e in events] == [unknown.refused, ambiguous.refused, contradictory.refused]
    assert [e.detail["report_id"] for e in events] == [r.id for r in rows]
    assert [r.id for r in list_reports(engine, unmatched=True)] == [r.id for r in rows][::-1]


def test_a_newer_report_supersedes_and_a_late_preliminary_does_not(
        engine: Engine, add_study: Callable[..., int]) -> None:
    study = add_study(HEAD_UID, "ACC-1001")
    first = record_report(engine, _report(accession_numbers=["ACC-1001"], result_status="P",
                                          text="Possible small subdural haematoma."))
    final = record_report(engine, _report(accession_numbers=["ACC-1001"], text="No intracranial haemorrhage."))
    late = record_report(engine, _report(accession_numbers=["ACC-1001"], result_status="P",
                                         text="Acute subdural haematoma."))
    assert study_labels(engine, study) == {"hyperdense_lesion": ReportLabelValue.NEGATIVE}
    corrected = record_report(engine, _report(accession_numbers=["ACC-1001"], result_status="C",
                                              text="Correction: thin acute subdural haematoma along the falx."))
    assert (first.current, final.current, late.current, corrected.current) == (True, True, False, True)
    assert study_labels(engine, study) == {"hyperdense_lesion": ReportLabelValue.POSITIVE}
    reports = {r.id: r for r in list_reports(engine, study_uid=HEAD_UID)}
    assert [reports[r.report_id].current for r in (first, final, late, corrected)] == [False, False, False, True]
    assert reports[corrected.report_id].labels == {"hyperdense_lesion": "positive"}
    events = _audits(engine, AuditKind.REPORT_RECORDED)
    assert [e.detail["superseded"] for e in events] == [[], [first.report_id], [], [final.report_id]]


# --- DICOM text SRs ---------------------------------------------------------------------------------------

def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _item(value_type: str, meaning: str, text: str | None = None, children: list[Dataset] | None = None) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_code("121071", "DCM", meaning)] if meaning else []
    if text is not None:
        item.TextValue = text
    if children:
        item.ContentSequence = children
    return item


def _sr(sop_class: str, content: list[Dataset], uid: str | None = None, title: Dataset | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid or generate_uid()
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [title or _code("18748-4", "LN", "Diagnostic imaging report")]
    ds.ContentSequence = content
    return ds


def test_text_items_of_basic_and_enhanced_text_srs_in_document_order() -> None:
    content = [_item("TEXT", "Clinical History", "Fall, ?bleed."),
               _item("CONTAINER", "Findings", children=[_item("TEXT", "Finding", "No intracranial haemorrhage."),
                                                        _item("CODE", "Finding")]),
               _item("TEXT", "Impression", "Normal CT head.")]
    expected = "Clinical History: Fall, ?bleed.\n\nFinding: No intracranial haemorrhage.\n\nImpression: Normal CT head."
    assert report_text_from_sr(_sr(BASIC_TEXT_SR, content)) == expected
    assert report_text_from_sr(_sr(ENHANCED_SR, content)) == expected


def test_measurement_reports_our_own_srs_other_classes_and_textless_srs_give_no_text() -> None:
    text = [_item("TEXT", "Finding", "Nodule in the right upper lobe.")]
    tid1500 = _sr(ENHANCED_SR, text, title=_code("126000", "DCM", "Imaging Measurement Report"))
    templated = _sr(ENHANCED_SR, text)
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "1500"
    templated.ContentTemplateSequence = [template]
    ours = _sr(BASIC_TEXT_SR, text, uid=f"{DEFAULT_UID_ROOT}.7.1.2")
    comprehensive = _sr("1.2.840.10008.5.1.4.1.1.88.33", text)
    textless = _sr(BASIC_TEXT_SR, [_item("CODE", "Finding")])
    image = pydicom.Dataset()
    image.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    for ds in (tid1500, templated, ours, comprehensive, textless, image):
        assert report_text_from_sr(ds) is None
