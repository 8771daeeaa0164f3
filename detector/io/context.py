"""The study's context beyond the pixels, from a series' headers: the patient's age and sex, and the referral.

The referral (Reason for the Requested Procedure, Requested Procedure Description, Admitting Diagnoses) may be
stated at the top level of an image's header or inside its Request Attributes Sequence (one item per request);
both are read. Text is decoded with the data set's Specific Character Set (pydicom does it). The birth date is an
identifier: where Patient's Age is absent, the age in whole years is computed from it and the Study Date, and the
date itself is kept nowhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA

from detector.findings import Code

CONTEXT_NAMES = ("age", "sex", "referral")
"""The context a model card may say its model uses (``ModelCard.context``)."""
_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
_SEXES = {"M", "F", "O"}


@dataclass(frozen=True)
class StudyContext:
    """What the headers say about the patient and why the study was asked for; None or empty where they say
    nothing. ``age_years`` is in years (fractions below one year, from an age in months, weeks or days)."""

    age_years: float | None = None
    sex: str | None = None
    reasons: tuple[str, ...] = ()
    reason_codes: tuple[Code, ...] = ()
    procedure_descriptions: tuple[str, ...] = ()
    admitting_diagnoses: tuple[str, ...] = ()
    admitting_diagnosis_codes: tuple[Code, ...] = ()

    @property
    def referral(self) -> tuple[str, ...]:
        """The referral's lines, each named by what it is, for reading (coded items by their meaning)."""
        return (*(f"Reason for the requested procedure: {t}" for t in self.reasons),
                *(f"Reason for the requested procedure (coded): {c.meaning}" for c in self.reason_codes),
                *(f"Requested procedure: {t}" for t in self.procedure_descriptions),
                *(f"Admitting diagnosis: {t}" for t in self.admitting_diagnoses),
                *(f"Admitting diagnosis (coded): {c.meaning}" for c in self.admitting_diagnosis_codes))

    def as_dict(self) -> dict[str, object]:
        """JSON-ready data (what the run records; :meth:`from_dict` reads it back)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyContext:
        """The context :meth:`as_dict` wrote (a run recorded before context was read: an empty one)."""
        texts = {k: tuple(data.get(k) or ()) for k in ("reasons", "procedure_descriptions", "admitting_diagnoses")}
        codes = {k: tuple(Code(**c) for c in data.get(k) or ()) for k in ("reason_codes", "admitting_diagnosis_codes")}
        return cls(age_years=data.get("age_years"), sex=data.get("sex"), **texts, **codes)

    @property
    def patient(self) -> str:
        """Age and sex as one reads them ("67 years, F"; "unknown" for what the headers do not say)."""
        age = "age unknown" if self.age_years is None else f"{self.age_years:g} years"
        return f"{age}, sex {self.sex or 'unknown'}"


def _texts(values: Iterable[object]) -> tuple[str, ...]:
    """Distinct non-empty texts, in order of first appearance (a multi-valued element gives each value)."""
    seen: dict[str, None] = {}
    for value in values:
        for item in (value if isinstance(value, MultiValue) else [value]):
            text = "" if item is None else str(item).strip()
            if text:
                seen.setdefault(text, None)
    return tuple(seen)


def _places(header: Dataset) -> list[Dataset]:
    """The header itself, then each item of its Request Attributes Sequence."""
    return [header, *(header.get("RequestAttributesSequence", None) or [])]


def _values(headers: Sequence[Dataset], keyword: str) -> tuple[str, ...]:
    return _texts(place.get(keyword) for header in headers for place in _places(header))


def _codes(headers: Sequence[Dataset], keyword: str) -> tuple[Code, ...]:
    found: dict[Code, None] = {}
    for header in headers:
        for place in _places(header):
            for item in place.get(keyword, None) or []:
                value, scheme = str(item.get("CodeValue", "") or "").strip(), str(
                    item.get("CodingSchemeDesignator", "") or "").strip()
                meaning = str(item.get("CodeMeaning", "") or "").strip()
                if value and meaning:
                    found.setdefault(Code(value, scheme, meaning), None)
    return tuple(found)


def _age(header: Dataset) -> float | None:
    """Patient's Age (nnnY/M/W/D) in years; else whole years from the birth date to the Study Date."""
    stated = str(header.get("PatientAge", "") or "").strip().upper()
    if len(stated) == 4 and stated[:3].isdigit() and stated[3] in _AGE_UNITS:
        return round(int(stated[:3]) * _AGE_UNITS[stated[3]], 2)
    born, studied = _date(header.get("PatientBirthDate")), _date(header.get("StudyDate"))
    if born is None or studied is None or studied < born:
        return None
    return float(studied.year - born.year - ((studied.month, studied.day) < (born.month, born.day)))


def _date(value: object) -> date | None:
    if value in (None, ""):
        return None
    try:
        parsed = value if isinstance(value, date) else DA(str(value).strip())
    except ValueError:
        return None
    return parsed if isinstance(parsed, date) else None


def study_context(headers: Sequence[Dataset]) -> StudyContext:
    """The context stated in ``headers`` (a series' images; patient facts from the first that states them)."""
    age = next((a for a in (_age(h) for h in headers) if a is not None), None)
    sex = next((s for s in (str(h.get("PatientSex", "") or "").strip().upper() for h in headers) if s in _SEXES),
               None)
    return StudyContext(
        age_years=age, sex=sex,
        reasons=_values(headers, "ReasonForTheRequestedProcedure"),
        reason_codes=_codes(headers, "ReasonForRequestedProcedureCodeSequence"),
        procedure_descriptions=_values(headers, "RequestedProcedureDescription"),
        admitting_diagnoses=_values(headers, "AdmittingDiagnosesDescription"),
        admitting_diagnosis_codes=_codes(headers, "AdmittingDiagnosesCodeSequence"),
    )
