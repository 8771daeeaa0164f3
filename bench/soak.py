"""Soak: studies from several DCMTK and pynetdicom clients through split roles on PostgreSQL, under kill -9s of
every role, a PostgreSQL restart and the PACS (Orthanc) down for a while; bounded, loopback only.

Copies of one real CT series (new Study/Series/SOP Instance UIDs per study) are sent by ``--clients`` clients
(storescu and pynetdicom in turn, a failed send is sent again whole) to `ctnode serve --role receiver`; `--role
worker` and `--role delivery` run beside it on one PostgreSQL database and one data folder, delivering to
Orthanc. Meanwhile a chaos thread kill -9s the process group of a random role ``--kills`` times (restarting it),
restarts PostgreSQL (immediate shutdown) once, and stops Orthanc for ``--pacs-down-s``. The end is one line:

    studies=N runs_done=N lost=0 duplicated_deliveries=0 kills=K notified=N notify_lost=0 notify_duplicates=0

``lost``: studies without a done run whose every output is in Orthanc. ``duplicated_deliveries``: objects the
audit shows acknowledged by the PACS more than once (successful attempts beyond the first, per object and
destination). Each study's triage result is also told to a RIS (python-hl7's MLLP server, in this process) over
HL7: ``notified`` counts studies whose notification the RIS acknowledged and the audit records as delivered,
``notify_lost`` those without, ``notify_duplicates`` studies the RIS accepted under more than one control ID (a
resend after a killed delivery role carries the same one). Exit status 1 when anything is lost or duplicated, or
the deadline passes.

With the notification channel (2026-12-07, this 2-core machine): ``--studies 8 --kills 8`` (kill -9s of the
receiver, worker and delivery roles at random, PostgreSQL restarted, Orthanc down) printed ``studies=8 runs_done=8
lost=0 duplicated_deliveries=0 kills=8 notified=8 notify_lost=0 notify_duplicates=0``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import yaml
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from node.db.engine import normalise_url
from node.db.schema import Delivery, DeliveryAttempt, Notification, Run
from node.events import AttemptOutcome, RunStatus

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.ris import Ris  # noqa: E402

ROLES = ("receiver", "worker", "delivery")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on {port}")


def say(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Postgres:
    """A throwaway PostgreSQL cluster in a folder of its own under /tmp (run as the postgres user when this runs as
    root: the work folder may be closed to it) that can be restarted; removed by ``stop``."""

    def __init__(self) -> None:
        self.bin = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: float(p.parent.name))[-1])
        self.home = Path(tempfile.mkdtemp(prefix="ctnode-soak-pg-"))
        self.folder, self.port = self.home / "data", free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.home, "postgres", "postgres")

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.folder), *args], check=True,
                       stdout=subprocess.DEVNULL)

    def start(self) -> Postgres:
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            if self.as_user:
                shutil.chown(self.folder, "postgres", "postgres")
            subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(self.folder), "-A", "trust",
                            "-U", "postgres"], check=True, stdout=subprocess.DEVNULL)
        self._ctl("-l", str(self.folder / "server.log"), "-w", "-o",
                  f"-h 127.0.0.1 -p {self.port} -k /tmp -c max_connections=200", "start")
        return self

    def restart(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")  # as a crash: no checkpoint, connections cut
        time.sleep(2)
        self.start()

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")
        shutil.rmtree(self.home, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


class Orthanc:
    """The PACS: Orthanc with its own storage, loopback only; stopping and starting it keeps what it stored."""

    def __init__(self, folder: Path, node_port: int) -> None:
        self.folder, self.http_port, self.dicom_port = folder, free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "orthanc.json").write_text(json.dumps({
            "Name": "soak", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "DicomModalities": {"ctnode": ["CTNODE", "127.0.0.1", node_port]}, "DicomCheckCalledAet": False,
            "StorageCompression": False}))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen(["Orthanc", str(self.folder / "orthanc.json")], stdout=log,
                                        stderr=subprocess.STDOUT)
        wait_for_port(self.http_port)
        wait_for_port(self.dicom_port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)

    def has(self, sop_instance_uid: str) -> bool:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/tools/lookup",
                                         data=sop_instance_uid.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            return any(item.get("Type") == "Instance" for item in json.loads(response.read()))


@dataclass
class Role:
    """One `ctnode serve --role NAME` process group, restarted after each kill."""

    name: str
    config: Path
    logs: Path
    process: subprocess.Popen[bytes] | None = None
    kills: int = 0

    def start(self) -> None:
        log = (self.logs / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "node", "serve", "-c", str(self.config),
                                         "--role", self.name], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def kill(self) -> None:
        """kill -9 the role's whole process group (its serve and every child: workers, sibling receivers)."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def make_studies(source: Path, out: Path, count: int) -> list[tuple[str, Path]]:
    """``count`` copies of the series under ``source``, each a new study: (Study Instance UID, folder)."""
    files = sorted(p for p in source.rglob("*") if p.is_file() and pydicom.misc.is_dicom(p))
    studies = []
    for n in range(count):
        folder = out / f"study-{n:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        study_uid = generate_uid(entropy_srcs=["ctnode-soak", str(n)])
        for index, path in enumerate(files):
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=["ctnode-soak", str(n), str(ds.SeriesInstanceUID)])
            ds.SOPInstanceUID = generate_uid(entropy_srcs=["ctnode-soak", str(n), str(ds.SOPInstanceUID)])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(folder / f"{index:04d}.dcm")
        studies.append((study_uid, folder))
    return studies


def send_storescu(folder: Path, port: int) -> bool:
    result = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "CTNODE", "-to", "30", "-ta", "30", "-td", "60",
                             "+sd", "127.0.0.1", str(port), str(folder)], capture_output=True, timeout=600)
    return result.returncode == 0 and b"E:" not in result.stderr


def send_pynetdicom(folder: Path, port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="SOAKSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    for syntax in {str(ds.file_meta.TransferSyntaxUID) for ds in datasets}:
        ae.add_requested_context(CTImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="CTNODE")
    try:
        if not assoc.is_established:
            return False
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or status.Status != 0:
                return False
        assoc.release()
        return True
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()


@dataclass
class Clients:
    """Clients sending studies until every one was acknowledged whole (a send cut by a kill is sent again)."""

    studies: list[tuple[str, Path]]
    port: int
    count: int
    gap_s: tuple[float, float]
    sends: int = 0
    resends: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        queue = list(self.studies)
        threads = [threading.Thread(target=self._client, args=(i, queue), name=f"client-{i}")
                   for i in range(self.count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _client(self, index: int, queue: list[tuple[str, Path]]) -> None:
        send = send_storescu if index % 2 == 0 else send_pynetdicom
        while True:
            with self._lock:
                if not queue:
                    return
                _, folder = queue.pop(0)
            while True:
                try:
                    done = send(folder, self.port)
                except Exception:  # a receiver killed mid-association: send it again
                    done = False
                with self._lock:
                    self.sends += 1
                    self.resends += not done
                if done:
                    break
                time.sleep(1)
            time.sleep(random.uniform(*self.gap_s))  # sends spread over the kills


def write_config(work: Path, db_url: str, port: int, pacs: Orthanc, ris_port: int) -> Path:
    config = {
        "dicom": {"host": "127.0.0.1", "port": port, "accept_any": True},
        "storage": {"data_dir": str(work / "data"), "min_free_bytes": 0},
        "database": {"url": db_url},
        "logging": {"format": "json", "level": "INFO"},
        "pipeline": {"workers": 1, "quiet_s": 5, "poll_interval_s": 0.5, "lease_s": 20, "heartbeat_s": 2,
                     "max_attempts": 100, "retry_delay_s": 2, "threads": 1,
                     "routes": [{"model": "head", "body_parts": ["HEAD", "BRAIN"], "notify": ["ris"]}]},
        "notify": {"channels": [{"name": "ris", "kind": "hl7", "host": "127.0.0.1", "port": ris_port, "timeout_s": 5,
                                 "decisions": ["suspected_positive", "negative", "not_analysed"]}],
                   "max_attempts": 1000, "backoff_initial_s": 1, "backoff_max_s": 5, "lease_s": 20},
        "delivery": {"destinations": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                       "port": pacs.dicom_port}],
                     "default_destinations": ["pacs"], "max_attempts": 1000, "backoff_initial_s": 2,
                     "backoff_max_s": 10, "poll_interval_s": 0.5, "lease_s": 30, "acse_timeout_s": 10,
                     "dimse_timeout_s": 30, "network_timeout_s": 30},
        "metrics": {"port": 0},
    }
    path = work / "ctnode.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def progress(engine: Engine, study_uids: set[str]) -> tuple[int, int, int]:
    """(studies with a done run, deliveries and notifications pending, dead), from the audit database."""
    with engine.connect() as conn:
        done = set(conn.execute(select(Run.study_instance_uid).where(Run.status == str(RunStatus.DONE))).scalars())
        states = dict(conn.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all())
        told = dict(conn.execute(select(Notification.state, func.count()).group_by(Notification.state)).all())
    return (len(done & study_uids), states.get("pending", 0) + told.get("pending", 0),
            states.get("dead", 0) + told.get("dead", 0))


def notify_audit(engine: Engine, study_uids: set[str], ris: Ris) -> tuple[int, int, int]:
    """(notified, notify_lost, notify_duplicates) at the end."""
    with engine.connect() as conn:
        delivered = set(conn.execute(select(Notification.study_instance_uid)
                                     .where(Notification.state == "delivered")).scalars())
    ids: dict[str, set[str]] = {}
    for received in ris.acknowledged():
        uid = next((str(seg(5)) for seg in received.message.segments("OBX") if str(seg(3)).startswith("113014")), "")
        ids.setdefault(uid, set()).add(received.control_id)
    notified = {uid for uid in study_uids if uid in delivered and uid in ids}
    return len(notified), len(study_uids - notified), sum(len(v) > 1 for k, v in ids.items() if k in study_uids)


def audit(engine: Engine, study_uids: set[str], pacs: Orthanc) -> tuple[int, int, int]:
    """(runs_done, lost, duplicated_deliveries) at the end."""
    with engine.connect() as conn:
        done = {uid: run_ids for uid, run_ids in _group(conn.execute(
            select(Run.study_instance_uid, Run.id).where(Run.status == str(RunStatus.DONE))).all()).items()}
        deliveries = conn.execute(select(Delivery.id, Delivery.run_id, Delivery.sop_instance_uid,
                                         Delivery.study_instance_uid, Delivery.state)).all()
        acknowledged = conn.execute(select(DeliveryAttempt.delivery_id, func.count())
                                    .where(DeliveryAttempt.outcome.in_([str(AttemptOutcome.SUCCESS),
                                                                        str(AttemptOutcome.WARNING)]))
                                    .group_by(DeliveryAttempt.delivery_id)).all()
    lost = 0
    for uid in study_uids:
        outputs = [d for d in deliveries if d.study_instance_uid == uid]
        if uid not in done or not outputs or not all(d.state == "delivered" and pacs.has(d.sop_instance_uid)
                                                     for d in outputs):
            lost += 1
    duplicated = sum(count - 1 for _, count in acknowledged if count > 1)
    return sum(len(v) for k, v in done.items() if k in study_uids), lost, duplicated


def _group(rows: list[Any]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for key, value in rows:
        grouped.setdefault(key, []).append(value)
    return grouped


def chaos(roles: dict[str, Role], kills: int, postgres: Postgres, pacs: Orthanc, pacs_down_s: float,
          stop: threading.Event, gap_s: tuple[float, float], rng: random.Random) -> None:
    """Kill -9 random roles (each at least once), restart PostgreSQL after a third of the kills, stop the PACS for
    ``pacs_down_s`` after two thirds."""
    order = [*ROLES, *(rng.choice(ROLES) for _ in range(max(0, kills - len(ROLES))))][:kills]
    rng.shuffle(order)
    for n, name in enumerate(order):
        if stop.wait(rng.uniform(*gap_s)):
            return
        roles[name].kill()
        say(f"kill -9 {name} ({n + 1}/{kills})")
        time.sleep(rng.uniform(0.5, 2))
        roles[name].start()
        if n == kills // 3:
            say("PostgreSQL restart (immediate shutdown)")
            postgres.restart()
        if n == 2 * kills // 3:
            say(f"PACS down for {pacs_down_s:g} s")
            pacs.stop()
            if stop.wait(pacs_down_s):
                pacs.start()
                return
            pacs.start()
            say("PACS up again")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "ct" / "head_ge_patient")
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--kills", type=int, default=21)
    parser.add_argument("--kill-gap-s", type=float, nargs=2, default=(5.0, 20.0))
    parser.add_argument("--send-gap-s", type=float, nargs=2, default=(5.0, 40.0))
    parser.add_argument("--pacs-down-s", type=float, default=60.0)
    parser.add_argument("--deadline-s", type=float, default=2400.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctnode-soak"))
    parser.add_argument("--quick", action="store_true", help="2 studies, 2 clients, 2 kills, the PACS down 4 s (CI)")
    args = parser.parse_args()
    if args.quick:
        args.studies, args.clients, args.kills, args.pacs_down_s = 2, 2, 2, 4.0
        args.kill_gap_s, args.send_gap_s, args.deadline_s = (2.0, 5.0), (1.0, 3.0), 600.0
    rng = random.Random(args.seed)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    (args.work / "logs").mkdir()
    studies = make_studies(args.source, args.work / "studies", args.studies)
    study_uids = {uid for uid, _ in studies}
    with ExitStack() as cleanup:  # whatever fails, every process this started is stopped, in reverse order
        postgres = Postgres().start()
        cleanup.callback(postgres.stop)
        port = free_port()
        pacs = Orthanc(args.work / "orthanc", port)
        pacs.start()
        cleanup.callback(pacs.stop)
        ris = Ris(free_port()).start()
        cleanup.callback(ris.stop)
        config = write_config(args.work, postgres.url, port, pacs, ris.port)
        subprocess.run([sys.executable, "-m", "node", "db", "upgrade", "-c", str(config)], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        roles = {name: Role(name, config, args.work / "logs") for name in ROLES}
        for role in roles.values():
            role.start()
            cleanup.callback(role.stop)
        wait_for_port(port)
        engine = create_engine(normalise_url(postgres.url), pool_pre_ping=True)
        cleanup.callback(engine.dispose)
        stop = threading.Event()
        chaos_thread = threading.Thread(target=chaos, args=(roles, args.kills, postgres, pacs, args.pacs_down_s,
                                                            stop, tuple(args.kill_gap_s), rng), name="chaos")
        clients = Clients(studies, port, args.clients, tuple(args.send_gap_s))
        client_thread = threading.Thread(target=clients.run, name="clients")
        started = time.monotonic()
        chaos_thread.start()
        client_thread.start()
        finished = False
        try:
            while time.monotonic() - started < args.deadline_s:
                time.sleep(5)
                try:
                    done, pending, dead = progress(engine, study_uids)
                except Exception as exc:  # PostgreSQL restarting
                    say(f"progress unknown: {type(exc).__name__}")
                    continue
                say(f"studies done {done}/{len(studies)}, deliveries and notifications pending {pending}, dead {dead}, "
                    f"sends {clients.sends} (again after a failure: {clients.resends})")
                if (not client_thread.is_alive() and not chaos_thread.is_alive() and done == len(studies)
                        and not pending):
                    finished = True
                    break
        finally:
            stop.set()
            chaos_thread.join()
            client_thread.join(timeout=600)
        runs_done, lost, duplicated = audit(engine, study_uids, pacs)
        notified, notify_lost, notify_duplicates = notify_audit(engine, study_uids, ris)
        kills = sum(role.kills for role in roles.values())
    print(f"studies={len(studies)} runs_done={runs_done} lost={lost} duplicated_deliveries={duplicated} kills={kills} "
          f"notified={notified} notify_lost={notify_lost} notify_duplicates={notify_duplicates}")
    if not finished:
        say(f"deadline of {args.deadline_s:g} s passed before every study was delivered")
    return 0 if finished and lost == duplicated == notify_lost == notify_duplicates == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
