"""A candidate model against a route's live model on the studies both read: agreement of their findings in 3D, the
paired differences (candidate - live) with paired bootstrap CIs over studies, time per study; the report kept.

A study counts when the newest done run of each model read the same series of it. Where a reader reviewed either
run, the newest review's lesions (node.monitor.figures.truth_lesions) are the truth of both; where the study's
report labels a finding type positive or negative, that is the study-level truth of both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.table import Table
from sqlalchemy import Engine, insert, select, update

from detector.evaluate.froc import Froc, Interval, StudyCurve, candidates_curve, paired_difference
from node.config import PromotionConfig
from node.db import audit
from node.db.schema import ModelComparison, Run, utcnow
from node.events import AuditKind, ReportLabelValue, RunStatus
from node.monitor.done_runs import ReadRun, load_runs
from node.monitor.figures import BOOTSTRAP_ROUNDS, card_facts, truth_lesions
from node.monitor.stats import quantile

MIN_MATCH_RADIUS_MM = 2.0
"""Two findings closer than this always match (the evaluator's smallest hit radius)."""
MATCHING = ("one-to-one, nearest first: centres within the larger finding's radius (half its largest size, at "
            f"least {MIN_MATCH_RADIUS_MM:g} mm)")


@dataclass(frozen=True)
class Side:
    """One model's newest done run of a study: the figures' view of it, the series it read and its inference time."""

    run: ReadRun
    series_instance_uid: str
    weights_sha256: str
    inference_s: float | None


@dataclass(frozen=True)
class Pair:
    """One study both models read (the same series)."""

    study_id: int
    live: Side
    candidate: Side

    @property
    def reviewed(self) -> ReadRun | None:
        """The run whose newest review is the newest of the two (its lesions are the truth of both), if any."""
        reviewed = [s.run for s in (self.live, self.candidate) if s.run.latest_review is not None]
        return max(reviewed, key=lambda r: (r.latest_review.received_at, r.latest_review.feedback_id),  # type: ignore[union-attr]
                   default=None)


class NothingToCompare(Exception):
    """No study was read by both models in the window; the message says so."""


def load_pairs(engine: Engine, live: str, candidate: str, since: datetime, until: datetime) -> list[Pair]:
    """The studies both models (as the routes name them) read in runs done in [since, until): per study each model's
    newest done run, kept when both read the same series; in study order."""
    with engine.connect() as conn:
        rows = conn.execute(select(
            Run.id, Run.study_id, Run.model, Run.version, Run.model_name, Run.series_instance_uid,
            Run.weights_sha256, Run.inference_started_at, Run.inference_ended_at)
            .where(Run.status == str(RunStatus.DONE), Run.model.in_([live, candidate]),
                   Run.finished_at >= since, Run.finished_at < until, Run.model_name.is_not(None))).all()
    newest: dict[tuple[int, str], Any] = {}
    for row in rows:
        key = (row.study_id, row.model)
        if key not in newest or row.version > newest[key].version:
            newest[key] = row
    names = {row.model_name for row in newest.values()}
    read = {r.id: r for name in sorted(names) for r in load_runs(engine, since, until, name)}

    def side(row: Any) -> Side | None:
        run = read.get(row.id)
        if run is None:
            return None
        seconds = (row.inference_ended_at - row.inference_started_at).total_seconds() \
            if row.inference_started_at and row.inference_ended_at else None
        return Side(run, row.series_instance_uid or "", row.weights_sha256 or "", seconds)

    pairs = []
    for study_id in sorted({s for s, _ in newest}):
        a, b = newest.get((study_id, live)), newest.get((study_id, candidate))
        if a is None or b is None or a.series_instance_uid != b.series_instance_uid:
            continue
        first, second = side(a), side(b)
        if first is not None and second is not None:
            pairs.append(Pair(study_id, first, second))
    return pairs


def match_findings(live: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    """(live index, candidate index) of the findings that are one lesion in 3D (see ``MATCHING``)."""
    options = []
    for i, a in enumerate(live):
        for j, b in enumerate(candidate):
            distance = float(np.linalg.norm(np.subtract(a["centre_mm"], b["centre_mm"], dtype=np.float64)))
            radius = max(MIN_MATCH_RADIUS_MM, max(*a["size_mm"], *b["size_mm"]) / 2)
            if distance <= radius:
                options.append((distance, i, j))
    used_live: set[int] = set()
    used_candidate: set[int] = set()
    matches = []
    for _, i, j in sorted(options):
        if i not in used_live and j not in used_candidate:
            used_live.add(i)
            used_candidate.add(j)
            matches.append((i, j))
    return sorted(matches)


def agreement(pairs: Sequence[Pair]) -> dict[str, Any]:
    """How far the two models' findings coincide: each side's share of findings the other also reported, and the
    studies where both flag or both do not."""
    live_findings = candidate_findings = matched = same_call = 0
    for pair in pairs:
        a, b = pair.live.run.findings, pair.candidate.run.findings
        live_findings += len(a)
        candidate_findings += len(b)
        matched += len(match_findings(a, b))
        same_call += bool(a) == bool(b)
    return {"matching": MATCHING, "live_findings": live_findings, "candidate_findings": candidate_findings,
            "matched": matched, "live_matched_share": _share(matched, live_findings),
            "candidate_matched_share": _share(matched, candidate_findings),
            "studies_same_call": same_call, "studies_same_call_share": _share(same_call, len(pairs))}


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _interval(interval: Interval) -> dict[str, Any]:
    def num(v: float) -> float | None:
        return None if v is None or math.isnan(v) or math.isinf(v) else round(float(v), 4)

    return {"value": num(interval.value), "ci95": None if interval.ci95 is None else [num(c) for c in interval.ci95]}


def _threshold(model: str) -> float:
    from detector.evaluate.run import GRID

    facts = card_facts(model)
    return round(facts.operating_threshold, 4) if facts and facts.operating_threshold is not None else min(GRID)


def _froc(pairs: Sequence[Pair], which: str, threshold: float) -> Froc:
    from detector.evaluate.run import threshold_grid

    grid = threshold_grid(threshold)
    curves: list[StudyCurve] = []
    for pair in pairs:
        run = getattr(pair, which).run
        truth = truth_lesions(pair.reviewed)  # type: ignore[arg-type]
        curves.append(candidates_curve(str(pair.study_id), [(tuple(f["centre_mm"]), float(f["score"]))
                                                            for f in run.findings], truth, grid))
    return Froc(grid, curves)


def lesion_level(pairs: Sequence[Pair], live_threshold: float, candidate_threshold: float, rounds: int,
                 seed: int = 0) -> dict[str, Any] | None:
    """FROC of both on the reviewed studies (one truth per study), each at its card's operating point, and the
    paired differences of CPM, sensitivity and FP/scan; None when no study was reviewed."""
    reviewed = [p for p in pairs if p.reviewed is not None]
    if not reviewed:
        return None
    live, candidate = _froc(reviewed, "live", live_threshold), _froc(reviewed, "candidate", candidate_threshold)
    n = live.studies

    def figures(froc: Froc, threshold: float) -> dict[str, Any]:
        summary = froc.summary(threshold, rounds=rounds, seed=seed)
        fps, sens = froc.curve()
        return {"threshold": threshold, **{k: _interval(summary[k]) for k in ("cpm", "sensitivity", "fp_per_scan")},
                "froc": {"thresholds": froc.thresholds.tolist(),
                         "fp_per_scan": [None if math.isinf(v) else float(v) for v in fps],
                         "sensitivity": [None if math.isnan(v) else float(v) for v in sens]}}

    difference = {
        "cpm": paired_difference(candidate.cpm_of, live.cpm_of, n, rounds, seed),
        "sensitivity": paired_difference(lambda w: candidate.sensitivity_of(w, candidate_threshold),
                                         lambda w: live.sensitivity_of(w, live_threshold), n, rounds, seed),
        "fp_per_scan": paired_difference(lambda w: candidate.fp_per_scan_of(w, candidate_threshold),
                                         lambda w: live.fp_per_scan_of(w, live_threshold), n, rounds, seed),
    }
    return {"studies": n, "lesions": live.lesions, "live": figures(live, live_threshold),
            "candidate": figures(candidate, candidate_threshold),
            "difference": {k: _interval(v) for k, v in difference.items()}}


def _ratio(hits: NDArray[np.float64], total: NDArray[np.float64], w: NDArray[np.float64]) -> NDArray[np.float64]:
    denominator = w @ total
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (w @ hits) / denominator, np.nan)


def study_level(pairs: Sequence[Pair], finding_type: str, rounds: int, seed: int = 0) -> dict[str, Any] | None:
    """Study-level sensitivity and specificity of both against the report labels of ``finding_type`` (uncertain
    and unlabelled studies left out), with the paired differences; None when no study is labelled."""
    labelled = [(p, p.live.run.report.get(finding_type)) for p in pairs]
    decided = [(p, v == ReportLabelValue.POSITIVE) for p, v in labelled
               if v in (ReportLabelValue.POSITIVE, ReportLabelValue.NEGATIVE)]
    if not decided:
        return None
    truth = np.array([t for _, t in decided], dtype=np.float64)
    calls = {which: np.array([getattr(p, which).run.positive(finding_type) for p, _ in decided], dtype=np.float64)
             for which in ("live", "candidate")}
    n = len(decided)

    def sensitivity(which: str):  # type: ignore[no-untyped-def]
        return lambda w: _ratio(truth * calls[which], truth, w)

    def specificity(which: str):  # type: ignore[no-untyped-def]
        return lambda w: _ratio((1 - truth) * (1 - calls[which]), 1 - truth, w)

    ones = np.ones((1, n))
    out: dict[str, Any] = {"finding_type": finding_type, "studies": n, "positive": int(truth.sum()),
                           "negative": int(n - truth.sum())}
    for which in ("live", "candidate"):
        out[which] = {"sensitivity": _num(sensitivity(which)(ones)[0]),
                      "specificity": _num(specificity(which)(ones)[0])}
    out["difference"] = {
        "sensitivity": _interval(paired_difference(sensitivity("candidate"), sensitivity("live"), n, rounds, seed)),
        "specificity": _interval(paired_difference(specificity("candidate"), specificity("live"), n, rounds, seed)),
    }
    return out


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


def _times(seconds: Sequence[float | None]) -> dict[str, float | None]:
    known = [s for s in seconds if s is not None]
    return {"studies": len(known), "median_s": _round(quantile(known, 0.5)), "p95_s": _round(quantile(known, 0.95)),
            "mean_s": _round(sum(known) / len(known)) if known else None}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def compare_models(engine: Engine, route: str, live: str, candidate: str, since: datetime, until: datetime,
                   rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> dict[str, Any]:
    """The comparison's figures (JSON-ready); NothingToCompare when no study was read by both."""
    pairs = load_pairs(engine, live, candidate, since, until)
    if not pairs:
        raise NothingToCompare(f"no study was read by both {live} and {candidate} (the same series, runs done "
                               f"between {since:%Y-%m-%d %H:%M} and {until:%Y-%m-%d %H:%M} UTC)")
    thresholds = {"live": _threshold(live), "candidate": _threshold(candidate)}
    types = list(dict.fromkeys(t for model in (live, candidate) for t in (
        card_facts(model).finding_types if card_facts(model) else ())))  # type: ignore[union-attr]
    if not types:
        types = sorted({str(f["label"]) for p in pairs for s in (p.live, p.candidate) for f in s.run.findings})

    def identity(which: str, model: str) -> dict[str, Any]:
        newest = max((getattr(p, which) for p in pairs), key=lambda s: (s.run.finished_at, s.run.id))
        return {"model": model, "name": newest.run.model_name, "version": newest.run.model_version,
                "weights_sha256": newest.weights_sha256, "operating_threshold": thresholds[which]}

    study = [s for s in (study_level(pairs, t, rounds, seed) for t in types) if s is not None]
    return {
        "route": route, "live": identity("live", live), "candidate": identity("candidate", candidate),
        "since": since.isoformat(), "until": until.isoformat(),
        "bootstrap": f"{rounds} rounds, studies resampled with replacement, the same draw for both models "
                     "(paired), percentile 95%", "bootstrap_rounds": rounds,
        "studies": len(pairs), "reviewed_studies": sum(p.reviewed is not None for p in pairs),
        "agreement": agreement(pairs),
        "lesion_level": lesion_level(pairs, thresholds["live"], thresholds["candidate"], rounds, seed),
        "study_level": study,
        "time_per_study": {"live": _times([p.live.inference_s for p in pairs]),
                           "candidate": _times([p.candidate.inference_s for p in pairs])},
    }


def keep(engine: Engine, figures: dict[str, Any], out: Path | None, data_dir: Path) -> tuple[int, list[Path]]:
    """Record the comparison (model_comparison, audited) and write its report: ``comparison.json`` and, with a
    lesion-level FROC, ``froc.png``, in ``out`` (default ``data_dir/comparisons/comparison-ID``)."""
    from detector.evaluate.report import FrocLine, plot_froc

    live, candidate = figures["live"], figures["candidate"]
    with engine.begin() as conn:
        comparison_id = conn.execute(insert(ModelComparison).returning(ModelComparison.id).values(
            route=figures["route"], live_model=live["model"], live_name=live["name"], live_version=live["version"],
            live_weights_sha256=live["weights_sha256"], candidate_model=candidate["model"],
            candidate_name=candidate["name"], candidate_version=candidate["version"],
            candidate_weights_sha256=candidate["weights_sha256"], created_at=utcnow(), studies=figures["studies"],
            figures=figures)).scalar_one()
        folder = out or data_dir / "comparisons" / f"comparison-{comparison_id}"
        folder.mkdir(parents=True, exist_ok=True)
        report = folder / "comparison.json"
        report.write_text(json.dumps({"id": comparison_id, **figures}, indent=2) + "\n", encoding="utf-8")
        written = [report]
        lesions = figures["lesion_level"]
        if lesions is not None:
            lines = []
            for which in ("live", "candidate"):
                side, froc = lesions[which], lesions[which]["froc"]
                at = froc["thresholds"].index(side["threshold"])
                lines.append(FrocLine(f"{which}: {figures[which]['name']} {figures[which]['version']}",
                                      tuple(math.inf if v is None else v for v in froc["fp_per_scan"]),
                                      tuple(math.nan if v is None else v for v in froc["sensitivity"]),
                                      (froc["fp_per_scan"][at] or 0.0, froc["sensitivity"][at] or 0.0),
                                      side["cpm"]["value"] or 0.0))
            plot = folder / "froc.png"
            plot_froc(lines, plot, title=f"route {figures['route']}: {lesions['studies']} reviewed studies "
                                         "(dots: operating points)")
            written.append(plot)
        conn.execute(update(ModelComparison).where(ModelComparison.id == comparison_id)
                     .values(report_path=str(folder)))
        audit.record(conn, AuditKind.MODEL_COMPARED, detail={
            "comparison_id": comparison_id, "route": figures["route"], "live": live, "candidate": candidate,
            "studies": figures["studies"], "reviewed_studies": figures["reviewed_studies"],
            "report_path": str(folder)})
    return comparison_id, written


def judge(figures: dict[str, Any], rule: PromotionConfig) -> tuple[bool, str]:
    """Whether a comparison's figures meet the site's promotion rule, and in one line why (not)."""
    lesions = figures.get("lesion_level")
    reviewed = lesions["studies"] if lesions else 0
    if reviewed < rule.min_studies:
        return False, (f"{reviewed} reviewed studies read by both, promotion.min_studies is {rule.min_studies}")
    difference = lesions["difference"]  # type: ignore[index]

    def ci(key: str) -> list[float | None] | None:
        return difference[key]["ci95"]

    said = []
    sensitivity = ci("sensitivity")
    if sensitivity is None or sensitivity[0] is None:
        return False, "the sensitivity difference has no confidence interval"
    if sensitivity[0] < -rule.sensitivity_margin:
        return False, (f"sensitivity difference CI low {sensitivity[0]:+.3f} is below -{rule.sensitivity_margin:g} "
                       "(promotion.sensitivity_margin): not shown non-inferior")
    said.append(f"sensitivity CI low {sensitivity[0]:+.3f} >= -{rule.sensitivity_margin:g}")
    if rule.max_fp_per_scan_increase is not None:
        fps = ci("fp_per_scan")
        if fps is None or fps[1] is None:
            return False, "the FP/scan difference has no confidence interval"
        if fps[1] > rule.max_fp_per_scan_increase:
            return False, (f"FP/scan difference CI high {fps[1]:+.3f} exceeds {rule.max_fp_per_scan_increase:g} "
                           "(promotion.max_fp_per_scan_increase)")
        said.append(f"FP/scan CI high {fps[1]:+.3f} <= {rule.max_fp_per_scan_increase:g}")
    if rule.require_cpm_gain:
        cpm = ci("cpm")
        if cpm is None or cpm[0] is None or cpm[0] <= 0:
            low = "none" if cpm is None or cpm[0] is None else f"{cpm[0]:+.3f}"
            return False, f"CPM difference CI low {low} is not above 0 (promotion.require_cpm_gain)"
        said.append(f"CPM CI low {cpm[0]:+.3f} > 0")
    return True, f"{reviewed} reviewed studies; " + "; ".join(said)


def _cell(interval: dict[str, Any] | None, signed: bool = False) -> str:
    if interval is None or interval.get("value") is None:
        return "-"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    ci = interval.get("ci95")
    return fmt.format(interval["value"]) + (f" ({fmt.format(ci[0])} to {fmt.format(ci[1])})"
                                            if ci and None not in ci else "")


def comparison_table(figures: dict[str, Any], comparison_id: int | None = None) -> Table:
    """The comparison as a table: each figure of live and candidate, and the paired difference with its CI."""
    live, candidate = figures["live"], figures["candidate"]
    table = Table("figure", f"live\n{live['name']} {live['version']}",
                  f"candidate\n{candidate['name']} {candidate['version']}", "candidate - live (paired 95% CI)",
                  title=(f"comparison {comparison_id}: " if comparison_id else "") +
                  f"route {figures['route']}, {figures['studies']} studies both read, "
                  f"{figures['reviewed_studies']} reviewed")
    agree = figures["agreement"]
    table.add_row("findings (matched in 3D)", f"{agree['live_findings']} ({agree['live_matched_share'] or 0:.0%})",
                  f"{agree['candidate_findings']} ({agree['candidate_matched_share'] or 0:.0%})",
                  f"{agree['matched']} matched")
    table.add_row("studies with the same call", "", "", f"{agree['studies_same_call']} of {figures['studies']}")
    lesions = figures["lesion_level"]
    if lesions is not None:
        for key, name in (("cpm", "lesion CPM"), ("sensitivity", "lesion sensitivity at op"),
                          ("fp_per_scan", "FP per scan at op")):
            table.add_row(name, _cell(lesions["live"][key]), _cell(lesions["candidate"][key]),
                          _cell(lesions["difference"][key], signed=True))
    for s in figures["study_level"]:
        for key in ("sensitivity", "specificity"):
            table.add_row(f"{s['finding_type']} study {key} ({s['studies']})",
                          _cell({"value": s["live"][key]}), _cell({"value": s["candidate"][key]}),
                          _cell(s["difference"][key], signed=True))
    times = figures["time_per_study"]
    table.add_row("inference s/study (median, p95)",
                  *(f"{times[w]['median_s'] or 0:.2f}, {times[w]['p95_s'] or 0:.2f}" for w in ("live", "candidate")),
                  "")
    return table
