"""UID validation that remembers its answers, for the receiver.

pynetdicom checks every UID it sets on a primitive three times (pydicom's UID constructor, its own ``UI``
validator, which builds the UID again, and ``UID.is_valid``), each a regular expression match: an association
request proposing a hundred contexts validates about a thousand UIDs, and each C-STORE validates its SOP Class
and SOP Instance UIDs again for the request, the response and their encodings. The answers depend on the value
alone, so the two validators that are configurable (pynetdicom's ``_config.VALIDATORS`` and the table pydicom
validates values with) keep the answers for recent values. What is valid, what is warned about and what is
refused stay exactly as they were.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from pydicom import valuerep
from pynetdicom import _config

REMEMBERED = 8192


def _remembering(validate: Callable[..., tuple[bool, str]]) -> Callable[..., tuple[bool, str]]:
    remembered = functools.lru_cache(maxsize=REMEMBERED)(validate)

    @functools.wraps(validate)
    def check(*args: Any) -> tuple[bool, str]:
        try:
            return remembered(*args)
        except TypeError:  # an unhashable value: validated as before
            return validate(*args)

    check.remembered = remembered  # type: ignore[attr-defined]
    return check


def _with_conformance(validate: Callable[[Any], tuple[bool, str]]) -> Callable[[Any], tuple[bool, str]]:
    """pynetdicom's validator also depends on ``_config.ENFORCE_UID_CONFORMANCE``: part of what is remembered."""
    keyed = _remembering(lambda value, _enforced: validate(value))

    def check(value: Any) -> tuple[bool, str]:
        return keyed(value, _config.ENFORCE_UID_CONFORMANCE)

    check.remembered = keyed.remembered  # type: ignore[attr-defined]
    return check


def remember_uid_validation() -> None:
    """Install the remembering UID validators in this process (idempotent)."""
    if not hasattr(_config.VALIDATORS["UI"], "remembered"):
        _config.VALIDATORS["UI"] = _with_conformance(_config.VALIDATORS["UI"])
    if not hasattr(valuerep.VALIDATORS["UI"], "remembered"):
        valuerep.VALIDATORS["UI"] = _remembering(valuerep.VALIDATORS["UI"])
