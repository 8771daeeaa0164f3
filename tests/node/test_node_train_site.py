"""`ctnode train` on the node's own reviewed studies: a tiny fine-tune from a database with reviewed runs gives a
loadable card whose lineage names the parent, the site data digest and the split, the test studies never trained
on (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
import yaml
from sqlalchemy import Engine, insert
from typer.testing import CliRunner

from detector.infer import card_path, load_model
from detector.synth.sets import write_set
from detector.train.site import SiteCase, site_digest, split_cases
from node.cli.main import app
from node.db.schema import Feedback, FeedbackItem, Instance, Run, Series, Study
from node.events import FeedbackVerdict, RunStatus
from node.monitor.site_cases import site_cases
from tests.support import REPO, require_ct

STUDIES = 6


@pytest.fixture(scope="module")
def synthetic_studies() -> list[Path]:
    """Six labelled chest studies (bench/site.py's cache: written once, deterministic), each its own patient."""
    background = require_ct("chest_lung_pet_ct_dx_A0001")
    return write_set(background, REPO / "var" / "site" / "studies" / "lesions", "chest", STUDIES, 2, 0, 41000)


def _reviewed_site(engine: Engine, store: Path, folders: list[Path]) -> dict[str, str]:
    """Each study stored, read by the chest model (one finding away from its lesions) and reviewed: the finding
    rejected, every inserted lesion marked missed. Returns Study Instance UID -> Patient ID."""
    patients = {}
    finished = datetime.now(timezone.utc) - timedelta(minutes=5)
    for n, folder in enumerate(folders):
        summary = json.loads((folder / "labels" / "lesions.json").read_text())
        files = sorted(folder.glob("CT*.dcm"))
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        uid, series_uid = summary["study_instance_uid"], summary["series_instance_uid"]
        patients[uid] = str(first.PatientID)
        (store / f"s{n}").mkdir(parents=True)
        with engine.begin() as conn:
            study_id = conn.execute(insert(Study).returning(Study.id).values(study_instance_uid=uid)).scalar_one()
            series_id = conn.execute(insert(Series).returning(Series.id).values(
                study_id=study_id, series_instance_uid=series_uid, modality="CT")).scalar_one()
            for k, path in enumerate(files):
                shutil.copyfile(path, store / f"s{n}" / path.name)
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                conn.execute(insert(Instance).values(
                    series_id=series_id, sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                    transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), instance_number=k + 1,
                    sha256=hashlib.sha256(path.read_bytes()).hexdigest(), size_bytes=path.stat().st_size,
                    path=f"s{n}/{path.name}"))
            far = [float(c) + 80.0 for c in summary["lesions"][0]["centre_mm"]]
            run_id = conn.execute(insert(Run).returning(Run.id).values(
                study_id=study_id, study_instance_uid=uid, model="chest", version=1, status=str(RunStatus.DONE),
                trigger="test", input_digest="0" * 64, instance_count=len(files), series_instance_uid=series_uid,
                model_name="ctnode-chest", model_version="0.2.0",
                findings=[{"label": "lung_nodule", "score": 0.6, "centre_mm": far, "size_mm": [8.0, 8.0, 8.0]}],
                last_instance_at=finished, finished_at=finished + timedelta(seconds=n),
                ready_at=finished)).scalar_one()
            review_series = conn.execute(insert(Series).returning(Series.id).values(
                study_id=study_id, series_instance_uid=pydicom.uid.generate_uid(), modality="SR")).scalar_one()
            sr = pydicom.uid.generate_uid()
            instance_id = conn.execute(insert(Instance).returning(Instance.id).values(
                series_id=review_series, sop_instance_uid=sr, sop_class_uid="1.2.840.10008.5.1.4.1.1.88.22",
                transfer_syntax_uid="1.2.840.10008.1.2.1", sha256=f"{n:064d}", size_bytes=1,
                path="sr.dcm")).scalar_one()
            lesions = summary["lesions"]
            feedback_id = conn.execute(insert(Feedback).returning(Feedback.id).values(
                run_id=run_id, study_id=study_id, study_instance_uid=uid, instance_id=instance_id,
                sop_instance_uid=sr, reader="Reader^A", current=True, received_at=finished + timedelta(minutes=1),
                confirmed=0, edited=0, rejected=1, missed=len(lesions))).scalar_one()
            conn.execute(insert(FeedbackItem).values(feedback_id=feedback_id, verdict=str(FeedbackVerdict.REJECTED),
                                                     finding_index=0))
            for lesion in lesions:
                conn.execute(insert(FeedbackItem).values(
                    feedback_id=feedback_id, verdict=str(FeedbackVerdict.MISSED), centre_mm=lesion["centre_mm"],
                    diameter_mm=float(lesion["diameter_mm"]), label="lung_nodule"))
    return patients


def test_a_tiny_site_fine_tune_gives_a_card_with_its_lineage_and_split(
    engine: Engine, db_url: str, synthetic_studies: list[Path], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    patients = _reviewed_site(engine, data_dir / "store", synthetic_studies)
    node_yaml = tmp_path / "ctnode.yaml"
    node_yaml.write_text(yaml.safe_dump({"database": {"url": db_url}, "storage": {"data_dir": str(data_dir)},
                                         "pipeline": {"routes": [{"model": "chest"}]}}))

    cases = site_cases(engine, data_dir / "store", "CHEST", datetime(2000, 1, 1, tzinfo=timezone.utc),
                       datetime.now(timezone.utc))
    assert len(cases) == STUDIES and all(c.patient_key and c.rejected_mm and c.study.lesions for c in cases)
    assert not {c.patient_key for c in cases} & set(patients.values()), "patients are hashed"
    split = split_cases(cases, (0.5, 0.25, 0.25), seed=3)
    again = split_cases(list(reversed(cases)), (0.5, 0.25, 0.25), seed=3)
    def uids(s: object) -> list[list[str]]:
        return [[c.study_instance_uid for c in s.role(r)] for r in ("train", "validation", "test")]  # type: ignore

    assert uids(split) == uids(again), "the split is deterministic, whatever the order the cases come in"
    assert split.split_by == "patient" and (len(split.train), len(split.validation), len(split.test)) == (2, 2, 2)

    config = {"name": "ctnode-chest-site", "version": "0.2.0-site.1", "target": "chest",
              "data": {"pool": 12, "negatives": 0.25, "seed": 0},
              "schedule": {"iterations": 3, "batch": 2, "crop_px": 96, "lr": 1e-4, "threads": 1,
                           "checkpoint_every_s": 600},
              "site": {"config": "ctnode.yaml", "fractions": [0.5, 0.25, 0.25], "split_seed": 3}}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", "-c", str(tmp_path / "site.yaml"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "shadows: [" in result.stdout, "the card is offered as a shadow of the route"
    assert not any(p in result.output for p in patients.values()), "no Patient ID is printed"

    card_file = tmp_path / "out" / "ctnode-chest-site.json"
    loaded = load_model(card_file)
    card, parent = loaded.card, load_model("chest").card
    assert card.lineage is not None and card.training is not None
    assert (card.lineage.parent_name, card.lineage.parent_version, card.lineage.parent_weights_sha256) == \
        (parent.name, parent.version, parent.weights_sha256)
    assert card.lineage.site_data_sha256 == site_digest(cases)
    assert card.lineage.split_by == "patient"
    roles = {role: set(card.lineage.role(role)) for role in ("train", "validation", "test")}
    assert roles == {r: {c.study_instance_uid for c in split.role(r)} for r in roles}
    assert set().union(*roles.values()) == set(patients) and sum(map(len, roles.values())) == STUDIES
    trained = {s.study_instance_uid: s.use for s in card.training.studies}
    assert not roles["test"] & set(trained), "the test studies are never trained on"
    assert all(trained[u] == "labelled" for u in roles["train"])
    assert all(trained[u] == "calibration" for u in roles["validation"])
    assert card.training.iterations == 3 and card.training.samples == 12
    assert card.weights_sha256 != parent.weights_sha256, "the weights were fine-tuned"
    text = card_file.read_text()
    assert not any(p in text for p in patients.values()), "the card holds hashed patients only"
    assert any("held-out reviewed studies" in e.dataset for e in card.evaluation), "test figures on the card"
    assert card_path(str(card_file)) == card_file


def test_split_by_study_when_patients_are_unknown(synthetic_studies: list[Path]) -> None:
    from detector.evaluate import LabelledStudy

    cases = [SiteCase(LabelledStudy(f"s{n}", "", Path("."), f"1.2.3.{n}", (), ()), None, (n,)) for n in range(10)]
    split = split_cases(cases, (0.6, 0.2, 0.2), seed=0)
    assert split.split_by == "study"
    assert (len(split.train), len(split.validation), len(split.test)) == (6, 2, 2)
    uids = [c.study_instance_uid for r in ("train", "validation", "test") for c in split.role(r)]
    assert sorted(uids) == sorted(c.study_instance_uid for c in cases)
    assert site_digest(cases) == site_digest(list(reversed(cases)))
    assert site_digest(cases) != site_digest(cases[1:])


def test_a_site_threshold_above_the_parents_urgency_threshold_raises_it() -> None:
    """A fine-tune's validation threshold above the parent's urgency threshold (the shipped chest card's 0.5): the
    candidate's urgency threshold follows it (an urgent finding must also be reported); below, it stays."""
    from detector.train.site import with_operating_threshold

    parent = load_model("chest").card
    assert parent.urgency is not None and parent.urgency.threshold == 0.5
    above = with_operating_threshold(parent, 0.78)
    assert (above.operating_threshold, above.urgency.threshold) == (0.78, 0.78)  # type: ignore[union-attr]
    assert above.urgency.classes == parent.urgency.classes  # type: ignore[union-attr]
    below = with_operating_threshold(parent, 0.45)
    assert (below.operating_threshold, below.urgency) == (0.45, parent.urgency)
