"""The study context from a series' headers: age, sex and the referral, at the top level or per request."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from detector.findings import Code
from detector.io.context import StudyContext, study_context


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _request(reason: str | None = None, procedure: str | None = None, codes: list[Dataset] | None = None) -> Dataset:
    item = Dataset()
    if reason is not None:
        item.ReasonForTheRequestedProcedure = reason
    if procedure is not None:
        item.RequestedProcedureDescription = procedure
    if codes is not None:
        item.ReasonForRequestedProcedureCodeSequence = codes
    return item


def test_top_level_attributes_are_read() -> None:
    header = Dataset()
    header.PatientAge, header.PatientSex = "067Y", "F"
    header.ReasonForTheRequestedProcedure = "Persistent cough"
    header.ReasonForRequestedProcedureCodeSequence = [_code("R05", "I10", "Cough")]
    header.RequestedProcedureDescription = "CT chest without contrast"
    header.AdmittingDiagnosesDescription = ["Pneumonia", "COPD"]
    header.AdmittingDiagnosesCodeSequence = [_code("J18.9", "I10", "Pneumonia, unspecified")]
    context = study_context([header])
    assert context == StudyContext(
        age_years=67.0, sex="F", reasons=("Persistent cough",), reason_codes=(Code("R05", "I10", "Cough"),),
        procedure_descriptions=("CT chest without contrast",), admitting_diagnoses=("Pneumonia", "COPD"),
        admitting_diagnosis_codes=(Code("J18.9", "I10", "Pneumonia, unspecified"),))
    assert context.referral == (
        "Reason for the requested procedure: Persistent cough",
        "Reason for the requested procedure (coded): Cough",
        "Requested procedure: CT chest without contrast",
        "Admitting diagnosis: Pneumonia", "Admitting diagnosis: COPD",
        "Admitting diagnosis (coded): Pneumonia, unspecified")


def test_each_request_of_the_request_attributes_sequence_is_read_once_across_slices() -> None:
    slices = []
    for _ in range(3):
        header = Dataset()
        header.RequestAttributesSequence = [
            _request("Headache after fall", "CT head", [_code("R51", "I10", "Headache")]),
            _request("Neck pain", "CT cervical spine")]
        slices.append(header)
    context = study_context(slices)
    assert context.reasons == ("Headache after fall", "Neck pain")
    assert context.procedure_descriptions == ("CT head", "CT cervical spine")
    assert context.reason_codes == (Code("R51", "I10", "Headache"),)


def test_absent_and_empty_values_give_an_empty_context() -> None:
    header = Dataset()
    header.PatientAge, header.PatientSex, header.ReasonForTheRequestedProcedure = "", "", ""
    header.RequestAttributesSequence = [_request()]
    assert study_context([header]) == StudyContext()
    assert study_context([]).as_dict() == {
        "age_years": None, "sex": None, "reasons": [], "reason_codes": [], "procedure_descriptions": [],
        "admitting_diagnoses": [], "admitting_diagnosis_codes": []}


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
@pytest.mark.parametrize(("age", "years"), [("045Y", 45.0), ("018M", 1.5), ("006W", 0.11), ("010D", 0.03),
                                            ("45", None), ("0X5Y", None)])
def test_patients_age_in_years(age: str, years: float | None) -> None:
    header = Dataset()
    header.PatientAge = age
    assert study_context([header]).age_years == years


def test_the_age_falls_back_to_whole_years_from_the_birth_date_which_is_not_kept() -> None:
    header = Dataset()
    header.PatientBirthDate, header.StudyDate = "19600315", "20260314"
    context = study_context([header])
    assert context.age_years == 65.0
    assert "1960" not in repr(context.as_dict())
    header.StudyDate = "20260315"
    assert study_context([header]).age_years == 66.0
    header.StudyDate = "19590101"  # before birth: no age
    assert study_context([header]).age_years is None


def test_an_unknown_sex_is_left_out() -> None:
    header = Dataset()
    header.PatientSex = "X"
    assert study_context([header]).sex is None


@pytest.mark.parametrize(("charset", "text"), [("ISO_IR 144", "Кашель, лихорадка"), ("ISO_IR 100", "Kopfschmerz, Übelkeit"),
                                               ("ISO_IR 192", "頭痛 after fall")])
def test_text_is_decoded_with_the_data_sets_character_set(tmp_path: Path, charset: str, text: str) -> None:
    header = Dataset()
    header.SpecificCharacterSet = charset
    header.SOPClassUID, header.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    header.RequestAttributesSequence = [_request(text)]
    header.AdmittingDiagnosesDescription = text
    header.file_meta = FileMetaDataset()
    header.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header.file_meta.MediaStorageSOPClassUID, header.file_meta.MediaStorageSOPInstanceUID = \
        header.SOPClassUID, header.SOPInstanceUID
    path = tmp_path / "image.dcm"
    header.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    assert text.encode("utf-8") not in raw or charset == "ISO_IR 192"  # really stored in the named character set
    context = study_context([pydicom.dcmread(path)])
    assert context.reasons == (text,)
    assert context.admitting_diagnoses == (text,)
