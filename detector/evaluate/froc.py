"""Lesion-level FROC: match findings to labelled lesions at every threshold, CPM, and bootstrap CIs over studies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from detector.labels.lesions import LesionRecord

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""False positives per scan at which CPM averages the sensitivity (the LUNA16 points)."""
SIZE_BANDS_MM = ((3.0, 5.0), (5.0, 10.0), (10.0, 20.0), (20.0, 30.0), (30.0, float("inf")))
Point = tuple[float, float, float]
_SATURATED = 1e12
"""Stands for a saturated study's infinite false positives in weighted sums (a zero bootstrap weight keeps it 0)."""


@dataclass(frozen=True)
class Outcome:
    """What one predicted centre is: which target lesions it hits, or else whether an ignore region spares it."""

    hits: tuple[int, ...]
    ignored: bool

    @property
    def false_positive(self) -> bool:
        return not self.hits and not self.ignored


def classify(centre: Point, targets: Sequence[LesionRecord], ignores: Sequence[LesionRecord]) -> Outcome:
    """A centre hitting any target is a true positive (never a false one, however many hit the same lesion);
    one that hits no target but lies in an ignore region is neither; anything else is a false positive."""
    hits = tuple(i for i, lesion in enumerate(targets) if lesion.hit_by(centre))
    return Outcome(hits, not hits and any(lesion.hit_by(centre) for lesion in ignores))


@dataclass(frozen=True, eq=False)
class StudyCurve:
    """One study on the threshold grid: which target lesions are hit and how many false positives there are."""

    study: str
    hit: NDArray[np.bool_]
    """(T, L): target lesion l is hit by a finding reported at threshold t."""
    false_positives: NDArray[np.float64]
    """(T,); infinite where the study was saturated (too many findings to be worth matching)."""
    diameters_mm: NDArray[np.float64]
    """(L,) the target lesions' diameters."""


def study_curve(
    study: str,
    findings_per_threshold: Sequence[Sequence[tuple[Point, float]] | None],
    lesions: Sequence[LesionRecord],
) -> StudyCurve:
    """Match the findings reported at each threshold of the grid (centre, score) against a study's lesions.

    ``None`` at a threshold means saturated: infinitely many false positives, the lesions as hit as at the
    next threshold up (no FP rate can use such a threshold, so what it hits does not matter).
    """
    targets = [lesion for lesion in lesions if not lesion.ignore]
    ignores = [lesion for lesion in lesions if lesion.ignore]
    hit = np.zeros((len(findings_per_threshold), len(targets)), dtype=bool)
    fps = np.zeros(len(findings_per_threshold), dtype=np.float64)
    for t, findings in enumerate(findings_per_threshold):
        if findings is None:
            fps[t] = np.inf
            continue
        for centre, _ in findings:
            outcome = classify(centre, targets, ignores)
            hit[t, list(outcome.hits)] = True
            fps[t] += outcome.false_positive
    for t in reversed(range(len(findings_per_threshold) - 1)):
        if findings_per_threshold[t] is None:
            hit[t] = hit[t + 1]
    return StudyCurve(study, hit, fps, np.array([lesion.diameter_mm for lesion in targets], dtype=np.float64))


def candidates_curve(
    study: str, candidates: Sequence[tuple[Point, float]], lesions: Sequence[LesionRecord], thresholds: Sequence[float]
) -> StudyCurve:
    """The classic FROC form: the findings at threshold t are the fixed candidates scoring at least t."""
    return study_curve(study, [[c for c in candidates if c[1] >= t] for t in thresholds], lesions)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap 95% interval (None when there is nothing to resample)."""

    value: float
    ci95: tuple[float, float] | None

    def __str__(self) -> str:
        if np.isnan(self.value):
            return "n/a"
        return f"{self.value:.3f}" + (f" ({self.ci95[0]:.3f}-{self.ci95[1]:.3f})" if self.ci95 else "")


class Froc:
    """FROC over studies on one threshold grid (ascending), with sums that a bootstrap can re-weight by study."""

    def __init__(self, thresholds: Sequence[float], curves: Sequence[StudyCurve]) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        if np.any(np.diff(self.thresholds) <= 0):
            raise ValueError("thresholds must be strictly ascending")
        for c in curves:
            if c.hit.shape[0] != len(self.thresholds) or c.false_positives.shape != self.thresholds.shape:
                raise ValueError(f"study {c.study}: its curve does not match the {len(self.thresholds)} thresholds")
        self.curves = tuple(curves)
        shape = (len(curves), len(self.thresholds))
        self._hits = np.array([c.hit.sum(axis=1) for c in curves], dtype=np.float64).reshape(shape)
        self._lesions = np.array([c.hit.shape[1] for c in curves], dtype=np.float64)
        fps = np.array([c.false_positives for c in curves], dtype=np.float64).reshape(shape)
        self._fps = np.nan_to_num(fps, posinf=_SATURATED)
        self._diameters = [c.diameters_mm for c in curves]

    @property
    def studies(self) -> int:
        return len(self.curves)

    @property
    def lesions(self) -> int:
        return int(self._lesions.sum())

    def index(self, threshold: float) -> int:
        """The grid position of ``threshold`` (which must be on the grid)."""
        k = int(np.argmin(np.abs(self.thresholds - threshold)))
        if not np.isclose(self.thresholds[k], threshold, atol=1e-9):
            raise ValueError(f"threshold {threshold} is not on the evaluation grid")
        return k

    # Everything below takes optional study weights (R, S) so that one code path serves the estimate and its bootstrap.
    def _weights(self, weights: NDArray[np.float64] | None) -> NDArray[np.float64]:
        return np.ones((1, self.studies)) if weights is None else weights

    def _sensitivity(self, w: NDArray[np.float64]) -> NDArray[np.float64]:
        lesions = w @ self._lesions
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(lesions[:, None] > 0, (w @ self._hits) / lesions[:, None], np.nan)

    def _fp_per_scan(self, w: NDArray[np.float64]) -> NDArray[np.float64]:
        fps = (w @ self._fps) / w.sum(axis=1, keepdims=True)
        return np.where(fps >= _SATURATED / (self.studies + 1), np.inf, fps)

    def _at_rates(self, w: NDArray[np.float64]) -> NDArray[np.float64]:
        """(R, len(FP_RATES)): the best sensitivity among thresholds whose FP/scan is within each rate (0: none)."""
        sens, fps = self._sensitivity(w), self._fp_per_scan(w)
        out = np.empty((w.shape[0], len(FP_RATES)))
        for k, rate in enumerate(FP_RATES):
            allowed = np.where(fps <= rate + 1e-12, sens, 0.0)
            out[:, k] = np.nanmax(np.where(np.isnan(allowed), 0.0, allowed), axis=1, initial=0.0)
        out[np.isnan(sens).all(axis=1)] = np.nan
        return out

    def _band(self, w: NDArray[np.float64], k: int, band: tuple[float, float]) -> NDArray[np.float64]:
        low, high = band
        hits = np.array([c.hit[k][(d >= low) & (d < high)].sum() for c, d in zip(self.curves, self._diameters,
                                                                                   strict=True)])
        count = np.array([((d >= low) & (d < high)).sum() for d in self._diameters], dtype=np.float64)
        total = w @ count
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (w @ hits) / total, np.nan)

    def band_count(self, band: tuple[float, float]) -> int:
        low, high = band
        return int(sum(((d >= low) & (d < high)).sum() for d in self._diameters))

    def curve(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(FP/scan, sensitivity) per threshold of the grid."""
        w = self._weights(None)
        return self._fp_per_scan(w)[0], self._sensitivity(w)[0]

    def sensitivity_at_rates(self) -> NDArray[np.float64]:
        return self._at_rates(self._weights(None))[0]

    def cpm(self) -> float:
        """Competition performance metric: mean sensitivity at 1/8 ... 8 false positives per scan."""
        return float(np.mean(self.sensitivity_at_rates()))

    def threshold_at(self, fp_per_scan: float) -> float:
        """The lowest grid threshold whose mean FP/scan is at most ``fp_per_scan`` (the top of the grid if none)."""
        fps, _ = self.curve()
        ok = np.nonzero(fps <= fp_per_scan + 1e-12)[0]
        return float(self.thresholds[ok[0]] if ok.size else self.thresholds[-1])

    def study_weights(self, rounds: int, seed: int = 0) -> NDArray[np.float64]:
        """(rounds, studies): how often each study is drawn in each bootstrap round (studies with replacement).
        The same weights applied to two models' curves over the same studies give a paired comparison."""
        return bootstrap_weights(self.studies, rounds, seed)

    def cpm_of(self, weights: NDArray[np.float64]) -> NDArray[np.float64]:
        """The CPM under each row of study ``weights`` (see :meth:`study_weights`)."""
        return self._at_rates(weights).mean(axis=1)

    def sensitivity_of(self, weights: NDArray[np.float64], threshold: float) -> NDArray[np.float64]:
        """Lesion-level sensitivity at ``threshold`` (on the grid) under each row of study ``weights``."""
        return self._sensitivity(weights)[:, self.index(threshold)]

    def fp_per_scan_of(self, weights: NDArray[np.float64], threshold: float) -> NDArray[np.float64]:
        """False positives per scan at ``threshold`` (on the grid) under each row of study ``weights``."""
        return self._fp_per_scan(weights)[:, self.index(threshold)]

    def summary(self, threshold: float, rounds: int = 2000, seed: int = 0) -> dict[str, Interval]:
        """CPM, sensitivity at each FP rate, and sensitivity / FP per scan / size bands at ``threshold``, with
        95% percentile-bootstrap intervals over studies (each round resamples the studies with replacement)."""
        k = self.index(threshold)
        estimate = self._weights(None)
        boot = self.study_weights(rounds, seed) if self.studies > 1 else None

        def interval(metric: NDArray[np.float64] | float, samples: NDArray[np.float64] | None) -> Interval:
            value = float(metric)
            if samples is None or np.isnan(value):
                return Interval(value, None)
            samples = samples[~np.isnan(samples)]
            if samples.size == 0:
                return Interval(value, None)
            return Interval(value, (float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))))

        def both(fn) -> Interval:  # type: ignore[no-untyped-def]
            return interval(fn(estimate)[0], None if boot is None else fn(boot))

        out = {
            "cpm": both(self.cpm_of),
            "sensitivity": both(lambda w: self._sensitivity(w)[:, k]),
            "fp_per_scan": both(lambda w: self._fp_per_scan(w)[:, k]),
        }
        for n, rate in enumerate(FP_RATES):
            out[f"sensitivity@{rate:g}fp"] = both(lambda w, n=n: self._at_rates(w)[:, n])
        for band in SIZE_BANDS_MM:
            if count := self.band_count(band):
                out[f"sensitivity {band_name(band)} ({count})"] = both(lambda w, band=band: self._band(w, k, band))
        return out


def bootstrap_weights(studies: int, rounds: int, seed: int = 0) -> NDArray[np.float64]:
    """(rounds, studies): how often each of ``studies`` is drawn in each bootstrap round (with replacement)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(studies, size=studies), minlength=studies)
                     for _ in range(rounds)]).astype(np.float64).reshape(rounds, studies)


StudyMetric = Callable[[NDArray[np.float64]], NDArray[np.float64]]
"""A figure under each row of (R, S) study weights (e.g. ``Froc.cpm_of``): R values, NaN where undefined."""


def paired_difference(candidate: StudyMetric, live: StudyMetric, studies: int, rounds: int = 2000,
                      seed: int = 0) -> Interval:
    """``candidate - live`` over the same ``studies`` (both metrics index them alike), with the 95% percentile
    interval of the paired bootstrap: each round draws the studies with replacement and weights both models'
    figures by the same draw, so that what the studies share cancels. No interval below two studies; rounds where
    either figure is undefined (e.g. no lesion drawn) are left out."""
    if studies < 1:
        return Interval(float("nan"), None)
    ones = np.ones((1, studies))
    value = float(candidate(ones)[0] - live(ones)[0])
    if studies < 2 or np.isnan(value):
        return Interval(value, None)
    weights = bootstrap_weights(studies, rounds, seed)
    samples = candidate(weights) - live(weights)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return Interval(value, None)
    return Interval(value, (float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))))


def band_name(band: tuple[float, float]) -> str:
    low, high = band
    return f"{low:g}-{high:g} mm" if high != float("inf") else f">= {low:g} mm"
