"""`ctnode reports list/show` over a database holding a recorded and a refused report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml
from sqlalchemy import Engine
from typer.testing import CliRunner

from node.cli.reports import app
from node.events import ReportSource
from node.labels.radiology_reports import IncomingReport, record_report

UID = "1.2.826.0.1.3680043.8.498.301"
TEXT = "FINDINGS: Possible small SAH. No pulmonary nodule."


def test_list_and_show(engine: Engine, add_study: Callable[..., int], db_url: str, tmp_path: Path) -> None:
    add_study(UID, "ACC-3001")
    recorded = record_report(engine, IncomingReport(TEXT, ReportSource.HL7, accession_numbers=["ACC-3001"],
                                                    control_id="MSG-CLI", result_status="F"))
    refused = record_report(engine, IncomingReport(TEXT, ReportSource.HL7, accession_numbers=["ACC-NONE"],
                                                   control_id="MSG-LOST"))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": db_url}, "storage": {"data_dir": str(tmp_path)},
                                      "logging": {"format": "json"}}))
    runner = CliRunner()
    listed = runner.invoke(app, ["list", "-c", str(config), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["study_instance_uid"], r["current"], r["labels"]) for r in rows] == [
        (refused.report_id, None, False, {}),
        (recorded.report_id, UID, True, {"hyperdense_lesion": "uncertain", "lung_nodule": "negative"})]
    unmatched = json.loads(runner.invoke(app, ["list", "-c", str(config), "--unmatched", "--json"]).stdout)
    assert [r["control_id"] for r in unmatched] == ["MSG-LOST"]
    shown = runner.invoke(app, ["show", str(recorded.report_id), "-c", str(config), "--json"])
    record = json.loads(shown.stdout)
    assert "text" not in record
    assert [(lb["finding_type"], lb["value"], lb["evidence"], lb["rule"]) for lb in record["labels"]] == [
        ("hyperdense_lesion", "uncertain", "FINDINGS: Possible small SAH.", "uncertain.pre:possible"),
        ("lung_nodule", "negative", "No pulmonary nodule.", "negation.pre:no")]
    table = runner.invoke(app, ["show", str(recorded.report_id), "-c", str(config), "--text"])
    assert table.exit_code == 0 and "MSG-CLI" in table.stdout and TEXT in table.stdout
    assert runner.invoke(app, ["show", "999", "-c", str(config)]).exit_code == 1
