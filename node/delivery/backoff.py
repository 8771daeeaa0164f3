"""Retry delays: exponential backoff with proportional jitter, capped."""

from __future__ import annotations

import random
from typing import Protocol


class BackoffPolicy(Protocol):
    """What a retry policy names (delivery and notify configurations both do)."""

    backoff_initial_s: float
    backoff_max_s: float
    backoff_jitter: float


def retry_delay_s(config: BackoffPolicy, failed_attempts: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``failed_attempts``-th failure (1 = the first).

    The delay is ``backoff_initial_s * 2**(failed_attempts - 1)`` scaled by a random factor in
    ``1 +/- backoff_jitter``, and never more than ``backoff_max_s``.
    """
    if failed_attempts < 1:
        raise ValueError(f"failed_attempts counts from 1, got {failed_attempts}")
    exponent = min(failed_attempts - 1, 62)  # beyond this the cap applies anyway; keeps the float finite
    base = config.backoff_initial_s * 2.0**exponent
    factor = 1.0 + config.backoff_jitter * (2.0 * (rng or random).random() - 1.0)
    return min(config.backoff_max_s, base * factor)
