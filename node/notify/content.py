"""What a notification says: the payload kept on its row (no patient identifiers), and the identifiers a
channel that carries them reads from the run's images when it sends."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import pydicom


class Revision(StrEnum):
    """What a notification is to the ones before it on its channel, for the same study and model."""

    ORIGINAL = "original"  # the first result told for the study
    CORRECTION = "correction"  # a later version changed the result told before
    WITHDRAWAL = "withdrawal"  # a later version no longer stands by the result told before (not analysed now)


def payload(run: Any, findings: list[dict[str, Any]], tracking_uids: list[str], urgent: list[int]) -> dict[str, Any]:
    """The payload of ``run`` (a run row with its decision): study and series, model, decision and reason, each
    finding (type code, score, centre and size in mm, tracking UID as in the SR, urgent or not)."""
    items = []
    for n, finding in enumerate(findings):
        items.append({"label": finding["label"], "finding_type": finding["finding_type"],
                      "score": round(float(finding["score"]), 4),
                      "centre_mm": [round(float(v), 1) for v in finding["centre_mm"]],
                      "size_mm": [round(float(v), 1) for v in finding["size_mm"]],
                      "tracking_uid": tracking_uids[n] if n < len(tracking_uids) else None,
                      "urgent": n in urgent})
    return {"run_id": run.id, "study_instance_uid": run.study_instance_uid,
            "series_instance_uid": run.series_instance_uid, "study_version": run.version,
            "model": {"name": run.model_name, "version": run.model_version},
            "decision": run.decision, "reason": run.decision_reason, "findings": items}


def withdrawn_findings(prior: dict[str, Any], current: int) -> list[dict[str, Any]]:
    """The findings a channel was told of by the notification whose payload is ``prior`` (its own findings and those
    it withdrew itself) that a result of ``current`` findings no longer has: each as it was told, with its
    ``number`` (1-based, its place in the version that told it), for the channel to withdraw by that number."""
    told = {int(f["number"]): f for f in prior.get("withdrawn_findings", [])}
    told.update({n: {**f, "number": n} for n, f in enumerate(prior["findings"], start=1)})
    return [told[n] for n in sorted(told) if n > current]


def result_digest(content: dict[str, Any]) -> str:
    """A digest of what a payload says (decision and findings), not of which run said it: equal digests are the
    same result, and a later version with the same result is not told again."""
    said = {"decision": content["decision"],
            "findings": [{k: f[k] for k in ("label", "score", "centre_mm", "size_mm", "urgent")}
                         for f in content["findings"]]}
    return hashlib.sha256(json.dumps(said, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Identifiers:
    """The patient and order identifiers of a study, read from one of its images (never logged, never stored)."""

    patient_name: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    birth_date: str = ""
    sex: str = ""
    accession_number: str = ""

    @classmethod
    def read(cls, path: Path) -> Identifiers:
        """The identifiers in the header of the DICOM file at ``path`` (empty where it has none)."""
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
            "SpecificCharacterSet"])
        return cls(patient_name=str(ds.get("PatientName", "") or ""), patient_id=str(ds.get("PatientID", "") or ""),
                   issuer_of_patient_id=str(ds.get("IssuerOfPatientID", "") or ""),
                   birth_date=str(ds.get("PatientBirthDate", "") or ""), sex=str(ds.get("PatientSex", "") or ""),
                   accession_number=str(ds.get("AccessionNumber", "") or ""))
