"""structlog setup: JSON lines in production, pretty on a terminal, and no patient identifier ever logged."""

from __future__ import annotations

import logging
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


class PHIRegistry:
    """Recently seen identifier values; any log string containing one is scrubbed (bounded, thread-safe)."""

    def __init__(self, capacity: int = 4096) -> None:
        self._values: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def remember(self, *values: object) -> None:
        with self._lock:
            for value in values:
                text = str(value).strip() if value is not None else ""
                if len(text) < 3:  # too short to scrub without mangling ordinary words and numbers
                    continue
                self._values[text] = None
                self._values.move_to_end(text)
                while len(self._values) > self._capacity:
                    self._values.popitem(last=False)

    def scrub(self, text: str) -> str:
        with self._lock:
            values = [v for v in self._values if v in text]
        for value in sorted(values, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return text


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
