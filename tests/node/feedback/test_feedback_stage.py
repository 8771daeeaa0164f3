"""The feedback stage on real runs: a reader's SR (as a viewer writes it) matched to the run's findings, and every
other SR classified and left alone (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from node.cli.main import app
from node.config import Settings
from node.db.schema import AuditEvent, InboundDocument, ReportLabel, StudyReport
from node.events import AuditKind, DocumentKind
from node.feedback import FeedbackStage, feedback_record, list_feedback
from node.monitor.figures import compute_figures
from node.monitor.periods import PeriodKind
from node.pipeline.run_records import run_record
from node.pipeline.stabilize import Stabilizer
from node.pipeline.worker import Worker
from node.reports.coordinates import box_polyline
from tests.node.test_node_pipeline import Sender, chest_files, engine, settings  # noqa: F401 (fixtures)
from tests.support import imaging_measurements

NODULE = Code("27925004", "SCT", "Nodule")


@pytest.fixture
def analysed(engine: Engine, settings: Settings) -> tuple[dict, list[Dataset]]:
    """The chest series received, and one done run of the shipped chest model with at least three findings."""
    files = chest_files()
    sender = Sender(engine, settings)
    sender.send(files)
    sender.release()
    [run_id] = Stabilizer(engine, settings).poll()
    assert Worker(engine, settings, threading.Event()).run_once()
    record = run_record(engine, run_id)
    assert record is not None and len(record["findings"]) >= 3, "the chest model reports several findings here"
    return record, [pydicom.dcmread(p) for p in files]


def _groups_of(sr: Dataset) -> list[Dataset]:
    return [g for g in imaging_measurements(sr).ContentSequence if g.ValueType == "CONTAINER"]


def _uid_of(group: Dataset) -> str | None:
    return next((str(i.UID) for i in group.ContentSequence if i.ValueType == "UIDREF"), None)


def _region(group: Dataset) -> tuple[str, np.ndarray] | None:
    for item in group.ContentSequence:
        if item.ValueType == "SCOORD":
            return (str(item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
                    np.asarray(item.GraphicData, dtype=float).reshape(-1, 2))
    return None


def reader_sr(series: list[Dataset], regions: list[tuple[str | None, str, np.ndarray]], reader: str = "Reader^Jane",
              when: str = "120000", uid_seed: int = 1) -> Dataset:
    """A reader's TID 1500 review, as a viewer saves it: one group per drawn region, each (tracking UID or a new
    one, source image, polyline), a person observer."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series}
    groups = []
    for n, (tracking, sop, polyline) in enumerate(regions):
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking or hd.UID(), identifier=f"reader mark {n + 1}"),
            referenced_region=hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polyline,
                                                source_image=hd.sr.SourceImageForRegion.from_source_image(by_uid[sop])),
            finding_type=NODULE))
    observer = hd.sr.ObserverContext(observer_type=codes.DCM.Person,
                                     observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                                         name=reader, login_name="jreader"))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_person_context=observer),
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    evidence = [by_uid[sop] for _, sop, _ in regions]
    sr = hd.sr.Comprehensive3DSR(evidence=evidence, content=report, series_instance_uid=hd.UID(), series_number=77,
                                 sop_instance_uid=hd.UID(), instance_number=uid_seed, manufacturer="viewer")
    sr.ContentDate, sr.ContentTime = "20261207", when
    return sr


def _send(engine: Engine, settings: Settings, sr: Dataset, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.dcm"
    sr.save_as(path, enforce_file_format=True)
    sender = Sender(engine, settings, calling_ae="ORTHANC")
    sender.send([path])
    sender.release()


def _far_box(series: list[Dataset], findings: list[dict]) -> tuple[str, np.ndarray]:
    """A box on a slice that no finding touches, far from every finding: a lesion the run missed."""
    touched = {s["sop_instance_uid"] for f in findings for s in f["slices"]}
    free = [ds for ds in sorted(series, key=lambda d: float(d.ImagePositionPatient[2])) if str(ds.SOPInstanceUID) not in touched]
    ds = free[len(free) // 2]
    zs = [f["centre_mm"][2] for f in findings]
    assert min(abs(float(ds.ImagePositionPatient[2]) - z) for z in zs) > 5
    return str(ds.SOPInstanceUID), box_polyline((200.0, 200.0, 230.0, 228.0))


def test_a_reader_review_confirms_rejects_edits_and_adds_what_the_run_missed(
    engine: Engine, settings: Settings, analysed: tuple[dict, list[Dataset]], tmp_path: Path
) -> None:
    record, series = analysed
    ours = pydicom.dcmread(record["outputs"][0]["path"])
    findings = record["findings"]
    by_finding: dict[int, list[Dataset]] = {}
    for group in _groups_of(ours):
        region = _region(group)
        if region is None:
            continue
        n = next(i for i, f in enumerate(findings) if any(s["sop_instance_uid"] == region[0] for s in f["slices"])
                 and any(np.allclose(box_polyline(tuple(s["box_px"])), region[1]) for s in f["slices"]))
        by_finding.setdefault(n, []).append(group)
    assert sorted(by_finding) == list(range(len(findings)))
    marks: list[tuple[str | None, str, np.ndarray]] = []
    for n, groups in by_finding.items():
        if n == 0:
            continue  # deleted: rejected
        for group in groups:
            sop, polyline = _region(group)  # type: ignore[misc]
            if n == 1:  # the reader resized the box, keeping its tracking UID: edited
                polyline = polyline + np.array([[-6, -6], [6, -6], [6, 6], [-6, 6], [-6, -6]])
            marks.append((_uid_of(group), sop, polyline))
    marks.append((None, *_far_box(series, findings)))
    _send(engine, settings, reader_sr(series, marks), tmp_path, "review")

    [outcome] = FeedbackStage(engine, settings).poll()
    assert outcome.kind is DocumentKind.READER_REVIEW and outcome.feedback_id is not None
    [summary] = list_feedback(engine)
    assert summary["run_id"] == record["id"] and summary["reader"] == "Reader^Jane"
    assert (summary["confirmed"], summary["rejected"], summary["edited"], summary["missed"]) == \
        (len(findings) - 2, 1, 1, 1)
    detail = feedback_record(engine, outcome.feedback_id)
    assert detail is not None
    verdicts = {item["finding"]: item for item in detail["items"]}
    assert verdicts[1]["verdict"] == "rejected" and verdicts[2]["verdict"] == "edited"
    assert verdicts[2]["matched_by"] == "tracking uid" and verdicts[2]["diameter_mm"] > 0
    missed = verdicts[None]
    assert missed["verdict"] == "missed" and len(missed["regions"]) == 1 and len(missed["centre_mm"]) == 3
    assert FeedbackStage(engine, settings).poll() == [], "each SR is examined once"
    with engine.connect() as conn:
        [audit] = conn.execute(select(AuditEvent).where(AuditEvent.kind == str(AuditKind.FEEDBACK_RECORDED))).all()
    assert audit.detail["run_id"] == record["id"] and audit.detail["rejected"] == 1
    shown = run_record(engine, record["id"])
    assert shown is not None and [f["missed"] for f in shown["feedback"]] == [1]


def test_geometry_matches_a_review_that_kept_no_tracking_uid_and_a_later_review_supersedes(
    engine: Engine, settings: Settings, analysed: tuple[dict, list[Dataset]], tmp_path: Path
) -> None:
    record, series = analysed
    findings = record["findings"]
    every = [(None, s["sop_instance_uid"], box_polyline(tuple(s["box_px"]))) for f in findings for s in f["slices"]]
    _send(engine, settings, reader_sr(series, every, when="100000"), tmp_path, "first")
    stage = FeedbackStage(engine, settings)
    [first] = stage.poll()
    [row] = list_feedback(engine)
    assert (row["confirmed"], row["rejected"], row["edited"], row["missed"]) == (len(findings), 0, 0, 0)
    detail = feedback_record(engine, first.feedback_id)  # type: ignore[arg-type]
    assert detail is not None and {i["matched_by"] for i in detail["items"]} == {"geometry"}

    kept = [m for m in every if m[1] in {s["sop_instance_uid"] for s in findings[0]["slices"]}]
    _send(engine, settings, reader_sr(series, kept, when="110000", uid_seed=2), tmp_path, "second")
    [second] = stage.poll()
    [current] = list_feedback(engine)
    assert current["id"] == second.feedback_id and (current["confirmed"], current["rejected"]) == (1, len(findings) - 1)
    history = list_feedback(engine, include_superseded=True)
    assert [(h["id"], h["current"], h["superseded_by_id"]) for h in history] == \
        [(second.feedback_id, True, None), (first.feedback_id, False, second.feedback_id)]

    other = reader_sr(series, kept, reader="Reader^Other", when="090000", uid_seed=3)
    _send(engine, settings, other, tmp_path, "other-reader")
    [third] = stage.poll()
    third_run = record["id"]
    assert len(list_feedback(engine)) == 2, "another reader's review does not supersede Jane's"

    result = CliRunner().invoke(app, ["feedback", "list", "--json"],
                                env={"CTNODE_DATABASE__URL": settings.database_url})
    assert result.exit_code == 0, result.output
    assert '"reader": "Reader^Other"' in result.stdout and result.stdout.lstrip().startswith("[")
    shown = CliRunner().invoke(app, ["feedback", "show", str(third.feedback_id)],
                               env={"CTNODE_DATABASE__URL": settings.database_url})
    assert shown.exit_code == 0 and f"feedback {third.feedback_id} on run {third_run}" in shown.stdout


def test_our_own_objects_device_reports_and_reviews_of_unknown_runs_are_not_feedback(
    engine: Engine, settings: Settings, analysed: tuple[dict, list[Dataset]], tmp_path: Path
) -> None:
    record, series = analysed
    sender = Sender(engine, settings, calling_ae="ORTHANC")
    sender.send([Path(record["outputs"][0]["path"])])  # our SR comes back from the PACS
    sender.release()
    cad = reader_sr(series, [(None, *_far_box(series, record["findings"]))])
    cad.ContentSequence = [item for item in cad.ContentSequence
                           if item.ConceptNameCodeSequence[0].CodeValue not in ("121005", "121008", "128774")]
    device = hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                   observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                                       uid=hd.UID(), name="other CAD"))
    cad.ContentSequence = [*device, *cad.ContentSequence]
    _send(engine, settings, cad, tmp_path, "cad")
    other_study = reader_sr(series, [(None, *_far_box(series, record["findings"]))])
    other_study.StudyInstanceUID = hd.UID()
    _send(engine, settings, other_study, tmp_path, "elsewhere")
    outcomes = FeedbackStage(engine, settings).poll()
    assert [o.kind for o in outcomes] == [DocumentKind.OWN, DocumentKind.OTHER, DocumentKind.REFUSED]
    assert "device" in outcomes[1].reason and "no run of ours" in outcomes[2].reason
    assert list_feedback(engine) == []
    with engine.connect() as conn:
        kinds = conn.execute(select(InboundDocument.kind).order_by(InboundDocument.id)).scalars().all()
        refused = conn.execute(select(AuditEvent).where(AuditEvent.kind == str(AuditKind.FEEDBACK_REFUSED))).all()
    assert kinds == ["own", "other", "refused"] and len(refused) == 1


def test_a_study_analysed_twice_attributes_each_review_to_the_run_it_reviewed(
    engine: Engine, settings: Settings, analysed: tuple[dict, list[Dataset]], tmp_path: Path
) -> None:
    v1, series = analysed
    changed = pydicom.dcmread(chest_files()[10])
    changed.ImageComments = "corrected by the modality"
    changed.save_as(tmp_path / "changed.dcm")
    resend = Sender(engine, settings)
    resend.send([tmp_path / "changed.dcm"])
    resend.release()
    [v2_id] = Stabilizer(engine, settings).poll()
    assert Worker(engine, settings, threading.Event()).run_once()

    ours_v1 = pydicom.dcmread(v1["outputs"][0]["path"])
    kept_v1 = [(_uid_of(g), *_region(g)) for g in _groups_of(ours_v1) if _region(g) is not None]
    _send(engine, settings, reader_sr(series, kept_v1), tmp_path, "on-v1")
    plain = [(None, s["sop_instance_uid"], box_polyline(tuple(s["box_px"]))) for s in v1["findings"][0]["slices"]]
    _send(engine, settings, reader_sr(series, plain, reader="Reader^Late"), tmp_path, "on-latest")
    stray = reader_sr(series, plain, reader="Reader^Stray")
    for group in _groups_of(stray):  # drawn on images the node never received
        for item in group.ContentSequence:
            if item.ValueType == "SCOORD":
                item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID = hd.UID()
    _send(engine, settings, stray, tmp_path, "stray")

    outcomes = FeedbackStage(engine, settings).poll()
    assert [o.kind for o in outcomes] == [DocumentKind.READER_REVIEW, DocumentKind.READER_REVIEW, DocumentKind.REFUSED]
    assert "tracking UID(s) of run" in outcomes[0].reason and "which run" in outcomes[1].reason
    assert "no series a run of ours read" in outcomes[2].reason
    reviews = {r["reader"]: r for r in list_feedback(engine)}
    assert reviews["Reader^Jane"]["run_id"] == v1["id"] and reviews["Reader^Jane"]["confirmed"] == len(v1["findings"])
    assert reviews["Reader^Late"]["run_id"] == v2_id, "a review without our UIDs is of the newest run of the series"


def text_report(series: list[Dataset], sentence: str) -> Dataset:
    """A radiology report as a PACS or reporting system stores it: an Enhanced SR with TEXT findings."""
    content = hd.sr.ContainerContentItem(name=Code("18748-4", "LN", "Diagnostic imaging report"))
    content.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
        name=Code("121071", "DCM", "Finding"), value=sentence,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)])
    return hd.sr.EnhancedSR(evidence=[series[0]], content=content, series_instance_uid=hd.UID(), series_number=80,
                            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="reporting system")


def test_a_text_report_from_the_pacs_labels_its_study(
    engine: Engine, settings: Settings, analysed: tuple[dict, list[Dataset]], tmp_path: Path
) -> None:
    _, series = analysed
    _send(engine, settings, text_report(series, "There is a 9 mm nodule in the right upper lobe."), tmp_path, "report")
    [outcome] = FeedbackStage(engine, settings).poll()
    assert outcome.kind is DocumentKind.REPORT and "lung_nodule: positive" in outcome.reason
    with engine.connect() as conn:
        [(value, source)] = conn.execute(select(ReportLabel.value, StudyReport.source).join(StudyReport)
                                         .where(ReportLabel.finding_type == "lung_nodule")).all()
        [kind] = conn.execute(select(InboundDocument.kind)).scalars().all()
    assert (value, source, kind) == ("positive", "dicom", "report")
    assert list_feedback(engine) == [], "a text report is not a review"


def test_evaluate_site_reads_the_reviewed_studies_through_the_node_path_and_agrees_with_the_monitor(
    engine: Engine, settings: Settings, analysed: tuple[dict, list[Dataset]], tmp_path: Path
) -> None:
    record, series = analysed
    findings = record["findings"]
    kept = [(None, s["sop_instance_uid"], box_polyline(tuple(s["box_px"]))) for f in findings[1:] for s in f["slices"]]
    _send(engine, settings, reader_sr(series, [*kept, (None, *_far_box(series, findings))]), tmp_path, "review")
    [outcome] = FeedbackStage(engine, settings).poll()
    assert outcome.kind is DocumentKind.READER_REVIEW

    env = {"CTNODE_DATABASE__URL": settings.database_url, "CTNODE_STORAGE__DATA_DIR": str(settings.storage.data_dir)}
    result = CliRunner().invoke(app, ["evaluate", "-m", "chest", "--site", "-o", str(tmp_path / "site"),
                                      "--bootstrap", "200"], env=env)
    assert result.exit_code == 0, result.output
    assert "1 reviewed chest study of this node" in result.stdout
    report = json.loads((tmp_path / "site" / "report.json").read_text())
    assert report["studies_evaluated"] == 1
    [study] = report["studies"]
    assert study["id"] == f"run-{record['id']}"
    n = len(findings)
    assert report["metrics"]["sensitivity"]["value"] == pytest.approx((n - 1) / n, abs=1e-4)
    monitored = compute_figures(engine, datetime(2000, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc),
                                PeriodKind.ALL, rounds=200)
    [chest] = [f for f in monitored if f.model_name == "ctnode-chest"]
    assert chest.lesion_level is not None and chest.lesion_level.lesions == n
    assert chest.lesion_level.sensitivity.value == pytest.approx(report["metrics"]["sensitivity"]["value"], abs=1e-4)
    assert chest.lesion_level.fp_per_scan.value == pytest.approx(report["metrics"]["fp_per_scan"]["value"], abs=1e-4)
    assert (tmp_path / "site" / "froc.png").exists()

    wrong = CliRunner().invoke(app, ["evaluate", "-m", "chest", "--site", "-d", str(tmp_path)], env=env)
    assert wrong.exit_code == 2, "--site and --data together are refused"
