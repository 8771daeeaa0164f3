"""Route modes on real CT (SQLite and PostgreSQL): silent trials, shadow candidates that never touch the live run or
the clinical destinations, review destinations, and the mode in the schema, the runs list and the objects."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy import JSON, Engine, select
from typer.testing import CliRunner

from detector.infer import LoadedModel
from node.cli.main import app
from node.config import Route, Settings
from node.config_check import load_checked, model_name_problems
from node.db.schema import Base, Delivery, Run
from node.events import AuditKind, RunMode, RunStatus
from node.pipeline.queue import claim_run, clinical_run_due, finish_run
from node.pipeline.run_records import list_runs, run_record
from node.pipeline.stabilize import Stabilizer
from node.pipeline.worker import Worker
from tests.node.test_node_pipeline import Sender, audits, chest_files, engine, runs, settings  # noqa: F401
from tests.node.test_node_reliability import MODELS, corrupt_weights, damaged_model
from tests.support import dicom_files, require, require_ct

PACS = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 1}
RESEARCH = {"name": "research", "ae_title": "RESEARCH", "host": "127.0.0.1", "port": 2}
VALIDATOR = Path(__file__).resolve().parents[3] / "shared" / "tools" / "validate-dicom"


def with_routes(settings: Settings, routes: list[Route], **delivery: Any) -> Settings:
    """``settings`` delivering to the PACS by default (and knowing the research PACS), routed by ``routes``."""
    return Settings.model_validate({
        **settings.model_dump(), "pipeline": {**settings.pipeline.model_dump(), "routes": [r.model_dump() for r in routes]},
        "delivery": {"destinations": [PACS, RESEARCH], "default_destinations": ["pacs"], **delivery}})


def candidate_card(folder: Path) -> Path:
    """A copy of the shipped chest model under another name: a candidate card given by its path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads((MODELS / "ctnode-chest.json").read_text())
    data["name"] = "ctnode-chest-candidate"
    shutil.copyfile(MODELS / data["weights"]["file"], folder / data["weights"]["file"])
    path = folder / "ctnode-chest-candidate.json"
    path.write_text(json.dumps(data))
    return path


def deliveries(engine: Engine, run_id: int) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(Delivery.destination).where(Delivery.run_id == run_id)).scalars())


def texts(sr: pydicom.Dataset) -> set[str]:
    """Every Text Value of an SR's content tree."""
    return {str(element.value) for element in sr.iterall() if element.keyword == "TextValue"}


def work_all(worker: Worker) -> None:
    while worker.run_once():
        pass


def test_routes_take_a_mode_shadows_and_a_review_destination_apart_from_the_clinical_ones(tmp_path: Path) -> None:
    route = Route(model="chest", mode="silent", shadows=["head", str(tmp_path / "missing.json")])
    assert route.run_mode is RunMode.SILENT and Route(model="chest").run_mode is RunMode.LIVE
    with pytest.raises(ValidationError, match="cannot shadow itself"):
        Route(model="chest", shadows=["chest"])
    with pytest.raises(ValidationError, match="mode"):
        Route(model="chest", mode="shadow")  # shadow is what a route's candidates are, not a route's mode
    base = {"destinations": [PACS, RESEARCH], "default_destinations": ["pacs"]}
    ok = Settings(delivery=base, pipeline={"routes": [{"model": "chest", "review_destination": "research"}]})
    assert ok.pipeline.routes[0].review_destination == "research"
    for delivery, expected in [(base, "'pacs' receives clinical results"),
                               ({**base, "default_destinations": [], "reply_to": {"PACS": "pacs"}},
                                "'pacs' receives clinical results"),
                               (base | {"destinations": [PACS]}, "names destination 'research', which is not in")]:
        review = "research" if "which is not" in expected else "pacs"
        with pytest.raises(ValidationError, match=expected):
            Settings(delivery=delivery, pipeline={"routes": [{"model": "chest", "review_destination": review}]})
    problems = model_name_problems(Settings(pipeline={"routes": [route.model_dump()]}))
    assert len(problems) == 1 and problems[0].startswith("pipeline.routes.0.shadows.1: no model card")
    config = tmp_path / "ctnode.yaml"
    config.write_text(json.dumps({"storage": {"data_dir": str(tmp_path / "data")}, "delivery": base,
                                  "pipeline": {"routes": [{"model": "chest", "review_destination": "pacs"}]}}))
    settings, lines = load_checked(config)
    assert settings is None and len(lines) == 1 and "pipeline.routes.0.review_destination 'pacs' receives" in lines[0]
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2 and "review destination must be apart from them" in result.output


def _server_default_differs(context: Any, inspected: Any, column: Any, *_: Any) -> bool | None:
    """Alembic's own comparison, except for JSON columns: PostgreSQL has no json = text operator to compare by."""
    return False if isinstance(column.type, JSON) else None


def test_the_schema_and_its_migrations_agree(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "compare_server_default": _server_default_differs})
        assert compare_metadata(context, Base.metadata) == []
    with engine.connect() as conn:
        assert conn.execute(select(Run.mode).limit(1)).all() == []  # the column is there, on every backend


def test_shadow_runs_queue_after_the_live_one_and_are_claimed_after_every_due_live_run(
    engine: Engine, settings: Settings
) -> None:
    settings = with_routes(settings, [Route(model="head", body_parts=["HEAD"]),
                                      Route(model="chest", description_patterns=["chest"], shadows=["cand.json"])])
    chest = Sender(engine, settings)
    chest.send(chest_files()[:10])
    chest.release()
    stabilizer = Stabilizer(engine, settings)
    live_chest, shadow_chest = stabilizer.poll()
    head = Sender(engine, settings)
    head.send(dicom_files(require_ct("head_ge_patient")))
    head.release()
    stabilizer.config = stabilizer.config.model_copy(update={"quiet_s": 0})  # its slice gaps are uneven
    [live_head] = stabilizer.poll()
    by_id = {r.id: r for r in runs(engine)}
    assert [by_id[i].mode for i in (live_chest, shadow_chest, live_head)] == ["live", "shadow", "live"]
    assert by_id[shadow_chest].model == "cand.json" and by_id[shadow_chest].instance_count == 10
    assert "shadow of chest: reads its series after it, never delivered clinically" in by_id[shadow_chest].routing
    queued = [a.detail for a in audits(engine, AuditKind.RUN_QUEUED)]
    assert [(d["run_id"], d["mode"]) for d in queued] == [(live_chest, "live"), (shadow_chest, "shadow"),
                                                          (live_head, "live")]
    assert clinical_run_due(engine)
    order = []
    for worker in ("w1", "w2", "w3"):
        claimed = claim_run(engine, settings.pipeline, worker)
        assert claimed is not None
        order.append((claimed.id, claimed.mode))
        if claimed.mode is not RunMode.SHADOW:
            assert finish_run(engine, claimed)
        assert clinical_run_due(engine) is (len(order) == 1)
    assert order == [(live_chest, RunMode.LIVE), (live_head, RunMode.LIVE), (shadow_chest, RunMode.SHADOW)]
    assert [r["mode"] for r in list_runs(engine)] == ["live", "shadow", "live"]
    assert [r["id"] for r in list_runs(engine, mode="shadow")] == [shadow_chest]


def test_a_silent_route_records_everything_and_delivers_only_to_its_review_destination(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    settings = with_routes(settings, [Route(model="chest", description_patterns=["chest"], mode="silent")])
    files = chest_files()
    sender = Sender(engine, settings)
    sender.send(files)
    sender.release()
    stabilizer = Stabilizer(engine, settings)
    worker = Worker(engine, settings, threading.Event())
    [v1] = stabilizer.poll()
    assert worker.run_once()
    record = run_record(engine, v1)
    assert record is not None and record["status"] == RunStatus.DONE and record["mode"] == "silent"
    assert record["findings"] and {o["kind"] for o in record["outputs"]} == {"SR", "SC"}
    assert all(Path(o["path"]).is_file() for o in record["outputs"])
    assert record["deliveries"] == [] and deliveries(engine, v1) == []  # nothing in the outbox: no review destination

    # the site adds a research PACS to the route: the stabilizer and the worker read the routes at each run
    settings.pipeline.routes = [Route(model="chest", description_patterns=["chest"], mode="silent",
                                      review_destination="research")]
    changed = pydicom.dcmread(files[10])
    changed.ImageComments = "corrected by the modality"
    changed.save_as(tmp_path / "changed.dcm")
    resend = Sender(engine, settings)
    resend.send([tmp_path / "changed.dcm"])
    resend.release()
    [v2] = stabilizer.poll()
    assert worker.run_once()
    record = run_record(engine, v2)
    assert record is not None and record["status"] == RunStatus.DONE and record["mode"] == "silent"
    assert {d["destination"] for d in record["deliveries"]} == {"research"}
    assert sorted(d["sop_instance_uid"] for d in record["deliveries"]) == sorted(o["sop_instance_uid"]
                                                                               for o in record["outputs"])
    sr = pydicom.dcmread(record["outputs"][0]["path"])
    assert sr.SeriesDescription == "SILENT - not for clinical use (AI findings report)"
    assert "SILENT - not for clinical use" in texts(sr)  # a TID 4019 algorithm parameter
    sc = pydicom.dcmread(record["outputs"][1]["path"])
    assert sc.SeriesDescription == "SILENT - not for clinical use (AI findings overlay)"
    result = CliRunner().invoke(app, ["runs", "list", "--mode", "silent", "--json", "-c", _config(tmp_path, settings)])
    assert result.exit_code == 0 and [r["mode"] for r in json.loads(result.output)] == ["silent", "silent"]
    if engine.dialect.name == "sqlite":  # the objects do not depend on the database: validated once
        _validate(Path(record["outputs"][0]["path"]).parent)


def _config(tmp_path: Path, settings: Settings) -> str:
    path = tmp_path / "ctnode.yaml"
    path.write_text(json.dumps({"database": {"url": settings.database.url},
                                "storage": {"data_dir": str(settings.storage.data_dir)}}))
    return str(path)


def _validate(folder: Path) -> None:
    missing = [t for t in ("dciodvfy", "dsrdump", "java") if shutil.which(t) is None]
    require(f"the validator {VALIDATOR} and its tools ({', '.join(missing)})", VALIDATOR.exists() and not missing)
    result = subprocess.run([str(VALIDATOR), str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "with_errors=0" in result.stdout, result.stdout + result.stderr


def test_a_shadow_with_corrupt_weights_fails_with_the_reason_and_the_live_run_is_delivered(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    card = damaged_model(tmp_path / "corrupt", weights=corrupt_weights())
    settings = with_routes(settings, [Route(model="chest", description_patterns=["chest"], shadows=[str(card)],
                                            review_destination="research")])
    sender = Sender(engine, settings)
    sender.send(chest_files())
    sender.release()
    live, shadow = Stabilizer(engine, settings).poll()
    worker = Worker(engine, settings, threading.Event())
    work_all(worker)
    live_record, shadow_record = run_record(engine, live), run_record(engine, shadow)
    assert live_record is not None and shadow_record is not None
    assert live_record["status"] == RunStatus.DONE and live_record["findings"]
    assert {d["destination"] for d in live_record["deliveries"]} == {"pacs"}
    assert len(live_record["deliveries"]) == len(live_record["outputs"])
    assert live_record["timestamps"]["finished_at"] < shadow_record["timestamps"]["claimed_at"]
    assert shadow_record["status"] == RunStatus.FAILED and shadow_record["mode"] == "shadow"
    assert shadow_record["attempts"] == settings.pipeline.max_attempts
    assert shadow_record["error"].startswith(f"model {card} cannot be loaded: ")
    assert shadow_record["outputs"] == [] and deliveries(engine, shadow) == []
    assert [a["kind"] for a in shadow_record["audit"]] == ["run.queued", "run.retry", "run.failed"]
    assert shadow_record["audit"][-1]["detail"]["error"] == shadow_record["error"]


class SlowNetwork(torch.nn.Module):
    """The real network, sleeping ``delay_s`` before each slice batch: a card as slow as a much larger model."""

    def __init__(self, network: torch.nn.Module, delay_s: float) -> None:
        super().__init__()
        self.inner = network
        self.delay_s = delay_s
        self.config = network.config

    def forward(self, images: torch.Tensor) -> Any:
        time.sleep(self.delay_s)
        return self.inner(images)

    def anchors(self, height: int, width: int) -> torch.Tensor:
        return self.inner.anchors(height, width)


class SlowModelWorker(Worker):
    """A worker for which one named model runs slowly: the test's only injection, at the model-loading seam."""

    def __init__(self, *args: Any, slow_model: str, delay_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slow_model, self.delay_s = slow_model, delay_s

    def _model(self, name: str) -> LoadedModel:
        loaded = super()._model(name)
        if name == self.slow_model and not isinstance(loaded.network, SlowNetwork):
            loaded = self._models[name] = replace(loaded, network=SlowNetwork(loaded.network, self.delay_s))
        return loaded


def test_a_slow_shadow_gives_way_to_the_live_run_of_the_next_study(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    card = str(candidate_card(tmp_path / "candidate"))
    delay_s = 1.5  # per batch of 8 slices: the shadow of the 64-slice chest study needs at least 12 s
    settings = with_routes(settings, [Route(model="head", body_parts=["HEAD"]),
                                      Route(model="chest", description_patterns=["chest"], shadows=[card])])
    sender = Sender(engine, settings)
    sender.send(chest_files())
    sender.release()
    stabilizer = Stabilizer(engine, settings)
    live_chest, shadow_chest = stabilizer.poll()
    worker = SlowModelWorker(engine, settings, threading.Event(), slow_model=card, delay_s=delay_s)
    assert worker.run_once()  # the live chest run
    queued: list[int] = []

    def next_study() -> None:  # the head study arrives while the shadow is inferring
        while True:
            with engine.connect() as conn:
                if conn.execute(select(Run.inference_started_at).where(Run.id == shadow_chest)).scalar():
                    break
            time.sleep(0.05)
        time.sleep(delay_s / 2)
        head = Sender(engine, settings)
        head.send(dicom_files(require_ct("head_ge_patient")))
        head.release()
        arrival = Stabilizer(engine, settings)
        arrival.config = arrival.config.model_copy(update={"quiet_s": 0})  # its slice gaps are uneven
        queued.extend(arrival.poll())

    arrival = threading.Thread(target=next_study)
    arrival.start()
    assert worker.process(claim_run(engine, settings.pipeline, worker.name)) == RunStatus.QUEUED  # it yielded
    arrival.join()
    [live_head] = queued
    claimed = claim_run(engine, settings.pipeline, worker.name)
    assert claimed is not None and claimed.id == live_head  # the live run first, then the shadow again
    worker.process(claimed)
    work_all(worker)
    head, shadow = run_record(engine, live_head), run_record(engine, shadow_chest)
    assert head is not None and shadow is not None and head["mode"] == "live"
    assert head["status"] in (RunStatus.DONE, RunStatus.SKIPPED)
    # the live run waited at most about one slice batch of the shadow (and a look), not the shadow's whole read
    batch_s = shadow["durations_s"]["inference"] / 8
    assert head["durations_s"]["queue"] < batch_s + 1.0, (head["durations_s"], batch_s)
    assert head["durations_s"]["queue"] < shadow["durations_s"]["inference"] / 3
    assert shadow["status"] == RunStatus.DONE and shadow["attempts"] == 1  # the yielded attempt did not count
    assert shadow["model_name"] == "ctnode-chest-candidate" and shadow["findings"]
    assert head["timestamps"]["finished_at"] < shadow["timestamps"]["finished_at"]
    assert [a["kind"] for a in shadow["audit"]] == ["run.queued", "run.yielded", "run.done"]
    assert deliveries(engine, shadow_chest) == []  # no review destination: the shadow's objects go nowhere
    sr = pydicom.dcmread(shadow["outputs"][0]["path"])
    assert sr.SeriesDescription == "SHADOW - not for clinical use (AI findings report)"
