"""Small statistics the figures and drift charts share: Wilson intervals, quantiles, histogram distances."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95% interval."""


@dataclass(frozen=True)
class Proportion:
    """``successes`` of ``n`` with its Wilson score 95% interval (``value`` and ``ci95`` None when n is 0)."""

    successes: int
    n: int

    @property
    def value(self) -> float | None:
        return self.successes / self.n if self.n else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        return wilson(self.successes, self.n)

    def as_dict(self) -> dict[str, object]:
        return {"value": self.value, "ci95": list(self.ci95) if self.ci95 else None, "successes": self.successes,
                "n": self.n}


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion; None when there are no trials."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within 0..{n}, got {successes}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (linear interpolation between order statistics, numpy's default); None for no values."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def jensen_shannon(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2: 0 identical, 1 disjoint) of two histograms, each normalised to sum 1."""
    a, b = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"histograms differ in bins: {a.shape[0]} and {b.shape[0]}")
    if a.sum() <= 0 or b.sum() <= 0:
        return 0.0
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl(x: np.ndarray) -> float:
        keep = x > 0
        return float(np.sum(x[keep] * np.log2(x[keep] / m[keep])))

    return math.sqrt(max(0.0, (kl(a) + kl(b)) / 2))
