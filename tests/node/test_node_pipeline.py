"""Study completion, routing and the run queue, on real CT files ingested as the receiver does (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine, insert, select, update
from typer.testing import CliRunner

from detector.io import read_ct_volume
from detector.preprocess.regions import anatomy_mask
from node.cli.main import app
from node.config import PipelineConfig, Route, Settings
from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.db.schema import Association, AuditEvent, Run, RunInput, Study, utcnow
from node.events import AssociationOutcome, AuditKind, RunStatus
from node.pipeline.evidence import series_evidence
from node.pipeline.queue import claim_run, fail_run, finish_run, heartbeat, requeue_run
from node.pipeline.routing import SeriesFacts, route_study
from node.pipeline.run_records import run_record
from node.pipeline.stabilize import Stabilizer
from node.pipeline.worker import Worker
from node.dicom.receive import Received, Receiver
from node.logging import configure_logging
from node.storage.store import InstanceStore
from tests.support import dicom_files, require_ct, write_contrast_enhanced

CHEST = "chest_lung_pet_ct_dx_A0001"


def chest_files() -> list[Path]:
    """The 64 chest CT files, in slice order along the table."""
    files = sorted(require_ct(CHEST).rglob("*.dcm"))
    return sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(database={"url": db_url}, storage={"data_dir": tmp_path / "data", "min_free_bytes": 0},
                    pipeline={"quiet_s": 30, "lease_s": 4, "heartbeat_s": 1, "max_attempts": 2, "retry_delay_s": 0})


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


class Sender:
    """Ingests files exactly as the receiver does, inside an association row whose outcome the test controls."""

    def __init__(self, engine: Engine, settings: Settings, calling_ae: str = "PACS") -> None:
        self.engine = engine
        self.store = InstanceStore(settings.storage)
        self.ingestor = Receiver(self.store, engine)
        with engine.begin() as conn:
            self.association_id = conn.execute(insert(Association).returning(Association.id).values(
                calling_ae=calling_ae, called_ae="CTNODE", peer_host="127.0.0.1", peer_port=1,
                outcome=str(AssociationOutcome.OPEN))).scalar_one()

    def send(self, files: list[Path]) -> None:
        for path in files:
            spool = self.store.incoming / f"{path.name}.part"
            shutil.copyfile(path, spool)
            data = spool.read_bytes()
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            outcome = self.ingestor.receive(Received(spool, hashlib.sha256(data).hexdigest(), len(data),
                                                    str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                                    str(ds.file_meta.TransferSyntaxUID), self.association_id))
            assert outcome.status == 0, outcome

    def release(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(Association).where(Association.id == self.association_id)
                         .values(outcome=str(AssociationOutcome.RELEASED), ended_at=utcnow()))


def runs(engine: Engine) -> list[Run]:
    with engine.connect() as conn:
        return list(conn.execute(select(Run).order_by(Run.id)).all())


def audits(engine: Engine, kind: AuditKind) -> list[AuditEvent]:
    with engine.connect() as conn:
        return list(conn.execute(select(AuditEvent).where(AuditEvent.kind == str(kind))).all())


def test_evidence_sees_gaps_counts_and_single_images() -> None:
    files = chest_files()
    assert series_evidence("s", files, 1.5).complete
    gapped = series_evidence("s", files[:20] + files[23:], 1.5)
    assert not gapped.complete and "gap of 20.00 mm" in gapped.reason and "median spacing 5.00 mm" in gapped.reason
    assert series_evidence("s", files[:1], 1.5).reason == "single image"


def test_routes_by_body_part_description_and_sender() -> None:
    config = PipelineConfig()
    head = SeriesFacts("1.2.1", 2, "CT", "HEAD", None, None, frozenset({"PACS"}))
    chest = SeriesFacts("1.2.2", 3, "CT", None, "5mm", "Chest", frozenset({"PACS"}))
    knee = SeriesFacts("1.2.3", 4, "CT", "KNEE", "knee", None, frozenset({"PACS"}))
    report = SeriesFacts("1.2.4", 9, "SR", None, None, None, frozenset({"PACS"}))
    decision = route_study(config.routes, [head, chest, knee, report])
    assert [(r.model, r.series_instance_uids) for r in decision.routed] == [("head", ("1.2.1",)),
                                                                            ("chest", ("1.2.2",))]
    assert decision.routed[1].reasons == ("series 3 (1.2.2) -> chest: study description matches /chest|thora|lung/",)
    assert any("series 4" in r and "no route matches" in r for r in decision.unrouted)
    assert any("series 9" in r and "modality SR, not CT" in r for r in decision.unrouted)
    only_er = [Route(model="head", body_parts=["HEAD"], calling_aes=["ER_CT"])]
    assert not route_study(only_er, [head]).routed
    assert route_study(only_er, [SeriesFacts("1.2.1", 2, "CT", "HEAD", None, None, frozenset({"ER_CT"}))]).routed


def test_fast_path_waits_for_release_and_complete_slices(engine: Engine, settings: Settings) -> None:
    files = chest_files()
    stabilizer = Stabilizer(engine, settings)
    sender = Sender(engine, settings)
    sender.send(files[:20] + files[23:])
    assert stabilizer.poll() == []  # association still open
    sender.release()
    assert stabilizer.poll() == []  # released, but three slices are missing: wait for the quiet timer
    late = Sender(engine, settings)
    late.send(files[20:23])
    late.release()
    [run_id] = stabilizer.poll()
    [run] = runs(engine)
    assert run.id == run_id and run.status == RunStatus.QUEUED and run.model == "chest" and run.version == 1
    assert run.trigger.startswith("fast path: associations released") and "64 images, contiguous" in run.trigger
    assert run.instance_count == 64 and run.first_instance_at <= run.last_instance_at <= run.ready_at
    assert any("-> chest: study description matches" in line for line in run.routing)
    assert stabilizer.poll() == []  # settled: nothing new
    assert len(audits(engine, AuditKind.RUN_QUEUED)) == 1


def test_quiet_timer_new_versions_and_unchanged_resends(engine: Engine, settings: Settings) -> None:
    files = chest_files()
    stabilizer = Stabilizer(engine, settings)
    first = Sender(engine, settings)
    first.send(files[:40])  # the association stays open (a sender that vanished): only the quiet timer helps
    assert stabilizer.poll() == []
    [v1] = stabilizer.poll(now=utcnow() + timedelta(seconds=31))
    second = Sender(engine, settings)
    second.send(files[40:])
    second.release()
    assert stabilizer.poll() == []  # the first association is still open
    [v2] = stabilizer.poll(now=utcnow() + timedelta(seconds=31))
    one, two = runs(engine)
    assert (one.id, one.version, one.instance_count) == (v1, 1, 40) and one.trigger.startswith("quiet: no new")
    assert (two.id, two.version, two.predecessor_id, two.instance_count) == (v2, 2, v1, 64)
    again = Sender(engine, settings)
    again.send(files[:5])  # identical bytes: duplicates, no new instance, the study stays settled
    again.release()
    assert stabilizer.poll(now=utcnow() + timedelta(seconds=31)) == []
    with engine.begin() as conn:  # a bump without new inputs (e.g. a racing receiver) settles as unchanged
        conn.execute(update(Study).values(generation=Study.generation + 1))
    assert stabilizer.poll(now=utcnow() + timedelta(seconds=31)) == []
    assert [a.detail["run_id"] for a in audits(engine, AuditKind.RUN_UNCHANGED)] == [v2]


def test_concurrent_stabilizers_settle_a_generation_once(engine: Engine, settings: Settings) -> None:
    sender = Sender(engine, settings)
    sender.send(chest_files())
    sender.release()
    created: list[int] = []
    barrier = threading.Barrier(4)

    def poll() -> None:
        stabilizer = Stabilizer(engine, settings)
        barrier.wait()
        created.extend(stabilizer.poll())

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(created) == 1 and len(runs(engine)) == 1


def test_a_study_no_model_applies_to_is_skipped_with_the_reason(engine: Engine, settings: Settings) -> None:
    settings = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(
        update={"routes": [Route(model="head", body_parts=["HEAD"])]})})
    sender = Sender(engine, settings)
    sender.send(chest_files()[:10])
    sender.release()
    [run_id] = Stabilizer(engine, settings).poll()
    [run] = runs(engine)
    assert run.status == RunStatus.SKIPPED and run.model == "-" and run.finished_at is not None
    assert run.trigger.startswith("skipped: no model applies (fast path")
    assert any("no route matches (body part absent, series description '5mm', study description 'Chest')" in r
               for r in run.routing)
    assert [a.detail["run_id"] for a in audits(engine, AuditKind.RUN_SKIPPED)] == [run_id]
    assert claim_run(engine, settings.pipeline, "w") is None


def test_claims_leases_retries_and_failure(engine: Engine, settings: Settings) -> None:
    sender = Sender(engine, settings)
    sender.send(chest_files()[:10])
    sender.release()
    [run_id] = Stabilizer(engine, settings).poll()
    config = settings.pipeline
    first = claim_run(engine, config, "w1")
    assert first is not None and first.id == run_id and first.attempts == 1
    assert claim_run(engine, config, "w2") is None  # held under its lease
    assert heartbeat(engine, first, config.lease_s)
    with engine.begin() as conn:  # w1 dies: its lease runs out
        conn.execute(update(Run).values(lease_until=utcnow() - timedelta(seconds=1)))
    second = claim_run(engine, config, "w2")
    assert second is not None and second.id == run_id and second.attempts == 2
    assert not heartbeat(engine, first, config.lease_s) and not finish_run(engine, first)  # w1's token is void
    [reclaimed] = audits(engine, AuditKind.RUN_RECLAIMED)
    assert reclaimed.detail == {"run_id": run_id, "from_worker": "w1", "to_worker": "w2"}
    assert fail_run(engine, second, "RuntimeError: boom", True, config) == RunStatus.FAILED  # 2 of 2 attempts
    [run] = runs(engine)
    assert run.status == RunStatus.FAILED and run.error == "RuntimeError: boom"
    assert requeue_run(engine, run_id) and not requeue_run(engine, run_id)
    third = claim_run(engine, config, "w3")
    assert third is not None and third.attempts == 1
    assert fail_run(engine, third, "OSError: disk", True, config) == RunStatus.QUEUED  # retried after the delay
    fourth = claim_run(engine, config, "w4")
    assert fourth is not None and fourth.attempts == 2 and finish_run(engine, fourth)
    assert runs(engine)[0].status == RunStatus.DONE


def test_a_run_whose_workers_keep_dying_fails_after_max_attempts(engine: Engine, settings: Settings) -> None:
    sender = Sender(engine, settings)
    sender.send(chest_files()[:10])
    sender.release()
    Stabilizer(engine, settings).poll()
    for worker in ("w1", "w2"):
        assert claim_run(engine, settings.pipeline, worker) is not None
        with engine.begin() as conn:
            conn.execute(update(Run).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert claim_run(engine, settings.pipeline, "w3") is None
    [run] = runs(engine)
    assert run.status == RunStatus.FAILED and "stopped 2 time(s) without finishing" in run.error
    with engine.connect() as conn:
        assert conn.execute(select(RunInput).where(RunInput.run_id == run.id)).all()


def test_worker_runs_detection_reports_and_queues_delivery_with_a_predecessor_on_rerun(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"delivery": settings.delivery.model_validate({
        "destinations": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 1}],
        "default_destinations": ["pacs"]})})
    files = chest_files()
    sender = Sender(engine, settings)
    sender.send(files)
    sender.release()
    stabilizer = Stabilizer(engine, settings)
    [v1] = stabilizer.poll()
    worker = Worker(engine, settings, threading.Event())
    assert worker.run_once() and not worker.run_once()
    record = run_record(engine, v1)
    assert record is not None and record["status"] == RunStatus.DONE and record["attempts"] == 1
    assert record["model_name"] == "ctnode-chest" and len(record["weights_sha256"]) == 64
    assert record["series_instance_uid"] == str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    assert ": chosen: 64 axial slices" in record["selection"][0] and len(record["inputs"]) == 64
    assert all(len(i["sha256"]) == 64 for i in record["inputs"])
    stamps = [record["timestamps"][k] for k in ("first_instance_at", "last_instance_at", "ready_at", "claimed_at",
                                                 "inference_started_at", "inference_ended_at", "reports_built_at",
                                                 "finished_at")]
    assert stamps == sorted(stamps) and None not in stamps
    kinds = [o["kind"] for o in record["outputs"]]
    assert kinds[0] == "SR" and set(kinds[1:]) == {"SC"} and len(kinds) == 1 + len(record["findings"]) + 1
    assert sorted(d["sop_instance_uid"] for d in record["deliveries"]) == sorted(o["sop_instance_uid"]
                                                                               for o in record["outputs"])
    assert {d["destination"] for d in record["deliveries"]} == {"pacs"}
    assert [a["kind"] for a in record["audit"]] == ["run.queued", "run.done"]
    sr_v1 = pydicom.dcmread(record["outputs"][0]["path"])
    assert sr_v1.StudyInstanceUID == record["study_instance_uid"] and "PredecessorDocumentsSequence" not in sr_v1
    ready = record["timestamps"]["ready_at"]  # every object carries the run's time: a rebuild is byte-identical
    assert (sr_v1.ContentDate, sr_v1.ContentTime) == (ready.strftime("%Y%m%d"), ready.strftime("%H%M%S"))

    changed = pydicom.dcmread(files[10])
    changed.ImageComments = "corrected by the modality"
    changed.save_as(tmp_path / "changed.dcm")
    resend = Sender(engine, settings)
    resend.send([tmp_path / "changed.dcm"])
    resend.release()
    [v2] = stabilizer.poll()
    assert worker.run_once()
    rerun = run_record(engine, v2)
    assert rerun is not None and rerun["version"] == 2 and rerun["predecessor_id"] == v1
    sr_v2 = pydicom.dcmread(rerun["outputs"][0]["path"])
    [predecessor] = sr_v2.PredecessorDocumentsSequence
    assert predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        sr_v1.SOPInstanceUID
    assert sr_v2.SOPInstanceUID != sr_v1.SOPInstanceUID


def test_a_series_the_detector_cannot_read_fails_at_once_with_the_reason(engine: Engine, settings: Settings) -> None:
    sender = Sender(engine, settings)
    sender.send(chest_files()[:2])
    sender.release()
    [run_id] = Stabilizer(engine, settings).poll()
    worker = Worker(engine, settings, threading.Event())
    assert worker.run_once()
    record = run_record(engine, run_id)
    assert record is not None and record["status"] == RunStatus.FAILED and record["attempts"] == 1
    assert record["error"].startswith("NoEligibleSeriesError") and "2 slices" in record["error"]
    assert [a["kind"] for a in record["audit"]] == ["run.queued", "run.failed"]
    assert not worker.run_once()  # not retried: the same input would fail the same way


def _chest_run(engine: Engine, settings: Settings, **pipeline: object) -> dict:
    """The record of one run of the chest series, done under ``settings`` with ``pipeline`` overrides."""
    settings = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update=pipeline)})
    sender = Sender(engine, settings)
    sender.send(chest_files())
    sender.release()
    [run_id] = Stabilizer(engine, settings).poll()
    assert Worker(engine, settings, threading.Event()).run_once()
    record = run_record(engine, run_id)
    assert record is not None and record["status"] == RunStatus.DONE
    return record


def _queue_edited_chest(engine: Engine, settings: Settings, tmp_path: Path, edit: Callable[[Dataset], None]) -> int:
    """The id of the run queued for the chest series sent with each image changed by ``edit`` (copies in
    ``tmp_path``)."""
    files = []
    for path in chest_files():
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(tmp_path / path.name)
        files.append(tmp_path / path.name)
    sender = Sender(engine, settings)
    sender.send(files)
    sender.release()
    [run_id] = Stabilizer(engine, settings).poll()
    return run_id


def test_a_run_with_more_findings_than_the_cap_reports_the_best_and_audits_the_rest(
    engine: Engine, settings: Settings
) -> None:
    record = _chest_run(engine, settings, max_findings=2)
    [truncated] = [a for a in record["audit"] if a["kind"] == "run.truncated"]
    detail = truncated["detail"]
    assert detail["reported"] == len(record["findings"]) == 2 and detail["dropped"] >= 1
    assert len(detail["dropped_findings"]) == detail["dropped"]
    assert min(f["score"] for f in record["findings"]) >= max(f["score"] for f in detail["dropped_findings"])
    kinds = [o["kind"] for o in record["outputs"]]
    assert kinds.count("SC") == 2 + 1  # the overlay series is bounded with the findings (one per finding + summary)


def test_the_anatomy_override_keeps_only_findings_centred_in_it(engine: Engine, settings: Settings) -> None:
    record = _chest_run(engine, settings, anatomy={"chest": "lungs"})
    assert record["findings"]
    volume = read_ct_volume(require_ct(CHEST))[0]
    lungs = anatomy_mask(volume, "lungs")
    assert lungs is not None
    assert lungs.contains(volume.geometry.patient_to_voxel([f["centre_mm"] for f in record["findings"]])).all()


def test_a_series_without_frame_of_reference_still_delivers_its_reports_and_audits_what_they_lack(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    def drop_frame_of_reference(ds: Dataset) -> None:
        del ds.FrameOfReferenceUID

    run_id = _queue_edited_chest(engine, settings, tmp_path, drop_frame_of_reference)
    assert Worker(engine, settings, threading.Event()).run_once()
    record = run_record(engine, run_id)
    assert record is not None and record["status"] == RunStatus.DONE and record["findings"]
    assert {o["kind"] for o in record["outputs"]} == {"SR", "SC"}
    [degraded] = [a for a in record["audit"] if a["kind"] == "run.degraded"]
    assert degraded["detail"]["omitted"][0].startswith("3D finding centres (SCOORD3D)")


def test_a_series_outside_the_model_domain_gets_a_skipped_run_with_the_reason(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    files = write_contrast_enhanced(require_ct("head_ge_patient"), tmp_path / "enhanced", agent="IOMERON 350")
    sender = Sender(engine, settings)
    sender.send(files)
    sender.release()
    stabilizer = Stabilizer(engine, settings)
    stabilizer.config = stabilizer.config.model_copy(update={"quiet_s": 0})  # its slice gaps are uneven
    [run_id] = stabilizer.poll()
    assert Worker(engine, settings, threading.Event()).run_once()
    record = run_record(engine, run_id)
    assert record is not None and record["status"] == RunStatus.SKIPPED and record["findings"] in (None, [])
    assert record["error"] == ("refused by the model's domain gate: contrast-enhanced series by Contrast/Bolus Agent "
                               "'IOMERON 350'; the model reads non-contrast CT")
    assert [a["kind"] for a in record["audit"]] == ["run.queued", "run.skipped"]
    # "not analysed" is a result: an SR and a page say so in the study, and the run's decision says why
    assert [o["kind"] for o in record["outputs"]] == ["SR", "SC"]
    assert record["decision"] == "not_analysed" and record["decision_reason"] == record["error"]


def test_an_untagged_head_series_reaches_the_head_model_by_its_pixels(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    files = []
    for path in dicom_files(require_ct("head_ge_patient")):
        ds = pydicom.dcmread(path)
        for keyword in ("BodyPartExamined", "StudyDescription", "SeriesDescription"):
            ds.pop(keyword, None)
        ds.save_as(tmp_path / path.name)
        files.append(tmp_path / path.name)
    sender = Sender(engine, settings)
    sender.send(files)
    sender.release()
    stabilizer = Stabilizer(engine, settings)
    stabilizer.config = stabilizer.config.model_copy(update={"quiet_s": 0})
    [run_id] = stabilizer.poll()
    record = run_record(engine, run_id)
    assert record is not None and record["model"] == "head" and record["status"] == RunStatus.QUEUED
    assert any("-> head: body part HEAD from the pixels" in line for line in record["routing"])


def test_the_study_context_is_recorded_on_the_run_shown_by_runs_show_and_never_logged(
    engine: Engine, settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason, diagnosis = "Husten seit drei Wochen, Raucher [Dr. Weiß]", "Verdacht auf Rundherd"

    def refer(ds: Dataset) -> None:
        ds.SpecificCharacterSet, ds.PatientAge, ds.PatientSex = "ISO_IR 100", "058Y", "M"
        request = Dataset()
        request.ReasonForTheRequestedProcedure, request.RequestedProcedureDescription = reason, "CT Thorax nativ"
        ds.RequestAttributesSequence = [request]
        ds.AdmittingDiagnosesDescription = diagnosis

    run_id = _queue_edited_chest(engine, settings, tmp_path, refer)
    configure_logging("json", "DEBUG")  # into this test's captured stderr
    try:
        assert Worker(engine, settings, threading.Event()).run_once()
    finally:
        logged = capsys.readouterr()
        configure_logging("json", "INFO")
    assert "run done" in logged.err
    for text in (reason, "Weiß", diagnosis, "Thorax nativ"):
        assert text not in logged.err + logged.out
    record = run_record(engine, run_id)
    assert record is not None and record["status"] == RunStatus.DONE
    assert record["context"] == {"age_years": 58.0, "sex": "M", "reasons": [reason], "reason_codes": [],
                                 "procedure_descriptions": ["CT Thorax nativ"], "admitting_diagnoses": [diagnosis],
                                 "admitting_diagnosis_codes": []}
    sr = pydicom.dcmread(record["outputs"][0]["path"])
    [context] = [item for item in sr.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"]
    assert [i.TextValue for i in context.ContentSequence][:3] == [
        "58 years", "M", f"Reason for the requested procedure: {reason}"]
    env = {"CTNODE_DATABASE__URL": settings.database_url}
    shown = CliRunner().invoke(app, ["runs", "show", str(run_id), "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["context"] == record["context"]
    text = CliRunner().invoke(app, ["runs", "show", str(run_id)], env=env)
    assert text.exit_code == 0, text.output
    printed = " ".join(text.stdout.split())  # the console wraps long lines
    assert "patient: 58 years, sex M" in printed
    assert f"Reason for the requested procedure: {reason}" in printed  # its brackets are not taken for markup
    assert f"Admitting diagnosis: {diagnosis}" in printed and "Requested procedure: CT Thorax nativ" in printed
