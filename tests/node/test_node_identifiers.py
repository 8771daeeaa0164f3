"""Every process scrubs the patient identifiers the database knows, not only the receiver that saw them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import Engine, select

from node.cli.common import open_database
from node.config import DeliveryConfig, Destination, Settings
from node.db import identifiers
from node.db.schema import PatientIdentifier
from node.delivery.destination_worker import DestinationWorker
from node.logging import PHIRegistry, identifier_terms
from node.pipeline.worker import Worker
from tests.node import test_node_pipeline as pipeline_tests
from tests.support import dicom_files, require_ct

Sender = pipeline_tests.Sender
settings, engine = pipeline_tests.settings, pipeline_tests.engine  # the same fixtures

NAME, PATIENT_ID, ACCESSION = "MÜLLER^JÖRG^HANS", "PID-4711-ÄÖ", "ACC-99017"


def _study(tmp_path: Path) -> list[Path]:
    """Three real head slices of one new patient whose name is in ISO_IR 100."""
    out = []
    for i, path in enumerate(dicom_files(require_ct("head_ge_patient"))[:3]):
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName, ds.PatientID, ds.AccessionNumber = NAME, PATIENT_ID, ACCESSION
        ds.save_as(tmp_path / f"{i}.dcm")
        out.append(tmp_path / f"{i}.dcm")
    return out


def test_name_components_are_scrubbed_as_words_and_whole_values_anywhere():
    registry = PHIRegistry()
    assert registry.remember("DOE^JANE", "MRN-1", "ab", None) == ["DOE^JANE", "MRN-1"]
    assert registry.remember("DOE^JANE") == []
    text = "DOE^JANE; JANE DOE; DOE JANE; xMRN-1x; DOES JANET; ab"
    assert registry.scrub(text) == "[redacted]; [redacted] [redacted]; [redacted]; x[redacted]x; DOES JANET; ab"
    assert identifier_terms(" ŁUKASZ^ŻÓŁW ") == {"ŁUKASZ^ŻÓŁW": False, "ŁUKASZ ŻÓŁW": False, "ŁUKASZ": True,
                                                  "ŻÓŁW": True}


def test_the_registry_keeps_the_newest_values_within_its_capacity():
    registry = PHIRegistry(capacity=1000)
    registry.remember(*(f"PID{i:06d}" for i in range(5000)))
    assert registry.scrub("PID004999 PID000000") == "[redacted] PID000000"


def test_a_process_that_never_saw_the_header_scrubs_what_the_receiver_recorded(engine: Engine, settings: Settings,
                                                                                 tmp_path: Path):
    Sender(engine, settings).send(_study(tmp_path))
    with engine.connect() as conn:
        values = list(conn.execute(select(PatientIdentifier.value)).scalars())
    assert {NAME, PATIENT_ID, ACCESSION} <= set(values) and len(values) == len(set(values))
    # a fresh interpreter: it only knows what the database tells it
    script = (
        "import sys; from node.logging import configure_logging, get_logger\n"
        "from node.db.engine import make_engine; from node.db import identifiers\n"
        "configure_logging('json', 'INFO'); identifiers.catch_up(make_engine(sys.argv[1]))\n"
        f"get_logger('t').error('failed for ' + {'JÖRG MÜLLER'!r} + ', ' + {PATIENT_ID!r}, acc={ACCESSION!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", script, settings.database_url], capture_output=True, text=True,
                          check=True)
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert line["event"] == "failed for [redacted] [redacted], [redacted]" and line["acc"] == "[redacted]"


def test_the_worker_catches_up_before_it_claims(engine: Engine, settings: Settings, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch):
    Sender(engine, settings).send(_study(tmp_path))
    fresh = PHIRegistry()
    monkeypatch.setattr(identifiers, "phi_registry", fresh)
    assert fresh.scrub(PATIENT_ID) == PATIENT_ID
    Worker(engine, settings, threading.Event()).run_once()  # nothing is due yet: it still learns
    assert fresh.scrub(f"{PATIENT_ID} {ACCESSION} HANS") == "[redacted] [redacted] [redacted]"
    assert identifiers.catch_up(engine, fresh) == 0  # incremental: nothing new since


def test_the_delivery_sender_and_cli_commands_catch_up(engine: Engine, settings: Settings, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    Sender(engine, settings).send(_study(tmp_path))
    for step in (
        lambda: DestinationWorker(engine, Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=1),
                                  DeliveryConfig(), "CTNODE", threading.Event()).run_once(),  # nothing queued
        lambda: open_database(settings).dispose(),
    ):
        fresh = PHIRegistry()
        monkeypatch.setattr(identifiers, "phi_registry", fresh)
        step()
        assert fresh.scrub(f"{NAME} {ACCESSION}") == "[redacted] [redacted]"


def test_report_sources_teach_the_scrubber_what_ctnode_detect_reads_from_files(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch):
    from node.reports import sources

    fresh = PHIRegistry()
    monkeypatch.setattr(sources, "phi_registry", fresh)
    sources.SourceSeries([pydicom.dcmread(p) for p in _study(tmp_path)])
    assert fresh.scrub(f"{PATIENT_ID} JÖRG") == "[redacted] [redacted]"
