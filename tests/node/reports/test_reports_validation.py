"""Every object kind written for a run passes the DICOM validators (dciodvfy, dsrdump, pixelmed SR validator)."""

from __future__ import annotations

import copy
import subprocess
import warnings
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from detector.findings import Finding
from node.logging import configure_logging
from node.reports import (
    AlgorithmIdentity,
    ReportOptions,
    build_not_analysed_objects,
    build_report_objects,
    write_report_objects,
)
from tests.node.reports.conftest import LUNG, NEOPLASM, finding_on, run_on


@pytest.mark.slow
def test_all_object_kinds_validate_without_errors(
    chest_series: list[Dataset], chest_tumour: Finding, head_series: list[Dataset], head_bleed: Finding,
    algorithm: AlgorithmIdentity, validate_dicom: Path, tmp_path: Path,
) -> None:
    options = ReportOptions(enable_gsps=True, enable_kos=True, institution_name="Test Hospital")
    without_frame = [copy.deepcopy(ds) for ds in chest_series]
    for ds in without_frame:
        del ds.FrameOfReferenceUID
    with_referral = [copy.deepcopy(ds) for ds in chest_series]
    for ds in with_referral:  # the study's context goes into the SR as TID 1500 Qualitative Evaluations
        ds.SpecificCharacterSet, ds.PatientAge, ds.PatientSex = "ISO_IR 100", "071Y", "F"
        ds.RequestAttributesSequence = [_request("Gewichtsverlust, Rundherd?", "CT Thorax")]
        ds.AdmittingDiagnosesDescription = "Raucherin"
    runs = {
        "chest": run_on("chest-1", with_referral, [chest_tumour], algorithm),
        # de-identified data often lacks the Frame of Reference UID: 2D regions only, and said so
        "chest-no-frame": run_on("chest-4", without_frame, [chest_tumour], algorithm),
        "chest-negative": run_on("chest-2", chest_series, [], algorithm),
        "head": run_on("head-1", head_series, [head_bleed], algorithm),
        # one finding on one slice: the report's only 2D region (a case pixelmed's template dispatch is picky about)
        "chest-one-slice": run_on("chest-3", chest_series, [finding_on(
            [chest_series[30]], [(200.0, 290.0, 230.0, 320.0)], 0.8, "nodule", NEOPLASM, LUNG)], algorithm),
    }
    objects = {name: build_report_objects(run, options) for name, run in runs.items()}
    # a study the model did not read says so: its SR and page
    objects["head-not-analysed"] = build_not_analysed_objects(
        run_on("head-2", [_with_request(ds, "Sturz, Kopfschmerz") for ds in head_series], (), algorithm), options,
        "refused by the model's domain gate: contrast-enhanced (Contrast/Bolus Agent IOHEXOL); the model reads "
        "non-contrast series only")
    written = {name: write_report_objects(built, tmp_path / name) for name, built in objects.items()}
    assert objects["chest"].omissions == ()
    [context] = [item for item in objects["chest"].sr.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"]
    assert [(i.ConceptNameCodeSequence[0].CodeMeaning, i.TextValue) for i in context.ContentSequence] == [
        ("Subject Age", "71 years"), ("Subject Sex", "F"),
        ("Indications for Procedure", "Reason for the requested procedure: Gewichtsverlust, Rundherd?"),
        ("Indications for Procedure", "Requested procedure: CT Thorax"),
        ("Indications for Procedure", "Admitting diagnosis: Raucherin")]
    [head_context] = [item for item in objects["head-not-analysed"].sr.ContentSequence
                      if item.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"]
    assert head_context.ContentSequence[-1].TextValue == "Reason for the requested procedure: Sturz, Kopfschmerz"
    assert objects["chest-no-frame"].omissions[0].startswith("3D finding centres (SCOORD3D)")
    assert "FrameOfReferenceUID" not in objects["chest-no-frame"].secondary_captures[0]
    assert "SCOORD3D" not in str(objects["chest-no-frame"].sr) and "SCOORD3D" in str(objects["chest"].sr)
    assert [w.path.name for w in written["chest"]] == ["sr.dcm", "sc-001.dcm", "sc-002.dcm", "gsps.dcm", "kos.dcm"]
    assert [w.path.name for w in written["chest-negative"]] == ["sr.dcm", "sc-001.dcm"]
    result = subprocess.run([str(validate_dicom), str(tmp_path)], capture_output=True, text=True, timeout=300)
    print(result.stdout)
    lines = [line for line in result.stdout.splitlines() if line.endswith(".dcm") or ".dcm:" in line]
    assert [w.path.name for w in written["head-not-analysed"]] == ["sr.dcm", "sc-001.dcm"]
    assert len(lines) == 24, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("validated=24 with_errors=0")


def _request(reason: str, procedure: str | None = None) -> Dataset:
    item = Dataset()
    item.ReasonForTheRequestedProcedure = reason
    if procedure is not None:
        item.RequestedProcedureDescription = procedure
    return item


def _with_request(ds: Dataset, reason: str) -> Dataset:
    """A copy of ``ds`` with one request whose reason is ``reason``."""
    copied = copy.deepcopy(ds)
    copied.RequestAttributesSequence = [_request(reason)]
    return copied


def test_patient_identifiers_stay_out_of_warnings_and_logs(
    chest_series: list[Dataset], chest_tumour: Finding, algorithm: AlgorithmIdentity,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "INFO")  # as a node process does; a CLI test before this one may have set WARNING
    options = ReportOptions(enable_gsps=True, enable_kos=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        objects = build_report_objects(run_on("run-1", chest_series, [chest_tumour], algorithm), options)
        write_report_objects(objects, tmp_path)
    out, err = capsys.readouterr()
    said = " ".join(str(w.message) for w in caught) + out + err
    assert "run-1" in said, "the build is logged"
    assert str(chest_series[0].PatientID) not in said and str(chest_series[0].PatientName) not in said
