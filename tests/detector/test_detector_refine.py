"""The second stage: patches in patient space, its CPU path through the engine, its card, its training run."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detector.findings import Code, Finding
from detector.infer import (
    InferenceOptions,
    detect_volume,
    findings_at,
    load_model,
    scored_findings,
    slice_detections,
)
from detector.io import StackGeometry, Volume, read_ct_volume
from detector.preprocess.spec import HUWindow
from detector.refine import PatchNet, PatchSpec, extract_patches, refined
from detector.registry import (
    ModelCardError,
    SecondStage,
    WeightsMismatchError,
    card_from_dict,
    card_to_dict,
    load_card,
    save_card,
    sha256_file,
)
from node.cli.main import app

WINDOW = (HUWindow(0.0, 2000.0),)


def _tilted_volume(centre_mm: np.ndarray) -> Volume:
    """40 slices of 64 x 64, 0.7 mm pixels, 2.5 mm apart, rows along a rotated axis; -1000 HU with a 1000 HU ball
    of 4 mm radius at ``centre_mm``."""
    a = np.radians(20)
    row, col = np.array([np.cos(a), np.sin(a), 0.0]), np.array([-np.sin(a), np.cos(a), 0.0])
    positions = np.array([[-20.0, -20.0, 2.5 * k] for k in range(40)])
    geometry = StackGeometry(row_direction=row, column_direction=col, pixel_spacing_mm=(0.7, 0.7),
                             positions_mm=positions, sop_instance_uids=tuple(f"1.2.3.{k}" for k in range(40)),
                             shape=(40, 64, 64))
    z, y, x = np.meshgrid(*(np.arange(n) for n in geometry.shape), indexing="ij")
    points = geometry.voxel_to_patient(np.stack([z, y, x], axis=-1).astype(np.float64))
    hu = np.where(np.linalg.norm(points - centre_mm, axis=-1) <= 4.0, 1000, -1000).astype(np.int16)
    return Volume(hu, geometry, "1.2.3", 1, "1.2", "1.2.4", "1.2.840.10008.5.1.4.1.1.2", 2.5)


def _candidate(centre: tuple[float, float, float], size: float = 8.0, score: float = 0.5) -> Finding:
    return Finding(label="x", finding_type=Code("1", "99X", "x"), score=score, centre_mm=centre,
                   size_mm=(size, size, size), voxel_box=(0, 0, 0, 1, 1, 1), slices=())


def test_a_patch_is_centred_on_its_candidate_in_patient_space_and_reads_air_outside_the_volume() -> None:
    centre = np.array([0.0, 5.0, 50.0])
    volume = _tilted_volume(centre)
    spec = PatchSpec(windows=WINDOW, side_mm=24.0, voxels=13)
    on, off = extract_patches(volume, [_candidate(tuple(centre)), _candidate((0.0, 5.0, 62.0))], spec)
    weights = on[0].numpy() - float(on[0].min())
    grid = np.indices(weights.shape).reshape(3, -1)
    centroid = (grid * weights.reshape(-1)).sum(axis=1) / weights.sum()
    assert centroid == pytest.approx([6, 6, 6], abs=0.25), "the ball's centre is the patch's centre voxel"
    assert float(on[0, 6, 6, 6]) == pytest.approx(1.0, abs=0.05)
    assert float(off[0, 6, 6, 6]) == pytest.approx(0.0, abs=0.05), "12 mm away along the normal: lung, not ball"
    outside = extract_patches(volume, [_candidate((0.0, 5.0, 200.0))], spec)
    assert float(outside.max()) <= (-1000 + 1000) / 2000 + 1e-6, "beyond the last slice everything reads as air"


def test_a_patch_grows_with_a_large_candidate() -> None:
    spec = PatchSpec(windows=WINDOW, side_mm=48.0, scale=1.5)
    assert spec.side_of((10.0, 12.0, 5.0)) == 48.0
    assert spec.side_of((50.0, 40.0, 5.0)) == 75.0


def _two_stage(tmp_path: Path, network: PatchNet, candidate_threshold: float = 0.2, max_candidates: int = 25) -> Path:
    """The shipped chest detector with ``network`` as its second stage, as a card folder."""
    source = Path(__file__).resolve().parents[2] / "detector" / "registry" / "models" / "ctnode-chest.json"
    card = load_card(source)
    shutil.copyfile(source.parent / card.weights_file, tmp_path / card.weights_file)
    torch.save(network.flat_state(), tmp_path / "second.pt")
    stage = SecondStage(weights_file="second.pt", weights_sha256=sha256_file(tmp_path / "second.pt"),
                        candidate_threshold=candidate_threshold, max_candidates=max_candidates)
    save_card(dataclasses.replace(card, operating_threshold=0.3, second_stage=stage), tmp_path / "two-stage.json")
    return tmp_path / "two-stage.json"


def test_the_second_stage_rescores_the_first_stages_candidates_on_the_cpu(
        tmp_path: Path, ct_data: Callable[[str], Path]) -> None:
    torch.manual_seed(0)
    model = load_model(_two_stage(tmp_path, PatchNet()))
    assert model.refiner is not None and model.refiner.max_candidates == 25
    volume, _ = read_ct_volume(ct_data("chest_lung_pet_ct_dx_A0001"))
    options = InferenceOptions(threads=1, device=torch.device("cpu"))
    detections = slice_detections(volume, model, options)
    assert min(d.score for d in detections) >= 0.2 * 0.5, "the first stage runs down to the candidate threshold"
    scored = scored_findings(detections, volume, model)
    assert scored is not None and 0 < len(scored) <= 25
    candidates = findings_at(detections, volume, dataclasses.replace(model, refiner=None), 0.2)[:25]
    assert {f.centre_mm for f in candidates} == {f.centre_mm for f in scored}, "the same candidates, re-scored"
    expected = dict(zip((f.centre_mm for f in candidates), model.refiner.scores(volume, candidates), strict=True))
    assert [f.score for f in scored] == pytest.approx([expected[f.centre_mm] for f in scored], abs=1e-5)
    assert [f.score for f in scored] == sorted((f.score for f in scored), reverse=True)
    findings, dropped = detect_volume(volume, model, options, max_findings=3)
    reported = [f for f in scored if f.score >= 0.3]
    assert [f.centre_mm for f in findings + dropped] == [f.centre_mm for f in reported]
    assert len(findings) == min(3, len(reported))


def _constant(logit: float) -> PatchNet:
    """A second stage whose every output is ``logit`` (zero weights, constant bias)."""
    net = PatchNet()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.head[-1].bias.fill_(logit)
    return net.eval()


def test_refined_keeps_the_best_candidates_by_first_stage_score() -> None:
    centre = np.array([0.0, 5.0, 50.0])
    volume = _tilted_volume(centre)
    from detector.refine import Refiner

    refiner = Refiner(PatchSpec(windows=(*WINDOW, *WINDOW), voxels=8), _constant(1.0), 0.1, max_candidates=2)
    candidates = [_candidate((0.0, 5.0, 50.0 + k), score=s) for k, s in enumerate((0.2, 0.9, 0.5))]
    out = refined(refiner, volume, candidates)
    assert sorted(f.centre_mm[2] for f in out) == [51.0, 52.0]
    assert all(f.score == pytest.approx(1 / (1 + np.exp(-1.0))) for f in out)


def test_a_cards_second_stage_round_trips_and_its_weights_are_verified(tmp_path: Path) -> None:
    path = _two_stage(tmp_path, PatchNet())
    card = load_card(path)
    assert card_from_dict(card_to_dict(card)) == card
    (tmp_path / "second.pt").write_bytes(b"not the trained weights")
    with pytest.raises(WeightsMismatchError, match="second.pt"):
        load_model(path)
    data = card_to_dict(card)
    data["second_stage"]["candidate_threshold"] = 1.5
    with pytest.raises(ModelCardError, match="candidate_threshold"):
        card_from_dict(data)


MANIFEST = """name: tiny
root: {root}
studies:
  - {{id: chest-a0001, path: chest_lung_pet_ct_dx_A0001, patient: A0001, role: train}}
  - {{id: head-ge, path: head_ge_patient, patient: GE, role: validation}}
synthetic:
  - {{background: chest-a0001, target: chest, studies: 1, negatives: 0, lesions: 1, seed: 7}}
"""
CONFIG = """name: tiny-two-stage
version: 0.0.1
target: chest
data: {manifest: manifest.yaml, seed: 3}
second_stage: {first_stage: chest, candidate_threshold: 0.3, max_candidates: 20, voxels: 8, iterations: 3, batch: 6}
"""


def test_a_second_stage_training_run_writes_a_two_stage_card(
        tmp_path: Path, ct_data: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the synthetic set is written under var/synthetic of the working folder
    (tmp_path / "manifest.yaml").write_text(MANIFEST.format(root=ct_data("")))
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["train", "-c", "tiny.yaml", "-o", "out"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "out" / "tiny-two-stage.json")
    assert model.refiner is not None
    stage = model.card.second_stage
    assert stage is not None and (stage.candidate_threshold, stage.max_candidates, stage.voxels) == (0.3, 20, 8)
    assert model.card.training is not None
    uses = {s.id: s.use for s in model.card.training.studies}
    assert uses["chest-a0001"] in ("background", "labelled") and uses["chest-a0001+7"] == "labelled"
    assert uses["head-ge"] == "calibration"
    assert (tmp_path / "out" / "evaluation" / "validation").is_dir()
