"""Calendar periods (UTC days, ISO weeks from Monday, or one whole window) that figures and drift are counted in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum


class PeriodKind(StrEnum):
    """How a window is cut into periods."""

    MINUTE = "minute"  # for a simulated site (bench/site.py) that lives a few minutes
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    ALL = "all"  # the whole window, one period


_STEP = {PeriodKind.MINUTE: timedelta(minutes=1), PeriodKind.HOUR: timedelta(hours=1), PeriodKind.DAY: timedelta(days=1),
         PeriodKind.WEEK: timedelta(days=7)}
_LABEL = {PeriodKind.MINUTE: "%Y-%m-%d %H:%M", PeriodKind.HOUR: "%Y-%m-%d %H:00", PeriodKind.DAY: "%Y-%m-%d"}


@dataclass(frozen=True, order=True)
class Period:
    """A half-open interval [start, end) of UTC time and its label ("2024-05-01", "2024-W18", or "since..until")."""

    start: datetime
    end: datetime
    label: str

    def __contains__(self, at: datetime) -> bool:
        return self.start <= at < self.end


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def period_start(at: datetime, kind: PeriodKind) -> datetime:
    """The start of the minute, hour, day or ISO week ``at`` falls in (UTC)."""
    at = _utc(at).replace(second=0, microsecond=0)
    if kind == PeriodKind.MINUTE:
        return at
    if kind == PeriodKind.HOUR:
        return at.replace(minute=0)
    day = at.replace(hour=0, minute=0)
    return day - timedelta(days=day.weekday()) if kind == PeriodKind.WEEK else day


def period_of(at: datetime, kind: PeriodKind) -> Period:
    """The minute, hour, day or ISO week ``at`` falls in."""
    start = period_start(at, kind)
    if kind == PeriodKind.WEEK:
        year, week, _ = start.isocalendar()
        return Period(start, start + _STEP[kind], f"{year}-W{week:02d}")
    return Period(start, start + _STEP[kind], start.strftime(_LABEL[kind]))


def periods_between(since: datetime, until: datetime, kind: PeriodKind) -> list[Period]:
    """Every period that overlaps [since, until), in order (empty ones too: drift must see a silent week);
    ``ALL`` gives the window itself."""
    since, until = _utc(since), _utc(until)
    if until <= since:
        raise ValueError(f"the window is empty: until ({until:%Y-%m-%d %H:%M}) is not after since "
                         f"({since:%Y-%m-%d %H:%M})")
    if kind == PeriodKind.ALL:
        return [Period(since, until, f"{since:%Y-%m-%d %H:%M}..{until:%Y-%m-%d %H:%M}")]
    out = [period_of(since, kind)]
    while out[-1].end < until:
        out.append(period_of(out[-1].end, kind))
    return out


def window_back(until: datetime, kind: PeriodKind, count: int) -> datetime:
    """The start of the period ``count - 1`` periods before the one ``until`` falls in: ``count`` whole periods."""
    if kind == PeriodKind.ALL:
        raise ValueError("a window of whole periods needs periods of a fixed length (minute, hour, day or week)")
    return period_start(_utc(until), kind) - _STEP[kind] * (count - 1)
