"""What a shadow model costs the live run: time from last image to result, live alone vs live + one shadow.

The same studies (copies of a real head CT series with fresh UIDs, ``head_ge_patient``) go through the node's
own parts in one process, twice, each time on a fresh SQLite database: ingested as the receiver does, settled
by the study-completion stage (quiet_s 0.5 s), claimed and run by one worker (one process, as `ctnode serve`
starts by default). Pass A routes them to the shipped head model alone; pass B adds a shadow candidate (a copy
of the head card under another name, so the same cost as the live model) on the same route. Studies arrive
every ``--interval-factor`` x a warm live run's time (default 1.5): in pass B each study after the first arrives
while the previous study's shadow is inferring, the case where a shadow could delay the live run.

A live run's time to result is last instance stored -> run finished (its SR and overlays written and queued
for delivery; delivery itself is not part of it: there is no PACS here). Prints each pass's runs and ends with:
``studies=N live_alone_s=A live_with_shadow_s=B ratio=R shadow_yields=Y shadows_done=D`` (medians over the
live runs; ratio = B / A; the target is ratio <= 1.05), after a line with the live runs' mean wait for the
worker in each pass (the part a shadow can add; the medians also carry the machine's noise). ``--quick``: two
studies.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import Engine, func, select  # noqa: E402

from node.config import Route, Settings  # noqa: E402
from node.db.engine import make_engine  # noqa: E402
from node.db.migrate import upgrade  # noqa: E402
from node.db.schema import AuditEvent, Run  # noqa: E402
from node.events import AuditKind, RunMode, RunStatus  # noqa: E402
from node.pipeline.stabilize import Stabilizer  # noqa: E402
from node.pipeline.worker import Worker  # noqa: E402
from tests.integration.loop import HEAD, write_study  # noqa: E402
from tests.node.test_node_pipeline import Sender  # noqa: E402

MODELS = REPO / "detector" / "registry" / "models"


def candidate_card(folder: Path) -> Path:
    """The shipped head model under another name: a shadow candidate as costly as the live model."""
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads((MODELS / "ctnode-head.json").read_text())
    data["name"] = "ctnode-head-candidate"
    shutil.copyfile(MODELS / data["weights"]["file"], folder / data["weights"]["file"])
    path = folder / "ctnode-head-candidate.json"
    path.write_text(json.dumps(data))
    return path


def settings_for(work: Path, routes: list[Route]) -> Settings:
    return Settings(database={"url": f"sqlite:///{work / 'ctnode.sqlite'}"},
                    storage={"data_dir": work / "data", "min_free_bytes": 0},
                    pipeline={"quiet_s": 0.5, "poll_interval_s": 0.05, "lease_s": 60, "heartbeat_s": 5,
                              "routes": [r.model_dump() for r in routes]})


def run_pass(work: Path, routes: list[Route], studies: list[list[Path]], interval_s: float) -> tuple[Engine, float]:
    """Send ``studies`` every ``interval_s`` through one stabilizer and one worker until every run is finished;
    returns the engine (for the figures) and the pass's wall time."""
    settings = settings_for(work, routes)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    worker = Worker(engine, settings, threading.Event())
    for model in dict.fromkeys([*(r.model for r in routes), *(m for r in routes for m in r.shadows)]):
        worker._model(model)  # loaded before the first study, as run_forever does
    done = threading.Event()

    def send() -> None:
        start = time.monotonic()
        for n, files in enumerate(studies):
            time.sleep(max(0.0, start + n * interval_s - time.monotonic()))
            sender = Sender(engine, settings, calling_ae="MODALITY")
            sender.send(files)
            sender.release()

    def settle() -> None:
        stabilizer = Stabilizer(engine, settings)
        while not done.is_set():
            stabilizer.poll()
            time.sleep(0.05)

    expected = len(studies) * (1 + sum(len(r.shadows) for r in routes))
    threads = [threading.Thread(target=send), threading.Thread(target=settle)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        while True:
            if not worker.run_once():
                with engine.connect() as conn:
                    finished = conn.scalar(select(func.count()).select_from(Run).where(Run.finished_at.is_not(None)))
                if finished >= expected:
                    break
                time.sleep(0.05)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    return engine, time.monotonic() - started


def live_times(engine: Engine, start: str = "last_instance_at") -> list[float]:
    """Each live run's seconds from ``start`` (last instance stored, or ready_at) to finished."""
    with engine.connect() as conn:
        rows = conn.execute(select(getattr(Run, start).label("start"), Run.finished_at, Run.claimed_at, Run.status)
                            .where(Run.mode == str(RunMode.LIVE)).order_by(Run.id)).all()
    assert all(r.status == str(RunStatus.DONE) for r in rows), [r.status for r in rows]
    return [(r.finished_at - r.start).total_seconds() for r in rows]


def live_queue_waits(engine: Engine) -> list[float]:
    """Each live run's seconds from ready to claimed: what a shadow holding the worker could add."""
    with engine.connect() as conn:
        rows = conn.execute(select(Run.ready_at, Run.claimed_at).where(Run.mode == str(RunMode.LIVE))).all()
    return [(r.claimed_at - r.ready_at).total_seconds() for r in rows]


def describe(name: str, engine: Engine, wall_s: float) -> None:
    with engine.connect() as conn:
        rows = conn.execute(select(Run.id, Run.mode, Run.status, Run.attempts, Run.last_instance_at, Run.ready_at,
                                   Run.claimed_at, Run.finished_at).order_by(Run.id)).all()
    print(f"{name} ({wall_s:.1f} s):")
    for r in rows:
        print(f"  run {r.id:2d} {r.mode:6s} {r.status:6s} queue {(r.claimed_at - r.ready_at).total_seconds():6.2f} s"
              f"  last image -> result {(r.finished_at - r.last_instance_at).total_seconds():6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--interval-factor", type=float, default=1.5,
                        help="studies arrive every this x a warm live run's time")
    parser.add_argument("--quick", action="store_true", help="two studies")
    args = parser.parse_args()
    count = 2 if args.quick else args.studies
    with tempfile.TemporaryDirectory(prefix="ctnode-shadow-") as tmp:
        root = Path(tmp)
        studies = [list(write_study(HEAD, root / "studies" / f"s{n}", seed=f"shadow-bench-{n}").files)
                   for n in range(count + 1)]
        live = Route(model="head", body_parts=["HEAD", "BRAIN", "SKULL"])
        shadowed = live.model_copy(update={"shadows": [str(candidate_card(root / "candidate"))]})
        warm, _ = run_pass(root / "warm", [live], studies[:1], 0.0)  # the interval, from a warm live run
        interval_s = args.interval_factor * live_times(warm)[0]
        print(f"warm live run {live_times(warm)[0]:.2f} s; a study every {interval_s:.2f} s")
        alone, wall_a = run_pass(root / "alone", [live], studies[1:], interval_s)
        with_shadow, wall_b = run_pass(root / "shadow", [shadowed], studies[1:], interval_s)
        describe("live alone", alone, wall_a)
        describe("live + one shadow", with_shadow, wall_b)
        a, b = statistics.median(live_times(alone)), statistics.median(live_times(with_shadow))
        with with_shadow.connect() as conn:
            yields = conn.scalar(select(func.count()).select_from(AuditEvent)
                                 .where(AuditEvent.kind == str(AuditKind.RUN_YIELDED)))
            shadows = conn.scalar(select(func.count()).select_from(Run).where(
                Run.mode == str(RunMode.SHADOW), Run.status == str(RunStatus.DONE)))
        wait_a = statistics.mean(live_queue_waits(alone))
        wait_b = statistics.mean(live_queue_waits(with_shadow))
        for engine in (warm, alone, with_shadow):
            engine.dispose()
    print(f"live runs' wait for the worker (ready -> claimed), mean: alone {wait_a:.2f} s, with the shadow "
          f"{wait_b:.2f} s ({(wait_b - wait_a) / a:.1%} of a live run's time to result)")
    print(f"studies={count} live_alone_s={a:.2f} live_with_shadow_s={b:.2f} ratio={b / a:.3f} "
          f"shadow_yields={yields} shadows_done={shadows}")


if __name__ == "__main__":
    main()
