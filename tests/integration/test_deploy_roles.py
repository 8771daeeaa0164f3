"""The split-role commands of deploy/ (systemd units, container images, Kubernetes) as real processes over
one PostgreSQL database and one store: the migration first, then receiver, worker and delivery started
with the units' own ExecStart lines, and a rolling restart of the worker in the middle of a queue that
loses no run and runs none twice."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from node.db.engine import make_engine
from node.db.schema import AuditEvent, Delivery, Run
from node.events import AuditKind, RunStatus
from tests.deploy.deploy_support import (
    SYSTEMD,
    ctnode_executable,
    role_command,
    timeout_stop_s,
)
from tests.integration.loop import CHEST, SR_CLASS, write_study
from tests.integration.orthanc import Orthanc
from tests.support import free_port, require_tool, wait_for_port

pytestmark = pytest.mark.integration

STUDIES = 5


class RoleProcess:
    """One `ctnode serve --role ...` as its systemd unit starts it: the unit's ExecStart, the configuration
    file, and the database URL from the environment (the unit's EnvironmentFile, the pod's Secret)."""

    def __init__(self, unit: str, config: Path, db_url: str, log: Path) -> None:
        self.unit = SYSTEMD / unit
        self.metrics_port = free_port()
        env = {**os.environ, "CTNODE_DATABASE__URL": db_url, "CTNODE_METRICS__PORT": str(self.metrics_port)}
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(role_command(self.unit, ctnode_executable(), config), env=env,
                                            stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.metrics_port, timeout_s=120, process=self.process)

    def children(self) -> set[int]:
        """Process ids whose parent is this `serve` (its detection worker processes among them)."""
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.process.pid:
                    found.add(int(entry.name))
        return found

    def terminate(self) -> int:
        """SIGTERM, as systemd's stop (and Kubernetes' pod deletion) sends it; the exit status, which must come
        within the unit's TimeoutStopSec (after which systemd would SIGKILL)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_stop_s(self.unit))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.unit.name} did not stop within TimeoutStopSec\n{self.tail()}") from None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _pid(worker: str | None) -> int:
    return int(str(worker).rsplit(":", 1)[1])


def _storescu(port: int, files: tuple[Path, ...]) -> None:
    subprocess.run([require_tool("storescu"), "-aet", "STORESCU", "-aec", "CTNODE", "127.0.0.1", str(port),
                    *map(str, files)], check=True, capture_output=True, timeout=300)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # the database the split roles share
def test_rolling_worker_restart_mid_queue_loses_and_repeats_no_run(db_url: str, tmp_path: Path) -> None:
    orthanc = Orthanc(tmp_path / "orthanc").start()
    port = free_port()
    config = tmp_path / "ctnode.yaml"
    config.write_text(yaml.safe_dump({
        "dicom": {"host": "127.0.0.1", "port": port, "allowed": [{"ae_title": "STORESCU", "host": "127.0.0.1"}]},
        "storage": {"data_dir": str(tmp_path / "shared"), "min_free_bytes": 0},
        "logging": {"format": "json", "level": "INFO"},
        "delivery": {"destinations": [{"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                                       "port": orthanc.dicom_port}],
                     "default_destinations": ["pacs"], "poll_interval_s": 0.2},
        "pipeline": {"workers": 1, "quiet_s": 30, "poll_interval_s": 0.2, "lease_s": 600, "threads": 1},
        "metrics": {"host": "127.0.0.1", "port": 0},
    }))
    processes: list[RoleProcess] = []
    engine = make_engine(db_url)

    def start(unit: str, name: str) -> RoleProcess:
        process = RoleProcess(unit, config, db_url, tmp_path / f"{name}.log")
        processes.append(process)
        return process

    try:
        # ctnode-migrate.service / the migrate Job / compose's migrate service, before any role
        migrate = subprocess.run(role_command(SYSTEMD / "ctnode-migrate.service", ctnode_executable(), config),
                                 env={**os.environ, "CTNODE_DATABASE__URL": db_url}, capture_output=True, text=True,
                                 timeout=300, check=False)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        receiver = start("ctnode-receiver.service", "receiver")
        wait_for_port(port, process=receiver.process)
        delivery = start("ctnode-delivery.service", "delivery")
        old_worker = start("ctnode-worker.service", "worker-old")

        studies = [write_study(CHEST, tmp_path / f"study-{n}", f"rolling-{n}", slices=slice(16, 48))
                   for n in range(STUDIES)]
        senders = [threading.Thread(target=_storescu, args=(port, s.files)) for s in studies]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()

        # Wait until the old worker is in the middle of an inference with more runs queued behind it.
        interrupted = None
        deadline = time.monotonic() + 600
        while interrupted is None:
            assert time.monotonic() < deadline, f"the old worker never ran a study\n{old_worker.tail()}"
            with engine.connect() as conn:
                runs = conn.execute(select(Run)).all()
            mine = [r for r in runs if r.status == RunStatus.RUNNING and r.inference_started_at is not None
                    and r.inference_ended_at is None and _pid(r.worker) in old_worker.children()]
            if mine and sum(r.status == RunStatus.QUEUED for r in runs) + (len(studies) - len(runs)) > 0:
                interrupted = mine[0]
            else:
                time.sleep(0.05)

        # Rolling update: the new worker first (surge), then SIGTERM to the old one.
        new_worker = start("ctnode-worker.service", "worker-new")
        assert old_worker.terminate() == 0, old_worker.tail()

        deadline = time.monotonic() + 900
        while True:
            with engine.connect() as conn:
                runs = conn.execute(select(Run)).all()
                states = conn.execute(select(Delivery.state)).scalars().all()
            if len(runs) >= len(studies) and all(r.status == RunStatus.DONE for r in runs) and states \
                    and set(states) == {"delivered"}:
                break
            assert time.monotonic() < deadline, f"runs {[(r.id, r.status) for r in runs]}\n{new_worker.tail()}"
            assert all(r.status != RunStatus.FAILED for r in runs), [r.error for r in runs]
            time.sleep(0.5)

        with engine.connect() as conn:
            deliveries = conn.execute(select(Delivery)).all()
            released = conn.execute(select(AuditEvent).where(AuditEvent.kind == str(AuditKind.RUN_RELEASED))).all()
        # no run lost, none repeated: one run per study, each done on its first counted attempt
        assert sorted(r.study_instance_uid for r in runs) == sorted(s.study_instance_uid for s in studies)
        assert all(r.version == 1 and r.attempts == 1 for r in runs), [(r.id, r.version, r.attempts) for r in runs]
        # the run the old worker was reading when SIGTERM came (the one seen mid-inference, or the next one if it
        # finished that one in between) went back to the queue, and the new worker finished it
        assert len(released) == 1, [e.study_instance_uid for e in released]
        finished = next(r for r in runs if r.study_instance_uid == released[0].study_instance_uid)
        assert _pid(finished.worker) in new_worker.children()
        # every result object delivered once, and the PACS holds one SR per study
        assert len(deliveries) == len({(d.sop_instance_uid, d.destination) for d in deliveries})
        per_study: Counter[str] = Counter()
        for instance in orthanc.get("/instances"):
            tags = orthanc.get(f"/instances/{instance}/simplified-tags")
            if tags.get("SOPClassUID") == SR_CLASS:
                per_study[tags["StudyInstanceUID"]] += 1
        assert per_study == Counter({s.study_instance_uid: 1 for s in studies})
        assert receiver.process.poll() is None and delivery.process.poll() is None
    finally:
        statuses: dict[str, Any] = {}
        for process in processes:
            if process.process.poll() is None:
                statuses[process.log.stem] = process.terminate()
        engine.dispose()
        orthanc.stop()
    assert all(status == 0 for status in statuses.values()), statuses
