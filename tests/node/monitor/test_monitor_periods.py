"""Periods of a fixed length: minutes and hours cut a window like days and weeks do."""

from __future__ import annotations

from datetime import datetime, timezone

from node.monitor.periods import PeriodKind, periods_between, window_back


def test_minutes_and_hours_cut_a_window_and_count_back_whole_periods() -> None:
    since = datetime(2026, 12, 7, 10, 58, 30, tzinfo=timezone.utc)
    until = datetime(2026, 12, 7, 11, 1, 5, tzinfo=timezone.utc)
    minutes = periods_between(since, until, PeriodKind.MINUTE)
    assert [p.label for p in minutes] == ["2026-12-07 10:58", "2026-12-07 10:59", "2026-12-07 11:00",
                                          "2026-12-07 11:01"]
    assert all(p.end == q.start for p, q in zip(minutes, minutes[1:])) and since in minutes[0]
    assert [p.label for p in periods_between(since, until, PeriodKind.HOUR)] == ["2026-12-07 10:00",
                                                                                 "2026-12-07 11:00"]
    assert window_back(until, PeriodKind.MINUTE, 3) == datetime(2026, 12, 7, 10, 59, tzinfo=timezone.utc)
    assert window_back(until, PeriodKind.HOUR, 2) == datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
