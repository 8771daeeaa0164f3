"""Deterministic UIDs: same (root, run, kind, index) same UID, anything else another, always a valid UID."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from node.reports import ObjectKind, ReportOptions, RunUids, derive_uid
from node.reports.options import DEFAULT_UID_ROOT


def test_same_inputs_give_the_same_valid_uid() -> None:
    a = RunUids(DEFAULT_UID_ROOT, "run-7").instance(ObjectKind.SC, 3)
    b = RunUids(DEFAULT_UID_ROOT, "run-7").instance(ObjectKind.SC, 3)
    assert a == b
    assert a.is_valid and len(a) <= 64 and a.startswith(DEFAULT_UID_ROOT + ".")


def test_run_kind_index_and_root_each_change_the_uid() -> None:
    uids = RunUids(DEFAULT_UID_ROOT, "run-7")
    seen = {
        uids.instance(ObjectKind.SC, 3),
        uids.instance(ObjectKind.SC, 4),
        uids.instance(ObjectKind.SR, 3),
        uids.series(ObjectKind.SC),
        RunUids(DEFAULT_UID_ROOT, "run-8").instance(ObjectKind.SC, 3),
        RunUids("1.2.826.0.1.3680043.10.999", "run-7").instance(ObjectKind.SC, 3),
    }
    assert len(seen) == 6


def test_a_root_too_long_for_unique_suffixes_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 19 are needed"):
        derive_uid("1." + "2" * 44, "run")
    with pytest.raises(ValidationError, match="at most 44"):
        ReportOptions(uid_root="1." + "2" * 44)
    with pytest.raises(ValidationError, match="without leading zeros"):
        ReportOptions(uid_root="1.02.3")
