"""The node's own reviewed studies as labelled studies for `ctnode evaluate --site`: the series each run read, from
the store, and its newest review's lesions as the truth."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, select

from detector.evaluate import LabelledStudy
from detector.io import read_headers
from node.db.schema import Instance, Run, Series
from node.monitor.figures import card_facts, truth_lesions
from node.monitor.records import load_runs


def site_studies(engine: Engine, store_dir: Path, body_part: str, since: datetime, until: datetime
                 ) -> list[LabelledStudy]:
    """Every study a reader reviewed whose run (done in [since, until)) was of a model for ``body_part``: the
    series that run read, with the review's confirmed, edited and missed lesions (rejected findings are
    background). A study read by several models counts once, by its newest reviewed run."""
    chosen = {}
    for run in load_runs(engine, since, until):
        facts = card_facts(run.model)
        if run.latest_review is None or facts is None or facts.body_part.upper() != body_part.upper():
            continue
        chosen[run.study_id] = run
    studies = []
    with engine.connect() as conn:
        for run in chosen.values():
            uid, series = conn.execute(select(Run.study_instance_uid, Run.series_instance_uid)
                                       .where(Run.id == run.id)).one()
            paths = conn.execute(select(Instance.path).join(Series).where(
                Series.series_instance_uid == series, Instance.is_current).order_by(Instance.id)).scalars().all()
            headers = read_headers([store_dir / p for p in paths]).headers
            studies.append(LabelledStudy(f"run-{run.id}", uid, store_dir, uid, tuple(headers), (),
                                         tuple(truth_lesions(run))))
    return studies
