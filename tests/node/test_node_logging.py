"""The log pipeline never lets a patient identifier through, whoever logs it and however."""

from __future__ import annotations

import json
import logging

import pydicom
import pytest

from node.logging import configure_logging, get_logger, phi_registry


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]):
    """Call it once to start JSON logging into the capture, again to read the lines logged since."""
    started = False

    def lines() -> list[dict]:
        nonlocal started
        if not started:  # configured inside the test, so the handler writes to the test's captured stderr
            configure_logging("json", "DEBUG")
            started = True
            return []
        return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]

    yield lines
    configure_logging("json", "INFO")


def test_identifier_keys_are_redacted(json_logs):
    json_logs()
    get_logger("t").info("stored", PatientName="DOE^JANE", patient_id="X123", AccessionNumber="A9",
                         nested={"PatientBirthDate": "19700101", "sop": "1.2.3"})
    (line,) = json_logs()
    assert line["PatientName"] == line["patient_id"] == line["AccessionNumber"] == "[redacted]"
    assert line["nested"] == {"PatientBirthDate": "[redacted]", "sop": "1.2.3"}


def test_remembered_values_are_scrubbed_from_any_message_including_stdlib_loggers(json_logs):
    json_logs()
    phi_registry.remember("ROE^RICHARD", "MRN-000042", "ACC-77")
    get_logger("t").warning("failed for ROE^RICHARD (MRN-000042)", detail="accession ACC-77")
    logging.getLogger("pynetdicom.acse").error("peer sent ROE^RICHARD")
    text = json.dumps(json_logs())
    assert "ROE^RICHARD" not in text and "MRN-000042" not in text and "ACC-77" not in text
    assert text.count("[redacted]") == 4


def test_pydicom_objects_are_never_rendered(json_logs):
    json_logs()
    ds = pydicom.Dataset()
    ds.PatientName = "HIDDEN^NAME"
    get_logger("t").info("dataset", ds=ds, element=ds["PatientName"])
    (line,) = json_logs()
    assert "HIDDEN" not in json.dumps(line)
    assert line["ds"] == "<Dataset>"
