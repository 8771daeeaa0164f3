"""`ctnode evaluate` end to end on real studies: tables, report, FROC plot, training flags, one-line errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from node.cli.main import app

runner = CliRunner()


def test_evaluate_reads_voc_labels_runs_the_model_and_flags_training_data(
    ct_data: Callable[[str], Path], tmp_path: Path
) -> None:
    study = ct_data("chest_lung_pet_ct_dx_A0001")
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "-m", "chest", "-d", str(study), "--out", str(out), "--bootstrap", "200",
                                 "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert "chest_lung_pet_ct_dx_A0001 was used in training (background)" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == "ctnode-chest"
    assert report["used_in_training"] == ["chest_lung_pet_ct_dx_A0001"]
    [entry] = report["studies"]
    assert entry["slices"] == 64 and entry["error"] is None
    [tumour] = entry["lesions"]
    assert tumour["label"] == "A" and not tumour["ignore"] and tumour["images"] == 11
    assert len(entry["findings"]) == sum(f["score"] >= report["model"]["operating_threshold"] for f in entry["findings"])
    assert {f["outcome"] for f in entry["findings"]} <= {"hit", "false positive", "ignored"}
    assert entry["false_positives"] == sum(f["outcome"] == "false positive" for f in entry["findings"])
    assert report["metrics"]["fp_per_scan"]["value"] == entry["false_positives"]
    assert report["metrics"]["sensitivity"]["value"] == entry["targets_hit"]
    assert len(report["froc"]["thresholds"]) == len(report["froc"]["fp_per_scan"])
    assert (out / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_manifest_selects_its_role_and_a_malformed_label_is_one_line(
    ct_data: Callable[[str], Path], tmp_path: Path
) -> None:
    study = tmp_path / "broken"
    shutil.copytree(ct_data("head_ge_patient"), study)
    (study / "annotations").mkdir()
    bad = study / "annotations" / "reads.xml"
    bad.write_text("<LidcReadMessage><readingSession>")
    manifest = tmp_path / "set.yaml"
    manifest.write_text(
        "name: tiny\nroot: .\nroot_env: false\nstudies:\n"
        "  - {id: broken, path: broken, patient: p1, role: test, labels: [annotations/reads.xml]}\n"
        f"  - {{id: ge, path: {ct_data('head_ge_patient')}, patient: p2, role: validation}}\n"
    )
    result = runner.invoke(app, ["evaluate", "-m", "head", "-d", str(manifest), "--bootstrap", "50"])
    assert result.exit_code == 1
    assert "broken:" in result.output and f"{bad}: not well-formed XML" in result.output.replace("\n", "")
    assert "Traceback" not in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["evaluate", "-m", "head", "-d", str(manifest), "--role", "validation",
                                 "--bootstrap", "50", "-d", str(empty)])
    assert result.exit_code == 1 and "empty: no DICOM image instance" in " ".join(result.output.split())
    result = runner.invoke(app, ["evaluate", "-m", "head", "-d", str(manifest), "--role", "validation",
                                 "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    assert "│ ge " in result.output and "broken" not in result.output


def test_a_manifest_that_splits_a_patient_across_roles_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    manifest = tmp_path / "set.yaml"
    manifest.write_text("root_env: false\nstudies:\n  - {id: a, path: a, patient: p, role: train}\n"
                        "  - {id: b, path: b, patient: p, role: test}\n")
    result = runner.invoke(app, ["evaluate", "-m", "head", "-d", str(manifest)])
    assert result.exit_code == 2
    assert "patient 'p' is in both train and test" in result.output


def test_a_manifest_gives_a_model_only_the_studies_of_its_body_part(tmp_path: Path) -> None:
    from detector.evaluate import entries_from

    for name in ("h", "c", "u"):
        (tmp_path / name).mkdir()
    manifest = tmp_path / "set.yaml"
    manifest.write_text("root_env: false\nstudies:\n  - {id: h, path: h, patient: a, role: test, body_part: HEAD}\n"
                        "  - {id: c, path: c, patient: b, role: test, body_part: CHEST}\n"
                        "  - {id: u, path: u, patient: c, role: test}\n")
    assert [e.id for e in entries_from([manifest], ["test"], body_part="HEAD")] == ["h", "u"]
    assert [e.id for e in entries_from([manifest], ["test"])] == ["h", "c", "u"]
