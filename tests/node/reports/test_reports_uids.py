"""Deterministic UIDs: same (root, run, kind, index) same UID, anything else another, always a valid UID."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from node.reports import OutputKind, Part, ReportOptions, RunUids, derive_uid
from node.reports.options import DEFAULT_UID_ROOT


def test_same_inputs_give_the_same_valid_uid() -> None:
    a = RunUids(DEFAULT_UID_ROOT, "run-7").instance(OutputKind.SC, 3)
    b = RunUids(DEFAULT_UID_ROOT, "run-7").instance(OutputKind.SC, 3)
    assert a == b
    assert a.is_valid and len(a) <= 64 and a.startswith(DEFAULT_UID_ROOT + ".")


def test_run_kind_index_and_root_each_change_the_uid() -> None:
    uids = RunUids(DEFAULT_UID_ROOT, "run-7")
    seen = {
        uids.instance(OutputKind.SC, 3),
        uids.instance(OutputKind.SC, 4),
        uids.instance(OutputKind.SR, 3),
        uids.series(OutputKind.SC),
        RunUids(DEFAULT_UID_ROOT, "run-8").instance(OutputKind.SC, 3),
        RunUids("1.2.826.0.1.3680043.10.999", "run-7").instance(OutputKind.SC, 3),
    }
    assert len(seen) == 6


def test_a_root_too_long_for_unique_suffixes_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 19 are needed"):
        derive_uid("1." + "2" * 44, "run")
    with pytest.raises(ValidationError, match="at most 44"):
        ReportOptions(uid_root="1." + "2" * 44)
    with pytest.raises(ValidationError, match="without leading zeros"):
        ReportOptions(uid_root="1.02.3")


def test_a_runs_uids_are_those_it_had_before_the_kinds_had_one_vocabulary() -> None:
    """A re-run after an upgrade rebuilds the objects it sent (the outbox is unique per SOP Instance UID): the
    derivation text of each kind stays its lower-case name."""
    uids = RunUids(DEFAULT_UID_ROOT, "run-7")
    root = "2.25.275020071003996822760402709912833401401."
    assert uids.instance(OutputKind.SC, 3) == root + "1745221494068486899"
    assert uids.series(OutputKind.SR) == root + "1079273158831470221"
    assert uids.instance(Part.FINDING, 0) == root + "3809718421880134305"
    assert uids.region(0, 1) == root + "9988713550018594039"
