"""The node's own reviewed studies as labelled studies: for `ctnode evaluate --site` (the series each run read, from
the store, and its newest review's lesions as the truth) and for `ctnode train` on the site (with hashed patients,
feedback ids and the findings readers rejected)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select

from detector.evaluate import LabelledStudy
from detector.io import read_headers
from node.db.schema import Instance, Run, Series
from node.events import FeedbackVerdict
from node.monitor.done_runs import ReadRun, load_runs
from node.monitor.figures import card_facts, truth_lesions

if TYPE_CHECKING:  # detector.train imports torch: only `ctnode train` loads it
    from detector.train.site import SiteCase


def reviewed_runs(engine: Engine, body_part: str, since: datetime, until: datetime) -> list[ReadRun]:
    """Per study, its newest reviewed run (done in [since, until)) of a model for ``body_part``."""
    chosen = {}
    for run in load_runs(engine, since, until):
        facts = card_facts(run.model)
        if run.latest_review is None or facts is None or facts.body_part.upper() != body_part.upper():
            continue
        chosen[run.study_id] = run
    return list(chosen.values())


def _labelled(engine: Engine, store_dir: Path, runs: list[ReadRun]) -> list[LabelledStudy]:
    studies = []
    with engine.connect() as conn:
        for run in runs:
            uid, series = conn.execute(select(Run.study_instance_uid, Run.series_instance_uid)
                                       .where(Run.id == run.id)).one()
            paths = conn.execute(select(Instance.path).join(Series).where(
                Series.series_instance_uid == series, Instance.is_current).order_by(Instance.id)).scalars().all()
            headers = read_headers([store_dir / p for p in paths]).headers
            studies.append(LabelledStudy(f"run-{run.id}", uid, store_dir, uid, tuple(headers), (),
                                         tuple(truth_lesions(run))))
    return studies


def site_studies(engine: Engine, store_dir: Path, body_part: str, since: datetime, until: datetime
                 ) -> list[LabelledStudy]:
    """Every study a reader reviewed whose run (done in [since, until)) was of a model for ``body_part``: the
    series that run read, with the review's confirmed, edited and missed lesions (rejected findings are
    background). A study read by several models counts once, by its newest reviewed run."""
    return _labelled(engine, store_dir, reviewed_runs(engine, body_part, since, until))


def _patient_id(study: LabelledStudy) -> str | None:
    """The Patient ID of the study's first image (read here, hashed by the caller, never logged)."""
    import pydicom

    if not study.headers:
        return None
    value = str(pydicom.dcmread(study.headers[0].path, stop_before_pixels=True,
                                specific_tags=["PatientID"]).get("PatientID", "") or "").strip()
    return value or None


def site_cases(engine: Engine, store_dir: Path, body_part: str, since: datetime, until: datetime
               ) -> list[SiteCase]:
    """:func:`site_studies` for training: each study with its hashed Patient ID (None when it has none), the ids of
    the review it was labelled from, and the centres of the findings that review rejected."""
    from detector.train.site import SiteCase, hash_patient

    runs = reviewed_runs(engine, body_part, since, until)
    cases = []
    for run, study in zip(runs, _labelled(engine, store_dir, runs), strict=True):
        review = run.latest_review
        assert review is not None
        rejected = tuple(tuple(float(c) for c in run.findings[v.finding_index]["centre_mm"])
                         for v in review.verdicts if v.verdict == FeedbackVerdict.REJECTED
                         and v.finding_index is not None and 0 <= v.finding_index < len(run.findings))
        patient = _patient_id(study)
        cases.append(SiteCase(study, hash_patient(patient) if patient else None, (review.feedback_id,),
                              rejected))  # type: ignore[arg-type]
    return cases
