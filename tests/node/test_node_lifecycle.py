"""Comparing a shadow candidate with a route's live model, promotion and rollback without a restart (SQLite and
PostgreSQL): real chest runs through the stabilizer and a worker kept alive across the changes, the paired figures'
arithmetic on hand-made data, the refusals, the audit and `ctnode models list`."""

from __future__ import annotations

import json
import shutil
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydantic import ValidationError
from pydicom.uid import generate_uid
from sqlalchemy import JSON, Engine, insert, select
from typer.testing import CliRunner

from detector.evaluate.froc import Froc, bootstrap_weights, candidates_curve, paired_difference
from detector.labels.lesions import LesionRecord
from node.cli.main import app
from node.config import PipelineConfig, PromotionConfig, Route, Settings
from node.db.schema import (
    Base,
    Delivery,
    Feedback,
    FeedbackItem,
    Instance,
    ModelComparison,
    ReportLabel,
    RouteModel,
    Run,
    Series,
    StudyReport,
    utcnow,
)
from node.events import AuditKind, ModelRole, RunStatus
from node.monitor.compare import Pair, Side, agreement, judge, match_findings, study_level
from node.monitor.done_runs import ReadRun
from node.pipeline.assignment import ChangeRefused, current_routes, promote, route_states
from node.pipeline.stabilize import Stabilizer
from node.pipeline.worker import Worker
from tests.node.test_node_pipeline import Sender, audits, chest_files, engine, settings  # noqa: F401

MODELS = Path(__file__).resolve().parents[2] / "detector" / "registry" / "models"
PACS = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 1}
CONFIRMED_MM = 6.0
CANDIDATE_THRESHOLD = 0.40  # the shipped chest card's is 0.4845: the candidate reports more


def candidate_card(folder: Path, threshold: float = CANDIDATE_THRESHOLD) -> Path:
    """The shipped chest card copied under another name and version with another operating threshold, its weights
    beside it: a candidate given by its path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads((MODELS / "ctnode-chest.json").read_text())
    data.update(name="ctnode-chest-candidate", version="0.2.1", operating_threshold=threshold)
    shutil.copyfile(MODELS / data["weights"]["file"], folder / data["weights"]["file"])
    path = folder / "ctnode-chest-candidate.json"
    path.write_text(json.dumps(data))
    return path


def another_study(files: list[Path], folder: Path) -> list[Path]:
    """The same images as a new study (new study, series and instance UIDs), as a second patient visit would be."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    out = []
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(folder / f"{n:03d}.dcm")
        ds.save_as(out[-1])
    return out


def routed(settings: Settings, card: Path, **promotion: Any) -> Settings:
    """The chest route with the candidate as its shadow, delivering to the PACS, with a promotion rule."""
    return Settings.model_validate({
        **settings.model_dump(),
        "pipeline": {**settings.pipeline.model_dump(), "routes": [
            Route(model="chest", body_parts=["CHEST"], description_patterns=["chest|thora|lung"],
                  shadows=[str(card)]).model_dump()]},
        "delivery": {"destinations": [PACS], "default_destinations": ["pacs"]},
        "promotion": promotion})


def config_file(tmp_path: Path, settings: Settings, name: str = "ctnode.yaml") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(json.loads(settings.model_dump_json())))
    return str(path)


def settle_and_work(engine: Engine, stabilizer: Stabilizer, worker: Worker | None, settings: Settings,
                    files: list[Path]) -> list[Run]:
    sender = Sender(engine, settings)
    sender.send(files)
    sender.release()
    queued = stabilizer.poll()
    if worker is not None:
        while worker.run_once():
            pass
    with engine.connect() as conn:
        return list(conn.execute(select(Run).where(Run.id.in_(queued)).order_by(Run.id)).all())


def review(engine: Engine, run: Run, missed_at: tuple[float, float, float]) -> None:
    """A reader's review of ``run`` as the feedback stage records one: its first finding confirmed (measured by the
    reader as 6 mm across), the others rejected, and a lesion it missed at ``missed_at`` (8 mm)."""
    with engine.begin() as conn:
        instance = conn.execute(select(Instance.id, Instance.sop_instance_uid).join(Series)
                                .where(Series.study_id == run.study_id).limit(1)).one()
        feedback_id = conn.execute(insert(Feedback).returning(Feedback.id).values(
            run_id=run.id, study_id=run.study_id, study_instance_uid=run.study_instance_uid, instance_id=instance.id,
            sop_instance_uid=instance.sop_instance_uid, reader="Reader^A", received_at=utcnow(), current=True,
            confirmed=1, rejected=len(run.findings) - 1, edited=0, missed=1)).scalar_one()
        items = [{"feedback_id": feedback_id, "verdict": "confirmed" if n == 0 else "rejected", "finding_index": n,
                  "diameter_mm": CONFIRMED_MM if n == 0 else None, "label": None, "centre_mm": None, "regions": []}
                 for n in range(len(run.findings))]  # one set of keys for every row of an executemany
        items.append({"feedback_id": feedback_id, "verdict": "missed", "finding_index": None, "label": "lung_nodule",
                      "centre_mm": list(missed_at), "diameter_mm": 8.0, "regions": []})
        conn.execute(insert(FeedbackItem), items)


def report_label(engine: Engine, run: Run, value: str) -> None:
    with engine.begin() as conn:
        report_id = conn.execute(insert(StudyReport).returning(StudyReport.id).values(
            study_id=run.study_id, study_instance_uid=run.study_instance_uid, source="hl7", received_at=utcnow(),
            text="Findings: a lung nodule.", current=True)).scalar_one()
        conn.execute(insert(ReportLabel).values(report_id=report_id, finding_type="lung_nodule", value=value,
                                                span_start=10, span_end=23, evidence="a lung nodule", rule="test"))


def false_positives(findings: list[dict[str, Any]], lesion: dict[str, Any]) -> int:
    """Findings that do not hit the confirmed lesion (centre within the reader's radius); the missed lesion lies
    far outside the body."""
    radius = CONFIRMED_MM / 2
    return sum(np.linalg.norm(np.subtract(f["centre_mm"], lesion["centre_mm"])) > radius for f in findings)


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_compare_promote_and_roll_back_on_real_runs_without_a_restart(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    card = candidate_card(tmp_path / "candidate")
    settings = routed(settings, card, min_studies=2, sensitivity_margin=1.0, max_fp_per_scan_increase=10)
    strict = settings.model_copy(update={"promotion": PromotionConfig(min_studies=3)})
    config, strict_config = config_file(tmp_path, settings), config_file(tmp_path, strict, "strict.yaml")
    files = chest_files()
    stabilizer = Stabilizer(engine, settings)  # both kept alive across the promotion and the rollback
    worker = Worker(engine, settings, threading.Event())

    result = cli("models", "promote", str(card), "--route", "chest", "-c", config)
    assert result.exit_code == 1 and "no comparison of" in result.output, result.output

    pairs = []
    for n, study in enumerate([files, another_study(files, tmp_path / "second")]):
        live, shadow = settle_and_work(engine, stabilizer, worker, settings, study)
        assert (live.model, live.mode, shadow.model, shadow.mode) == ("chest", "live", str(card), "shadow")
        assert live.status == shadow.status == RunStatus.DONE and live.findings
        assert live.series_instance_uid == shadow.series_instance_uid
        review(engine, live, missed_at=(999.0, 999.0, 999.0))
        report_label(engine, live, "positive" if n == 0 else "negative")
        pairs.append((live, shadow))

    out = tmp_path / "comparison"
    result = cli("models", "compare", "chest", str(card), "--route", "chest", "--json", "-o", str(out),
                 "--bootstrap", "200", "-c", config)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["studies"] == 2 and report["reviewed_studies"] == 2
    assert report["live"]["name"] == "ctnode-chest" and report["candidate"]["name"] == "ctnode-chest-candidate"
    assert report["candidate"]["version"] == "0.2.1" and report["candidate"]["operating_threshold"] == 0.4
    agree = report["agreement"]
    live_total = sum(len(live.findings) for live, _ in pairs)
    candidate_total = sum(len(shadow.findings) for _, shadow in pairs)
    assert (agree["live_findings"], agree["candidate_findings"]) == (live_total, candidate_total)
    matched = sum(len(match_findings(live.findings, shadow.findings)) for live, shadow in pairs)
    assert candidate_total >= live_total and agree["matched"] == matched >= live_total / 2  # same weights, lower bar
    assert agree["live_matched_share"] == round(matched / live_total, 4) and agree["studies_same_call"] == 2
    lesions = report["lesion_level"]
    assert lesions["studies"] == 2 and lesions["lesions"] == 4  # per study: the confirmed finding and the missed one
    hits = sum(false_positives(shadow.findings, live.findings[0]) < len(shadow.findings) for live, shadow in pairs)
    assert lesions["live"]["sensitivity"]["value"] == 0.5 and lesions["candidate"]["sensitivity"]["value"] == hits / 4
    assert lesions["difference"]["sensitivity"]["value"] == pytest.approx(hits / 4 - 0.5, abs=1e-4)
    fp_live = sum(false_positives(live.findings, live.findings[0]) for live, _ in pairs)
    fp_candidate = sum(false_positives(shadow.findings, live.findings[0]) for live, shadow in pairs)
    difference = (fp_candidate - fp_live) / 2
    assert lesions["difference"]["fp_per_scan"]["value"] == pytest.approx(difference, abs=1e-4)
    low, high = lesions["difference"]["fp_per_scan"]["ci95"]
    assert low <= difference <= high
    [nodule] = report["study_level"]
    assert (nodule["finding_type"], nodule["studies"], nodule["positive"], nodule["negative"]) == \
        ("lung_nodule", 2, 1, 1)
    assert nodule["live"] == {"sensitivity": 1.0, "specificity": 0.0}  # both flag both studies
    assert nodule["difference"]["sensitivity"]["value"] == 0.0
    times = report["time_per_study"]
    assert times["live"]["studies"] == times["candidate"]["studies"] == 2 and times["live"]["median_s"] > 0
    assert (out / "comparison.json").is_file() and (out / "froc.png").stat().st_size > 1000
    with engine.connect() as conn:
        kept = conn.execute(select(ModelComparison)).one()
    assert (kept.id, kept.route, kept.live_model, kept.candidate_model, kept.studies) == \
        (report["id"], "chest", "chest", str(card), 2)
    assert kept.live_weights_sha256 == pairs[0][0].weights_sha256 == kept.candidate_weights_sha256
    assert kept.report_path == str(out) and kept.figures["lesion_level"] == lesions
    assert [a.detail["comparison_id"] for a in audits(engine, AuditKind.MODEL_COMPARED)] == [kept.id]

    result = cli("models", "promote", str(card), "--route", "chest", "-c", strict_config)
    assert result.exit_code == 1, result.output
    assert "does not meet the promotion rule: 2 reviewed studies read by both, promotion.min_studies is 3" \
        in result.output
    result = cli("models", "promote", str(card), "--route", "chest", "--by", "Dr Who", "--reason", "site trial",
                 "-c", config)
    assert result.exit_code == 0, result.output
    assert f"route chest: {card} is live (was chest; comparison {kept.id}, by Dr Who)" in result.output
    [promoted] = audits(engine, AuditKind.MODEL_PROMOTED)
    assert promoted.detail["comparison_id"] == kept.id and promoted.detail["replaced"] == "chest"
    assert promoted.detail["by"] == "Dr Who" and promoted.detail["reason"] == "site trial"
    assert promoted.detail["candidate"]["weights_sha256"] == kept.candidate_weights_sha256
    listed = json.loads(cli("models", "list", "--json", "-c", config).output)
    [chest] = listed
    assert [(m["model"], m["role"]) for m in chest["models"]] == [(str(card), "live"), ("chest", "retired")]
    assert chest["models"][0]["figures"]["studies"] == 2 and chest["models"][1]["figures"]["name"] == "ctnode-chest"
    assert chest["models"][1]["figures"]["acceptance"]["successes"] == 2  # each review confirmed one finding
    assert [c["change"] for c in chest["changes"]] == ["promoted"] and chest["comparisons"][0]["id"] == kept.id

    # the next study: the same stabilizer and worker run the promoted card live, the retired one not at all
    [third] = settle_and_work(engine, stabilizer, worker, settings, another_study(files, tmp_path / "third"))
    assert (third.model, third.mode, third.status, third.model_name) == (str(card), "live", "done",
                                                                         "ctnode-chest-candidate")
    with engine.connect() as conn:
        assert set(conn.execute(select(Delivery.destination).where(Delivery.run_id == third.id)).scalars()) == {"pacs"}

    result = cli("models", "rollback", "--route", "chest", "--reason", "too many marks", "-c", config)
    assert result.exit_code == 0 and f"chest is live again (rolled back {card}" in result.output, result.output
    [rolled] = audits(engine, AuditKind.MODEL_ROLLED_BACK)
    assert rolled.detail["undoes"]["model"] == str(card) and rolled.detail["comparison_id"] == kept.id
    assert rolled.detail["reason"] == "too many marks"
    fourth = settle_and_work(engine, stabilizer, None, settings, another_study(files, tmp_path / "fourth"))
    assert [(r.model, r.mode) for r in fourth] == [("chest", "live"), (str(card), "shadow")]

    result = cli("models", "promote", str(card), "--route", "chest", "-c", config)
    assert result.exit_code == 1 and f"comparison {kept.id} (" in result.output
    assert "is older than route chest's last change" in result.output
    result = cli("models", "rollback", "--route", "chest", "-c", config)
    assert result.exit_code == 1 and "runs its configured model chest: no promotion to roll back" in result.output
    with engine.connect() as conn:
        changes = conn.execute(select(RouteModel).order_by(RouteModel.id)).all()
    assert [(c.seq, c.change, c.model, c.replaced, c.comparison_id) for c in changes] == [
        (1, "promoted", str(card), "chest", kept.id), (2, "rolled_back", "chest", str(card), None)]
    assert changes[1].undoes_id == changes[0].id and changes[0].by == "Dr Who" and changes[1].by
    shown = cli("models", "list", "-c", config)
    assert shown.exit_code == 0, shown.output
    for text in ("route chest", "LIVE", "SHADOW", "PROMOTED", "ROLLED_BACK", f"comparison {kept.id}"):
        assert text in shown.output, shown.output


def test_paired_bootstrap_differences_on_hand_made_figures() -> None:
    # a figure the candidate raises by 0.1 on every study: the difference and both ends of its interval are 0.1
    per_study = np.array([0.2, 0.5, 0.9, 0.4])
    live = lambda w: (w @ per_study) / w.sum(axis=1)
    candidate = lambda w: (w @ (per_study + 0.1)) / w.sum(axis=1)
    shift = paired_difference(candidate, live, 4, rounds=500)
    assert shift.value == pytest.approx(0.1) and shift.ci95 == pytest.approx((0.1, 0.1))
    # an unpaired view of the same data spreads with the studies; the paired one does not
    weights = bootstrap_weights(4, 500)
    assert np.ptp(candidate(weights)) > 0.2
    one = paired_difference(lambda w: w @ np.array([0.7]), lambda w: w @ np.array([0.5]), 1)
    assert one.value == pytest.approx(0.2) and one.ci95 is None  # one study: nothing to resample
    assert np.isnan(paired_difference(candidate, live, 0).value)
    # the same draw as the evaluator's own bootstrap
    lesion = LesionRecord(centre_mm=(0.0, 0.0, 0.0), diameter_mm=10.0, label="n", source="t")
    grid = (0.3, 0.5)
    curves = [candidates_curve(str(k), [((0.0, 0.0, 0.0), 0.6), ((50.0, 0.0, 0.0), 0.4)], [lesion], grid)
              for k in range(3)]
    froc = Froc(grid, curves)
    assert np.array_equal(froc.study_weights(50, seed=3), bootstrap_weights(3, 50, seed=3))
    ones = np.ones((1, 3))
    assert froc.sensitivity_of(ones, 0.5)[0] == 1.0 and froc.fp_per_scan_of(ones, 0.3)[0] == 1.0
    assert froc.fp_per_scan_of(ones, 0.5)[0] == 0.0
    # a candidate at 0.3 against a live model at 0.5 on the same curves: one more FP per scan, the same hits
    fps = paired_difference(lambda w: froc.fp_per_scan_of(w, 0.3), lambda w: froc.fp_per_scan_of(w, 0.5), 3)
    assert fps.value == 1.0 and fps.ci95 == (1.0, 1.0)


def _run(n: int, model: str, findings: list[dict[str, Any]], report: str | None = None) -> ReadRun:
    at = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=n)
    return ReadRun(id=n, study_id=n // 2, model=model, model_name=model, model_version="1", findings=findings,
                   input_facts={}, last_instance_at=at, finished_at=at,
                   report={} if report is None else {"lung_nodule": report})


def _finding(centre: tuple[float, float, float], size: float = 10.0) -> dict[str, Any]:
    return {"centre_mm": list(centre), "size_mm": [size, size, size], "score": 0.9, "label": "lung_nodule"}


def test_study_level_and_agreement_arithmetic_on_hand_made_pairs() -> None:
    nodule = _finding((0, 0, 0))
    # reports: positive, positive, negative, negative, uncertain; live flags 1, 2, 3; the candidate 1 and 5
    calls = [(True, True), (True, False), (True, False), (False, False), (False, True)]
    reports = ["positive", "positive", "negative", "negative", "uncertain"]
    pairs = [Pair(k, Side(_run(2 * k, "live", [nodule] if a else [], reports[k]), "s", "", 1.0),
                  Side(_run(2 * k + 1, "cand", [nodule] if b else [], reports[k]), "s", "", 2.0))
             for k, (a, b) in enumerate(calls)]
    level = study_level(pairs, "lung_nodule", rounds=400)
    assert level is not None and (level["studies"], level["positive"], level["negative"]) == (4, 2, 2)
    assert level["live"] == {"sensitivity": 1.0, "specificity": 0.5}
    assert level["candidate"] == {"sensitivity": 0.5, "specificity": 1.0}
    sens, spec = level["difference"]["sensitivity"], level["difference"]["specificity"]
    assert sens["value"] == -0.5 and spec["value"] == 0.5
    assert -1.0 <= sens["ci95"][0] <= -0.5 <= sens["ci95"][1] <= 0.0
    assert 0.0 <= spec["ci95"][0] <= 0.5 <= spec["ci95"][1] <= 1.0
    assert study_level(pairs, "haemorrhage", rounds=10) is None
    agree = agreement(pairs)
    assert (agree["live_findings"], agree["candidate_findings"], agree["matched"]) == (3, 2, 1)
    assert agree["live_matched_share"] == pytest.approx(1 / 3, abs=1e-4) and agree["candidate_matched_share"] == 0.5
    assert agree["studies_same_call"] == 2


def test_findings_match_in_3d_within_the_larger_radius_one_to_one() -> None:
    a = [_finding((0, 0, 0), 10), _finding((100, 0, 0), 3)]
    b = [_finding((4, 0, 0), 6), _finding((0, 6, 0), 10), _finding((101.5, 0, 0), 1)]
    # (0,0,0)-(4,0,0): 4 mm within 5 (the larger finding's radius); (0,6,0) is 6 mm off: beyond; the small pair
    # 1.5 mm apart matches by the 2 mm floor; each finding matches at most once, nearest first
    assert match_findings(a, b) == [(0, 0), (1, 2)]
    assert match_findings(a, []) == [] and match_findings([_finding((0, 0, 0))] * 2, [_finding((1, 0, 0))]) == [(0, 0)]


def _figures(studies: int, sensitivity: list[float], fps: list[float], cpm: list[float]) -> dict[str, Any]:
    return {"lesion_level": {"studies": studies, "difference": {
        "sensitivity": {"value": 0.0, "ci95": sensitivity}, "fp_per_scan": {"value": 0.0, "ci95": fps},
        "cpm": {"value": 0.0, "ci95": cpm}}}}


def test_the_promotion_rule_says_in_one_line_why_not() -> None:
    rule = PromotionConfig(min_studies=10, sensitivity_margin=0.05, max_fp_per_scan_increase=0.2)
    ok, why = judge(_figures(12, [-0.04, 0.1], [-0.1, 0.15], [-0.01, 0.05]), rule)
    assert ok and why.startswith("12 reviewed studies; sensitivity CI low -0.040 >= -0.05"), why
    for figures, expected in [
        (_figures(9, [0.0, 0.1], [0.0, 0.0], [0.0, 0.1]), "9 reviewed studies read by both, promotion.min_studies is 10"),
        ({"lesion_level": None}, "0 reviewed studies"),
        (_figures(12, [-0.06, 0.1], [0.0, 0.0], [0.0, 0.1]), "sensitivity difference CI low -0.060 is below -0.05"),
        (_figures(12, [0.0, 0.1], [0.0, 0.3], [0.0, 0.1]), "FP/scan difference CI high +0.300 exceeds 0.2"),
    ]:
        ok, why = judge(figures, rule)
        assert not ok and expected in why and "\n" not in why, why
    gain = rule.model_copy(update={"require_cpm_gain": True, "max_fp_per_scan_increase": None})
    assert not judge(_figures(12, [0.0, 0.1], [5.0, 9.0], [0.0, 0.1]), gain)[0]
    assert judge(_figures(12, [0.0, 0.1], [5.0, 9.0], [0.01, 0.1]), gain)[0]  # FP/scan not judged


def test_routes_have_unique_names_and_the_promotion_section_is_validated(tmp_path: Path) -> None:
    assert [r.name for r in PipelineConfig().routes] == ["head", "chest"]
    assert Route(model=str(tmp_path / "site chest.json")).name == "site-chest"
    assert Route(model="chest", name="chest-er").key == "chest-er"
    with pytest.raises(ValidationError, match="route names must be unique, 'chest' is given twice"):
        PipelineConfig(routes=[Route(model="chest", name="chest"), Route(model="head", name="chest")])
    twice = PipelineConfig(routes=[Route(model="chest"), Route(model="chest", calling_aes=["ER"])])
    assert [r.name for r in twice.routes] == ["chest-1", "chest-2"]  # default names made apart by position
    PipelineConfig(routes=[Route(model="chest"), Route(model="chest", name="chest-er", calling_aes=["ER"])])
    with pytest.raises(ValidationError, match="name"):
        Route(model="chest", name="chest er")
    with pytest.raises(ValidationError, match="sensitivity_margin"):
        Settings(promotion={"sensitivity_margin": 2})
    with pytest.raises(ValidationError, match="extra"):
        Settings(promotion={"min_study": 3})


def _server_default_differs(context: Any, inspected: Any, column: Any, *_: Any) -> bool | None:
    return False if isinstance(column.type, JSON) else None  # PostgreSQL cannot compare json with text


def test_the_comparison_and_route_tables_match_their_migration(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "compare_server_default": _server_default_differs})
        assert compare_metadata(context, Base.metadata) == []
        assert conn.execute(select(RouteModel.seq)).all() == conn.execute(select(ModelComparison.figures)).all() == []


def _comparison(engine: Engine, candidate: str, candidate_sha: str, at: datetime) -> int:
    figures = _figures(30, [0.0, 0.1], [0.0, 0.1], [0.0, 0.1])
    with engine.begin() as conn:
        return conn.execute(insert(ModelComparison).returning(ModelComparison.id).values(
            route="chest", live_model="chest", live_name="ctnode-chest", live_version="0.2.0",
            live_weights_sha256=json.loads((MODELS / "ctnode-chest.json").read_text())["weights"]["sha256"],
            candidate_model=candidate, candidate_name="ctnode-chest-candidate", candidate_version="0.2.1",
            candidate_weights_sha256=candidate_sha, created_at=at, studies=30, figures=figures)).scalar_one()


def test_promotion_needs_the_weights_it_measured_and_a_rollback_needs_a_promotion(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    card = candidate_card(tmp_path / "candidate")
    settings = routed(settings, card)
    routes, sha = settings.pipeline.routes, json.loads(card.read_text())["weights"]["sha256"]
    other = _comparison(engine, str(card), "0" * 64, utcnow())
    with pytest.raises(ChangeRefused, match=f"comparison {other} measured other weights of {card}"):
        promote(engine, routes, settings.promotion, "chest", str(card), "me")
    with pytest.raises(ChangeRefused, match="no route 'lungs'"):
        promote(engine, routes, settings.promotion, "lungs", str(card), "me")
    with pytest.raises(ChangeRefused, match="is already the live model"):
        promote(engine, routes, settings.promotion, "chest", "chest", "me")
    good = _comparison(engine, str(card), sha, utcnow())
    change = promote(engine, routes, settings.promotion, "chest", str(card), "me", "trial done")
    assert (change.seq, change.model, change.replaced, change.comparison_id) == (1, str(card), "chest", good)
    [state] = route_states(engine, routes)
    assert state.role(str(card)) is ModelRole.LIVE and state.retired == ("chest",)
    assert current_routes(engine, routes)[0].model == str(card) and current_routes(engine, routes)[0].shadows == []
    assert routes[0].model == "chest"  # the configuration itself is untouched
    result = cli("models", "rollback", "--route", "chest", "-c", config_file(tmp_path, settings))
    assert result.exit_code == 0, result.output
    assert current_routes(engine, routes)[0].model == "chest"
    assert current_routes(engine, routes)[0].shadows == [str(card)]


def test_models_check_and_readyz_load_the_models_the_routes_run_now(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    """After a promotion the route's live model is the promoted card (from the database), not the configured one:
    `ctnode models check` and /readyz load it, and the route's shadows, as they are at each call (no restart)."""
    from node.web.server import start_http
    from tests.node.test_node_reliability import corrupt_weights, damaged_model, get
    from tests.support import free_port

    card = candidate_card(tmp_path / "candidate")
    broken_shadow = damaged_model(tmp_path / "corrupt", weights=corrupt_weights())
    base = routed(settings, card).model_dump()
    [route] = base["pipeline"]["routes"]
    settings = Settings.model_validate({
        **base, "pipeline": {**base["pipeline"], "routes": [{**route, "shadows": [str(card), str(broken_shadow)]}]},
        "metrics": {"host": "127.0.0.1", "port": free_port()}})
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    config = config_file(tmp_path, settings)

    result = cli("models", "check", "-c", config)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("chest: ok: ctnode-chest 0.2.0") and len(lines) == 3, result.output
    assert lines[1].startswith(f"{card} (shadow): ok: ctnode-chest-candidate 0.2.1")
    assert lines[2].startswith(f"{broken_shadow} (shadow): CANNOT BE LOADED: ")

    sha = json.loads(card.read_text())["weights"]["sha256"]
    _comparison(engine, str(card), sha, utcnow())
    promote(engine, settings.pipeline.routes, settings.promotion, "chest", str(card), "me", "trial done")
    weights = card.parent / json.loads(card.read_text())["weights"]["file"]
    weights.write_bytes(corrupt_weights())  # the promoted card's weights damaged after the promotion

    result = cli("models", "check", "-c", config)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{card}: CANNOT BE LOADED: "), result.output  # the live model now
    assert lines[1].startswith(f"{broken_shadow} (shadow): CANNOT BE LOADED: "), result.output
    assert len(lines) == 2 and not any(line.startswith("chest") for line in lines)  # the retired one is not run

    server = start_http(settings, engine, "worker", None, routes=settings.pipeline.routes)
    assert server is not None
    try:
        status, body = get(server.port, "/readyz")
        assert status == 503, body
        checks = {c["name"]: c for c in body["checks"]}
        assert not checks["models"]["ok"] and checks["models"]["detail"].startswith(f"cannot be loaded: {card}: ")
        assert not checks["shadow_models"]["ok"] and str(broken_shadow) in checks["shadow_models"]["detail"]
        assert checks["shadow_models"]["required"] is False

        result = cli("models", "rollback", "--route", "chest", "-c", config)  # the same server sees the change
        assert result.exit_code == 0, result.output
        status, body = get(server.port, "/readyz")
        assert status == 200, body  # the configured model is live again; a broken shadow is named, not fatal
        checks = {c["name"]: c for c in body["checks"]}
        assert checks["models"] == {"name": "models", "ok": True, "detail": "1 routed models load", "required": True}
        assert not checks["shadow_models"]["ok"]
        assert str(card) in checks["shadow_models"]["detail"]  # a shadow again, its weights still damaged
        assert str(broken_shadow) in checks["shadow_models"]["detail"]
    finally:
        server.shutdown()
