"""structlog setup: JSON lines in production, pretty on a terminal, and no patient identifier ever logged."""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections import OrderedDict
from typing import Any, Literal

import structlog

# Event-dict keys whose values are patient identifiers, in the spellings code might use.
PHI_KEYS = frozenset(
    k.lower()
    for k in (
        "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs",
        "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers", "IssuerOfPatientID",
        "patient_name", "patient_id", "patient_birth_date", "accession_number", "birth_date", "accession",
    )
)
REDACTED = "[redacted]"
IDENTIFIER_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")
"""The attributes whose values every process learns and scrubs."""


_PN_SEPARATORS = re.compile(r"[\^=]+")
_PREFIX = 3  # shortest value scrubbed: shorter ones would mangle ordinary words and numbers


def identifier_terms(value: object) -> dict[str, bool]:
    """What a log line may show of one identifier value, each term with whether it counts only as a whole word:
    the value itself (anywhere) and, for a person name, its space-separated form (anywhere) and its components
    (whole words: a name reaches logs as ``DOE^JANE``, ``DOE JANE`` or ``JANE``, but ``DOES`` is not a name)."""
    text = str(value).strip() if value is not None else ""
    terms = {text: False} if len(text) >= _PREFIX else {}
    if _PN_SEPARATORS.search(text):
        parts = [p.strip() for p in _PN_SEPARATORS.split(text) if p.strip()]
        joined = " ".join(parts)
        if len(joined) >= _PREFIX:
            terms.setdefault(joined, False)
        terms.update({p: True for p in parts if len(p) >= _PREFIX and p not in terms})
    return terms


def _word_at(text: str, start: int, end: int) -> bool:
    return (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum())


class PHIRegistry:
    """Identifier values this process knows (seen in headers, or from the database); any log string holding
    one is scrubbed. Bounded (the oldest go first) and thread-safe; lookup costs one dict probe per character
    of the text, however many values are known."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._terms: OrderedDict[str, bool] = OrderedDict()  # term -> whole words only
        self._by_prefix: dict[str, set[str]] = {}
        self._capacity = capacity
        self._lock = threading.Lock()

    def remember(self, *values: object) -> list[str]:
        """Learn ``values`` (with their name components); returns the values that were new, for the database."""
        new: list[str] = []
        with self._lock:
            for value in values:
                terms = identifier_terms(value)
                if terms and self._terms.get(next(iter(terms)), True):  # unknown, or known only as a name part
                    new.append(next(iter(terms)))
                for term, word_only in terms.items():
                    if term in self._terms:
                        self._terms[term] = self._terms[term] and word_only
                        self._terms.move_to_end(term)
                        continue
                    self._terms[term] = word_only
                    self._by_prefix.setdefault(term[:_PREFIX], set()).add(term)
            while len(self._terms) > self._capacity:
                old, _ = self._terms.popitem(last=False)
                bucket = self._by_prefix[old[:_PREFIX]]
                bucket.discard(old)
                if not bucket:
                    del self._by_prefix[old[:_PREFIX]]
        return new

    def scrub(self, text: str) -> str:
        """``text`` with every known term (the longest at each place) replaced by the redaction mark."""
        out: list[str] = []
        i = kept = 0
        with self._lock:
            while i <= len(text) - _PREFIX:
                bucket = self._by_prefix.get(text[i:i + _PREFIX])
                match = max((t for t in bucket if text.startswith(t, i)
                             and not (self._terms[t] and not _word_at(text, i, i + len(t)))),
                            key=len, default=None) if bucket else None
                if match is None:
                    i += 1
                    continue
                out += [text[kept:i], REDACTED]
                i = kept = i + len(match)
        return "".join(out) + text[kept:] if out else text


phi_registry = PHIRegistry()


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return phi_registry.scrub(value)
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in PHI_KEYS else _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    if type(value).__module__.startswith("pydicom"):
        return f"<{type(value).__name__}>"  # datasets and elements are never rendered into a log
    return value


def redact_phi(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: drop identifier keys, hide pydicom objects, scrub remembered identifier values."""
    return {k: REDACTED if k.lower() in PHI_KEYS else _scrub(v) for k, v in event_dict.items()}


def configure_logging(fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO") -> None:
    """Route structlog and the standard library (pynetdicom, alembic) through one redacting pipeline."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_phi,
    ]
    structlog.configure(
        processors=[*shared[:2], structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared[1:],
        processors=[*shared[2:], structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom's INFO/DEBUG output can include dataset dumps, and highdicom narrates every attribute it
    # copies; keep both to warnings.
    for chatty in ("pynetdicom", "highdicom"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
