"""Triage end to end: storescu sends a `ctnode synth` head study with a haemorrhage and a contrast head the
domain gate refuses; the RIS (python-hl7's MLLP server) gets an acknowledged ORU for each (suspected positive,
not analysed), and Orthanc, the PACS, stores the "not analysed" SR and page in the refused study."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from node.db.engine import make_engine
from node.db.schema import AuditEvent, Notification, Run
from node.events import AuditKind, DeliveryState, RunStatus
from tests.integration.loop import HEAD, node_sections, orthanc_with_node, results_in_orthanc
from tests.integration.orthanc import Orthanc
from tests.integration.ris import Ris
from tests.support import REPO, NodeProcess, free_port, require_ct, require_tool, write_contrast_enhanced

pytestmark = pytest.mark.integration


@pytest.fixture
def ris() -> Iterator[Ris]:
    server = Ris(free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = orthanc_with_node(tmp_path / "orthanc", free_port())
    yield server
    server.stop()


def _storescu(port: int, files: list[Path]) -> None:
    subprocess.run([require_tool("storescu"), "-aet", "STORESCU", "-aec", "CTNODE", "127.0.0.1", str(port),
                    *map(str, files)], check=True, capture_output=True, timeout=300)


def _synth_head(out: Path) -> list[Path]:
    """A `ctnode synth` head study whose haemorrhage the shipped head model scores about 0.8 (seed 2)."""
    subprocess.run([sys.executable, "-m", "node", "synth", str(require_ct(HEAD)), "-o", str(out), "--target", "head",
                    "--studies", "1", "--lesions", "2", "--seed", "2"], check=True, capture_output=True, cwd=REPO,
                   timeout=300)
    (study,) = [p for p in out.iterdir() if p.is_dir()]
    return sorted(study.glob("*.dcm"))


def _results(orthanc: Orthanc, study_instance_uid: str, node: NodeProcess) -> dict[str, list[dict[str, Any]]]:
    """The study's objects in Orthanc once its SR arrived (the study exists there only from our first object)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if orthanc.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_instance_uid}}):
            found = results_in_orthanc(orthanc, study_instance_uid)
            if found.get("SR") and len(found) > 1:
                return found
        time.sleep(0.25)
    raise AssertionError(f"no SR and page in Orthanc for the refused study\n{node.log()[-3000:]}")


def test_an_urgent_head_and_a_refused_head_reach_the_ris_acknowledged(tmp_path: Path, ris: Ris,
                                                                      orthanc: Orthanc) -> None:
    hung = Ris(free_port(), mode="silent").start()  # a second RIS that reads and never answers
    sections = node_sections(orthanc)
    sections["delivery"]["default_destinations"] = ["pacs"]
    sections["notify"] = {"channels": [{"name": "ris", "kind": "hl7", "host": "127.0.0.1", "port": ris.port,
                                        "receiving_application": "RIS", "timeout_s": 5},
                                       {"name": "hung", "kind": "hl7", "host": "127.0.0.1", "port": hung.port,
                                        "timeout_s": 30}],
                          "backoff_initial_s": 0.5, "backoff_max_s": 2}
    sections["pipeline"]["routes"] = [{"model": "head", "body_parts": ["HEAD", "BRAIN"],
                                       "description_patterns": ["head|brain"], "notify": ["ris", "hung"]}]
    node = NodeProcess(tmp_path / "node", f"sqlite:///{tmp_path / 'node.sqlite'}", sections=sections).start()
    try:
        urgent = _synth_head(tmp_path / "synth")
        refused = write_contrast_enhanced(require_ct(HEAD), tmp_path / "contrast", agent="IOHEXOL")
        _storescu(node.port, urgent)
        _storescu(node.port, refused)
        told = ris.wait_for(2, timeout_s=300)
        urgent_uid = str(pydicom.dcmread(urgent[0], stop_before_pixels=True).StudyInstanceUID)
        refused_header = pydicom.dcmread(refused[0], stop_before_pixels=True)
        by_study = {}
        for received in told:
            uid = next(str(s(5)) for s in received.message.segments("OBX") if str(s(3)).startswith("113014"))
            by_study[uid] = received.message
        positive, not_analysed = by_study[urgent_uid], by_study[str(refused_header.StudyInstanceUID)]
        decision = {uid: next(str(s(5)).split("^")[0] for s in m.segments("OBX") if str(s(3)).startswith("TRIAGE"))
                    for uid, m in by_study.items()}
        assert decision == {urgent_uid: "suspected_positive", str(refused_header.StudyInstanceUID): "not_analysed"}
        assert str(positive.segment("OBR")(5)) == "S" and str(not_analysed.segment("OBR")(5)) == "R"
        assert str(not_analysed.segment("PID")(3)).split("^")[0] == str(refused_header.PatientID)
        reason = next(str(s(5)) for s in not_analysed.segments("OBX") if str(s(3)).startswith("REASON"))
        assert "domain gate" in reason and "contrast" in reason

        # the refused study says so in the PACS: the not-analysed SR and its page
        found = _results(orthanc, str(refused_header.StudyInstanceUID), node)
        assert found["SR"][0]["SeriesDescription"] == "AI result: NOT ANALYSED (not for diagnosis)"
        pages = [o["SeriesDescription"] for modality, objects in found.items() if modality != "SR" for o in objects]
        assert pages == ["AI result: NOT ANALYSED (page)"]

        engine = make_engine(node.config["database"]["url"])
        with engine.connect() as conn:
            rows = conn.execute(select(Notification.run_id, Notification.state, Notification.attempts,
                                       Notification.acknowledged_at, Notification.last_image_at)
                                .where(Notification.channel == "ris")).all()
            waiting = conn.execute(select(Notification.state).where(Notification.channel == "hung")).scalars()
            assert list(waiting) == [str(DeliveryState.PENDING)] * 2  # the hung RIS held up only its own channel
            runs = dict(conn.execute(select(Run.id, Run.status)).all())
            kinds = conn.execute(select(AuditEvent.kind).where(AuditEvent.kind.like("notification.%"))).scalars()
            kinds = sorted(kinds)
        kinds = [k for k in kinds if k != str(AuditKind.NOTIFICATION_FAILED)]
        assert sorted(runs[r.run_id] for r in rows) == sorted([str(RunStatus.DONE), str(RunStatus.SKIPPED)])
        assert all(r.state == str(DeliveryState.DELIVERED) and r.attempts == 1 for r in rows)
        assert all(r.acknowledged_at > r.last_image_at for r in rows)
        assert kinds == [str(AuditKind.NOTIFICATION_ACKNOWLEDGED)] * 2 + [str(AuditKind.NOTIFICATION_QUEUED)] * 4
        listed = json.loads(node.cli("notifications", "list", "--json").stdout)
        assert {n["decision"] for n in listed} == {"suspected_positive", "not_analysed"}
        assert all(n["notify_s"] is not None and n["notify_s"] > 0 for n in listed if n["channel"] == "ris")
        shown = node.cli("runs", "show", str(listed[0]["run_id"]))
        assert "notifications" in shown.stdout and "triage:" in shown.stdout
        assert str(refused_header.PatientID) not in node.log()
    finally:
        node.stop()
        hung.stop()
