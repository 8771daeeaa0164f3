"""An evaluation's results: per-study outcomes, FROC figures with CIs, the JSON report, the FROC plot, the table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from detector.evaluate.froc import FP_RATES, Froc, Interval, Outcome
from detector.evaluate.labelled import LabelledStudy
from detector.findings import Finding
from detector.labels.lesions import LesionRecord
from detector.registry import EvaluationFigure, ModelCard, TrainedStudy


@dataclass(frozen=True, eq=False)
class StudyResult:
    """What one study gave: its lesions, the findings at the operating threshold and what each one is."""

    study: LabelledStudy
    series_instance_uid: str = ""
    slices: int = 0
    lesions: tuple[LesionRecord, ...] = ()
    findings: tuple[Finding, ...] = ()
    outcomes: tuple[Outcome, ...] = ()
    inference_s: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    trained_on: TrainedStudy | None = field(default=None)
    refused: str = ""
    """Why the domain gate refused the study (the node reports nothing for it, so it counts with no finding)."""

    def flagged(self, trained: TrainedStudy | None) -> StudyResult:
        return replace(self, trained_on=trained)

    @property
    def targets(self) -> int:
        return sum(not lesion.ignore for lesion in self.lesions)

    @property
    def hits(self) -> int:
        return len({i for o in self.outcomes for i in o.hits})

    @property
    def false_positives(self) -> int:
        return sum(o.false_positive for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.study.id,
            "folder": str(self.study.folder),
            "study_instance_uid": self.study.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "slices": self.slices,
            "label_files": [str(p) for p in self.study.labels],
            "error": self.error,
            "refused_by_domain_gate": self.refused or None,
            "used_in_training": None if self.trained_on is None else
            {"id": self.trained_on.id, "use": self.trained_on.use},
            "lesions": [lesion.summary() for lesion in self.lesions],
            "findings": [
                {"score": round(f.score, 4), "centre_mm": [round(v, 2) for v in f.centre_mm],
                 "size_mm": [round(v, 2) for v in f.size_mm], "slices": len(f.slices),
                 "outcome": "hit" if o.hits else ("ignored" if o.ignored else "false positive"),
                 "hits_lesions": list(o.hits)}
                for f, o in zip(self.findings, self.outcomes, strict=True)
            ],
            "targets_hit": self.hits,
            "false_positives": self.false_positives,
            "inference_s": round(self.inference_s, 3),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """The evaluation of one model on a set of studies."""

    card: ModelCard
    results: tuple[StudyResult, ...]
    froc: Froc
    bootstrap_rounds: int = 2000
    device: str = "cpu"

    @property
    def evaluated(self) -> tuple[StudyResult, ...]:
        return tuple(r for r in self.results if r.error is None)

    @property
    def flagged(self) -> tuple[StudyResult, ...]:
        """Studies the model's card says it was trained on: their figures are not held-out figures."""
        return tuple(r for r in self.results if r.trained_on is not None)

    @cached_property
    def summary(self) -> dict[str, Interval]:
        if not self.froc.studies:
            return {}
        return self.froc.summary(round(self.card.operating_threshold, 4), rounds=self.bootstrap_rounds)

    def threshold_at(self, fp_per_scan: float) -> float:
        """The lowest grid threshold with at most ``fp_per_scan`` false positives per scan on these studies."""
        return self.froc.threshold_at(fp_per_scan)

    def seconds_per_slice(self) -> float:
        slices = sum(r.slices for r in self.evaluated)
        return sum(r.inference_s for r in self.evaluated) / slices if slices else float("nan")

    def figures(self, dataset: str) -> tuple[EvaluationFigure, ...]:
        """Card figures: CPM, sensitivity and FP/scan at the operating threshold, size bands, with 95% CIs."""
        counts = (f"{self.froc.studies} studies, {self.froc.lesions} lesions, "
                  f"{sum(r.targets == 0 for r in self.evaluated)} lesion-free")
        names = {
            "cpm": f"lesion-level CPM (mean sensitivity at 1/8-8 FP/scan; {counts})",
            "sensitivity": f"lesion-level sensitivity at the operating threshold ({counts})",
            "fp_per_scan": f"false positives per scan at the operating threshold ({counts})",
        }
        out = []
        for key, interval in self.summary.items():
            if key.startswith("sensitivity@"):
                continue
            metric = names.get(key, f"lesion-level {key} at the operating threshold")
            if math.isnan(interval.value):
                continue
            ci = None if interval.ci95 is None else (round(interval.ci95[0], 4), round(interval.ci95[1], 4))
            out.append(EvaluationFigure(metric, round(interval.value, 4), dataset, ci))
        if self.flagged:
            seen = ", ".join(sorted({r.trained_on.id for r in self.flagged if r.trained_on is not None}))
            overlap = f"{len(self.flagged)} of {len(self.results)} studies come from {seen}, which it saw"
            out = [replace(f, held_out=False, training_overlap=overlap) for f in out]
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        fps, sens = self.froc.curve() if self.froc.studies else (np.array([]), np.array([]))
        return {
            "model": {"name": self.card.name, "version": self.card.version, "weights_sha256": self.card.weights_sha256,
                      "operating_threshold": self.card.operating_threshold, "anatomy": self.card.anatomy},
            "protocol": {
                "hit": "predicted 3D centre within the lesion's radius (at least 2 mm) or inside its outline",
                "ignore": "lesions under 3 mm, marks of fewer than 3 LIDC readers, non-nodule marks: "
                          "neither hits nor false positives",
                "fp_rates": list(FP_RATES),
                "bootstrap": f"{self.bootstrap_rounds} rounds, studies resampled with replacement, percentile 95%",
            },
            "studies_evaluated": len(self.evaluated),
            "studies_failed": [{"id": r.study.id, "error": r.error} for r in self.results if r.error],
            "used_in_training": [r.study.id for r in self.flagged],
            "metrics": {k: {"value": _num(v.value), "ci95": None if v.ci95 is None else [_num(c) for c in v.ci95]}
                        for k, v in self.summary.items()},
            "froc": {"thresholds": self.froc.thresholds.tolist(), "fp_per_scan": fps.tolist(),
                     "sensitivity": [_num(v) for v in sens]},
            "timing": {"device": self.device, "inference_s_per_slice": _num(self.seconds_per_slice()),
                       "total_s": round(sum(r.seconds for r in self.results), 2)},
            "studies": [r.to_dict() for r in self.results],
        }

    def write(self, out: Path) -> list[Path]:
        """``out/report.json`` and (when a study was evaluated) ``out/froc.png``."""
        out.mkdir(parents=True, exist_ok=True)
        report = out / "report.json"
        report.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        plot = out / "froc.png"
        if self.froc.studies:
            plot_froc([FrocLine.of(f"{self.card.name} {self.card.version}", self.to_dict())], plot)
        return [report, plot] if self.froc.studies else [report]

    def study_table(self) -> Table:
        table = Table(title=f"{self.card.name} {self.card.version} at threshold {self.card.operating_threshold:.3f}")
        for column in ("study", "slices", "targets", "ignore", "findings", "hit", "FP", "s", "note"):
            table.add_column(column, justify="left" if column in ("study", "note") else "right")
        for r in self.results:
            note = r.error or ("TRAINED ON (" + r.trained_on.use + ")" if r.trained_on else "")
            note += f" refused: {r.refused}" if r.refused else ""
            table.add_row(r.study.id, str(r.slices), str(r.targets), str(len(r.lesions) - r.targets),
                          str(len(r.findings)), str(r.hits), str(r.false_positives), f"{r.seconds:.1f}", note)
        return table

    def metrics_table(self) -> Table:
        table = Table(title="lesion-level figures (95% bootstrap CI over studies)")
        table.add_column("metric")
        table.add_column("value (95% CI)", justify="right")
        for key, interval in self.summary.items():
            table.add_row(key, str(interval))
        table.add_row("inference s/slice", f"{self.seconds_per_slice():.4f} ({self.device})")
        return table


def _num(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


@dataclass(frozen=True)
class FrocLine:
    """One curve of a FROC plot: FP/scan and sensitivity per threshold, the operating point and the CPM."""

    label: str
    fp_per_scan: tuple[float, ...]
    sensitivity: tuple[float, ...]
    operating_point: tuple[float, float]
    cpm: float

    @classmethod
    def of(cls, label: str, report: dict[str, Any]) -> FrocLine:
        """From a report's JSON form (``EvaluationReport.to_dict`` or a written report.json)."""
        metrics, froc = report["metrics"], report["froc"]
        return cls(label, tuple(math.inf if v is None else v for v in froc["fp_per_scan"]),
                   tuple(math.nan if v is None else v for v in froc["sensitivity"]),
                   (metrics["fp_per_scan"]["value"], metrics["sensitivity"]["value"] or 0.0),
                   metrics["cpm"]["value"] or 0.0)


def plot_froc(lines: list[FrocLine], path: Path, title: str = "FROC (dots: operating points)") -> None:
    """FROC curves (sensitivity against FP/scan, log axis) with each model's operating point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low = FP_RATES[0] / 2
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    for line in lines:
        fps, sens = np.asarray(line.fp_per_scan), np.nan_to_num(np.asarray(line.sensitivity))
        order = np.argsort(fps, kind="stable")
        drawn = ax.step(np.clip(fps[order], low, None), np.fmax.accumulate(sens[order]), where="post",
                        label=f"{line.label} (CPM {line.cpm:.2f})")
        ax.plot([max(line.operating_point[0], low)], [line.operating_point[1]], "o", color=drawn[0].get_color())
    ax.set_xscale("log")
    ax.set_xticks(FP_RATES)
    ax.set_xticklabels([f"{r:g}" for r in FP_RATES])
    ax.set_xlim(low, FP_RATES[-1] * 2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("lesion-level sensitivity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
