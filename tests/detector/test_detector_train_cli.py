"""`ctnode train --config FILE`: a tiny run end to end, a resume after kill -9, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from detector.infer import load_model
from detector.registry import load_card
from detector.train.checkpoint import load_checkpoint
from node.cli.main import app

REPO = Path(__file__).resolve().parents[2]
ITERATIONS = 40
MANIFEST = """name: tiny
root: {root}
studies:
  - {{id: chest-a0001, path: chest_lung_pet_ct_dx_A0001, patient: A0001, role: train}}
  - {{id: head-ge, path: head_ge_patient, patient: GE, role: validation}}
  - {{id: head-ge-test, path: head_ge_patient, patient: GE-test, role: test}}
"""
CONFIG = """name: tiny-chest
version: 0.0.1
target: chest
architecture: {{stem_channels: 8, stage_channels: [8, 8, 16, 16], fpn_channels: 16, head_convs: 1}}
data: {{manifest: manifest.yaml, pool: 8, seed: 3}}
schedule: {{iterations: {iterations}, batch: 2, crop_px: 64, threads: 1, checkpoint_every_s: {every}}}
"""


def _config(folder: Path, root: Path, every_s: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.yaml").write_text(MANIFEST.format(root=root))
    path = folder / "tiny.yaml"
    path.write_text(CONFIG.format(iterations=ITERATIONS, every=every_s))
    return path


def _invoke(*args: str) -> tuple[int, str]:
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["train", *args])
    finally:
        torch.set_num_threads(threads)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, ct_data: Callable[[str], Path]) -> Path:
    """The output folder of one uninterrupted tiny run."""
    folder = tmp_path_factory.mktemp("smoke")
    config = _config(folder, ct_data(""), every_s=120.0)
    code, output = _invoke("-c", str(config), "-o", str(folder / "out"))
    assert code == 0, output
    return folder / "out"


def test_a_tiny_run_writes_weights_a_card_with_its_training_record_and_reports(smoke: Path) -> None:
    card = load_card(smoke / "tiny-chest.json")
    assert (card.name, card.version, card.body_part, card.weights_file) == (
        "tiny-chest", "0.0.1", "CHEST", "tiny-chest-0.0.1.pt")
    assert load_model(smoke / "tiny-chest.json").network.config.stage_channels == (8, 8, 16, 16)
    record = card.training
    assert record is not None
    assert (record.manifest, record.seeds, record.samples, record.iterations) == ("tiny", (3,), 8, ITERATIONS)
    assert [(s.id, s.patient, s.use) for s in record.studies] == [
        ("chest-a0001", "A0001", "background"), ("head-ge", "GE", "calibration")]
    assert all(s.study_instance_uid and len(s.series_instance_uids) == 1 for s in record.studies)
    assert any("1 test studies of patient(s) GE" in e.dataset for e in card.evaluation)
    for role in ("validation", "test"):
        assert json.loads((smoke / "evaluation" / role / "report.json").read_text())["studies_evaluated"] == 1
    assert json.loads((smoke / "training.json").read_text())["sessions"] == [0]


def test_an_existing_checkpoint_needs_resume_or_no_resume(smoke: Path) -> None:
    code, output = _invoke("-c", str(smoke.parent / "tiny.yaml"), "-o", str(smoke))
    assert code == 1 and len(output.strip().splitlines()) == 1
    assert "--resume" in output and "--no-resume" in output


def test_a_run_killed_mid_training_resumes_at_its_checkpoint_and_matches_an_uninterrupted_one(
        tmp_path: Path, smoke: Path, ct_data: Callable[[str], Path]) -> None:
    config = _config(tmp_path, ct_data(""), every_s=0.0)
    out = tmp_path / "out"
    checkpoint = out / "checkpoint.pt"
    command = [sys.executable, "-c", "from node.cli.main import app; app()", "train", "-c", str(config), "-o", str(out)]
    with (tmp_path / "first.log").open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    step = load_checkpoint(checkpoint).step
    assert 0 < step < ITERATIONS, (tmp_path / "first.log").read_text()

    code, output = _invoke("-c", str(config), "-o", str(out), "--resume")
    assert code == 0, output
    assert f"resuming at iteration {step}" in output
    assert json.loads((out / "training.json").read_text())["sessions"] == [0, step]
    resumed, uninterrupted = load_checkpoint(checkpoint), load_checkpoint(smoke / "checkpoint.pt")
    assert resumed.step == ITERATIONS
    assert resumed.log.cls == pytest.approx(uninterrupted.log.cls, abs=1e-5), "the resume continued the same run"
    assert load_card(out / "tiny-chest.json").training is not None


@pytest.mark.parametrize(("config", "expected"), [
    ("name: n\nversion: v\ntarget: head\ndata: {manifest: nowhere.yaml}\n", "data.manifest: "),
    ("name: n\nversion: v\ntarget: head\nschedule: {lr: -1}\ndata: {manifest: m.yaml}\n", "schedule.lr"),
    ("name: n\nversion: v\ntarget: chest\ndata: {manifest: manifest.yaml, backgrounds: [head-ge]}\n",
     "data.backgrounds: head-ge not train studies"),
])
def test_config_errors_are_one_line(tmp_path: Path, ct_data: Callable[[str], Path], config: str,
                                    expected: str) -> None:
    _config(tmp_path, ct_data(""), every_s=0.0)
    path = tmp_path / "bad.yaml"
    path.write_text(config)
    code, output = _invoke("-c", str(path), "-o", str(tmp_path / "out"))
    assert code == 2 and "Traceback" not in output
    [line] = output.strip().splitlines()
    assert line.startswith(f"configuration error: {path}: ") and expected in line
