"""The worker records the read series' input facts with its findings, and the monitor reads them back (SQLite and
PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from node.config import Settings
from node.db.engine import make_engine
from node.db.migrate import upgrade
from node.db.schema import Run, utcnow
from node.monitor.figures import compute_figures
from node.monitor.periods import PeriodKind
from node.pipeline.stabilize import Stabilizer
from node.pipeline.worker import Worker
from tests.node.test_node_pipeline import Sender, chest_files


def test_a_done_run_carries_its_input_facts_and_counts_in_the_figures(db_url: str, tmp_path: Path) -> None:
    settings = Settings(database={"url": db_url}, storage={"data_dir": tmp_path / "data", "min_free_bytes": 0},
                        pipeline={"quiet_s": 30, "lease_s": 30, "heartbeat_s": 5})
    upgrade(db_url)
    engine = make_engine(db_url)
    sender = Sender(engine, settings)
    sender.send(chest_files())
    sender.release()
    [run_id] = Stabilizer(engine, settings).poll()
    assert Worker(engine, settings, threading.Event()).run_once()
    with engine.connect() as conn:
        facts = conn.execute(select(Run.input_facts).where(Run.id == run_id)).scalar_one()
    assert (facts["manufacturer"], facts["manufacturer_model_name"], facts["convolution_kernel"]) == (
        "Philips", "Brilliance16", "L")
    assert facts["slice_thickness_mm"] == 5.0 and facts["slices"] == 64 and facts["contrast"] is False
    assert len(facts["hu_histogram"]) == 12 and abs(sum(facts["hu_histogram"]) - 1) < 1e-3
    now = utcnow()
    [figures] = compute_figures(engine, now - timedelta(hours=1), now + timedelta(minutes=1), PeriodKind.ALL)
    assert (figures.model_name, figures.studies) == ("ctnode-chest", 1)
    assert figures.latency_median_s is not None and figures.latency_median_s > 0
    engine.dispose()
