"""`ctnode config check`, `ctnode models check` and `ctnode detect` on broken inputs: one line each, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.node.test_node_reliability import corrupt_weights, damaged_model
from tests.support import REPO, require_ct


def ctnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_config_check_gives_one_line_per_problem(tmp_path: Path) -> None:
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("dicom:\n  port: [11112\nstorage: {}\n")
    result = ctnode("config", "check", str(syntax))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"configuration error: {syntax}: YAML syntax error at line 3, column 8: "
                                          "expected ',' or ']', but got ':'"]

    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "dicom": {"port": "eleven"},
        "metrics": {"host": "localhost"},
        "database": {"url": "mysql://db/ctnode"},
        "delivery": {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "pacs..example", "port": 104}]},
    }))
    result = ctnode("config", "check", str(values))
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 4, result.stderr
    assert any("dicom.port: Input should be a valid integer" in line for line in lines)
    assert any("metrics.host: 'localhost' is not an IP address to listen on" in line for line in lines)
    assert any(line.startswith(f"configuration error: {values}: database.url: must be") for line in lines)
    assert any("delivery.destinations.0.host: 'pacs..example' is neither an IP address nor a host name" in line
               for line in lines)

    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"storage": {"data_dir": str(tmp_path / "data")},
                                      "pipeline": {"routes": [{"model": "lungs", "body_parts": ["CHEST"]}]}}))
    result = ctnode("config", "check", str(models))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"configuration error: {models}: pipeline.routes.0.model: no model card "
                                          "'lungs'; shipped models: ctnode-chest, ctnode-head"]

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"storage": {"data_dir": str(tmp_path / "data")}}))
    result = ctnode("config", "check", str(good))
    assert result.returncode == 0 and result.stdout.strip() == f"{good}: ok", result.stderr


def test_models_check_and_detect_name_a_model_that_cannot_be_loaded(tmp_path: Path) -> None:
    corrupt = damaged_model(tmp_path / "corrupt", weights=corrupt_weights())
    latin1 = damaged_model(tmp_path / "latin1", card=json.dumps({"name": "poumon"}).encode().replace(b"ou", b"\xf4"))
    config = tmp_path / "ctnode.yaml"
    config.write_text(yaml.safe_dump({"storage": {"data_dir": str(tmp_path / "data")}, "pipeline": {"routes": [
        {"model": "chest", "body_parts": ["CHEST"]}, {"model": str(corrupt), "body_parts": ["LUNG"]},
        {"model": str(latin1), "body_parts": ["THORAX"]}]}}))
    result = ctnode("models", "check", "-c", str(config))
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("chest: ok: ctnode-chest")
    assert lines[1].startswith(f"{corrupt}: CANNOT BE LOADED: model ctnode-chest 0.2.0: weights ")
    assert "do not load" in lines[1]
    assert lines[2] == f"{latin1}: CANNOT BE LOADED: model card {latin1}: not UTF-8 text (byte 11: invalid continuation byte)"

    series = require_ct("chest_lung_pet_ct_dx_A0001")
    for card, reason in ((corrupt, "do not load"), (latin1, "not UTF-8 text")):
        result = ctnode("detect", str(series), "-m", str(card))
        output = result.stdout + result.stderr
        assert result.returncode == 1 and "Traceback" not in output, output
        assert "cannot detect:" in output and reason in " ".join(output.split())
