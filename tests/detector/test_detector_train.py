"""detector.train: ignore boxes (lesion poles, crop-cut lesions), their anchor targets, augmentation in HU, the
config, checkpoints, and the loop (a few iterations, resume)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.data import load_manifest
from detector.io import read_ct_volume
from detector.models import DetectorConfig, RetinaNet, assign, decode
from detector.models.loss import BACKGROUND, IGNORE
from detector.preprocess import HUWindow, InputSpec
from detector.preprocess.batch import window
from detector.train.augment import augment, flip
from detector.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    TrainLog,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from detector.train.config import Augmentation, TrainConfigError, load_train_config
from detector.train.loop import TrainSettings, train
from detector.train.matching import training_targets
from detector.train.samples import MIN_BOX_PX, Sample, crop, render_sample
from detector.train.targets import TARGETS

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "detector" / "train" / "configs"
SPEC = InputSpec(pixel_spacing_mm=1.0, windows=(HUWindow(40.0, 80.0), HUWindow(0.0, 1000.0)), context_slices=0)
"""Two windows of one plane: the 2-channel input of the small test network."""

SMALL = dict(stem_channels=8, stage_channels=(8, 8, 16, 16), fpn_channels=16, head_convs=1)


def _sample(boxes: list[list[float]], ignore: list[list[float]] | None = None, size: int = 64) -> Sample:
    return Sample(
        image=torch.rand(2, size, size),
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.zeros(len(boxes), dtype=torch.long),
        ignore=torch.tensor(ignore or [], dtype=torch.float32).reshape(-1, 4),
    )


def test_a_box_the_crop_cuts_mostly_away_becomes_an_ignore_box_not_background() -> None:
    # a 32 px window of a 32 px image sits at (0, 0): a 10 px lesion reaching past its right edge keeps
    # 5 of its 10 columns (still a lesion) or 3 (an ignore box: its visible part is not background)
    half = crop(_sample([[26.5, 10.5, 36.5, 20.5]], size=32), 32, np.random.default_rng(0), on_lesion=True)
    assert half.boxes.tolist() == [pytest.approx([26.5, 10.5, 31.5, 20.5])] and len(half.ignore) == 0
    sliver = crop(_sample([[28.5, 10.5, 38.5, 20.5]], size=32), 32, np.random.default_rng(0), on_lesion=True)
    assert len(sliver.boxes) == 0 and len(sliver.labels) == 0
    assert sliver.ignore.tolist() == [pytest.approx([28.5, 10.5, 31.5, 20.5])]
    gone = crop(_sample([], ignore=[[40.0, 40.0, 41.0, 41.0]], size=32), 32, np.random.default_rng(0), False)
    assert len(gone.ignore) == 0, "an ignore box outside the window is dropped"
    small = crop(_sample([[5.0, 5.0, 15.0, 15.0]], size=64), 32, np.random.default_rng(3), on_lesion=True)
    assert small.image.shape[-2:] == (32, 32) and len(small.boxes) == 1


def test_ignore_boxes_survive_crops_and_flips_in_place() -> None:
    sample = _sample([[10.5, 10.5, 20.5, 20.5]], ignore=[[40.0, 40.0, 41.0, 41.0]])
    flipped = flip(sample)
    assert flipped.boxes[0].tolist() == pytest.approx([63 - 20.5, 10.5, 63 - 10.5, 20.5])
    assert flipped.ignore[0].tolist() == pytest.approx([63 - 41.0, 40.0, 63 - 40.0, 41.0])
    assert torch.equal(flipped.image, sample.image.flip(-1))


def test_background_anchors_on_an_ignore_box_are_ignored_and_positives_stay() -> None:
    model = RetinaNet(DetectorConfig(in_channels=2, num_classes=1, **SMALL))
    anchors = model.anchors(64, 64)
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    labels = torch.zeros(1, dtype=torch.long)
    ignore = torch.tensor([[44.0, 44.0, 45.5, 45.5]])
    plain = training_targets(anchors, boxes, labels, torch.zeros(0, 4))
    masked = training_targets(anchors, boxes, labels, ignore)
    assert torch.equal(plain.labels >= 0, masked.labels >= 0), "positives do not change"
    newly = (plain.labels == BACKGROUND) & (masked.labels == IGNORE)
    assert newly.any()
    centres = (anchors[newly, :2] + anchors[newly, 2:]) / 2
    assert ((centres - torch.tensor([44.75, 44.75])).abs().max(dim=1).values <= 24 + 1).all(), \
        "only anchors around the ignore box are ignored"
    far = (anchors[:, :2] + anchors[:, 2:]) / 2
    away = (far - torch.tensor([44.75, 44.75])).norm(dim=1) > 40
    assert (masked.labels[away & (plain.labels == BACKGROUND)] == BACKGROUND).all()


def _hu_sample(hu: torch.Tensor) -> Sample:
    return Sample(image=window(hu[None], SPEC), boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))


def test_intensity_jitter_acts_in_hu_before_the_windows_and_leaves_saturated_pixels() -> None:
    hu = torch.linspace(-200.0, 1200.0, 64 * 64).reshape(64, 64)
    sample = _hu_sample(hu)
    augmentation = Augmentation(flips=False, intensity_scale=0.2, intensity_offset_hu=30.0)
    out = augment(sample, augmentation, SPEC, np.random.default_rng(7))
    draws = np.random.default_rng(7)
    scale, offset = 1.0 + draws.uniform(-0.2, 0.2), draws.uniform(-30.0, 30.0)
    expected = window((hu * scale + offset)[None], SPEC)
    inside = (sample.image > 0) & (sample.image < 1)
    assert torch.allclose(out.image[inside], expected[inside], atol=1e-5)
    assert torch.equal(out.image[~inside], sample.image[~inside]), "saturated pixels and padding stay as they are"


def test_hu_noise_is_one_field_per_plane_seen_through_every_window() -> None:
    hu = torch.full((32, 32), 40.0)
    sample = _hu_sample(hu)
    out = augment(sample, Augmentation(flips=False, hu_noise_sigma=(5.0, 5.0)), SPEC, np.random.default_rng(1))
    narrow, wide = (out.image - sample.image) * torch.tensor([80.0, 1000.0])[:, None, None]
    unclipped = (out.image[0] > 0) & (out.image[0] < 1)
    assert torch.allclose(narrow[unclipped], wide[unclipped], atol=1e-3)
    assert 3.0 < float(wide.std()) < 7.0


def test_by_default_only_flips_and_half_the_crops_come_back_untouched() -> None:
    sample = _sample([[10.5, 10.5, 20.5, 20.5]])
    rng = np.random.default_rng(0)
    outs = [augment(sample, Augmentation(), SPEC, rng) for _ in range(40)]
    untouched = sum(o is sample for o in outs)
    assert 10 < untouched < 30
    assert all(o is sample or torch.equal(o.image, sample.image.flip(-1)) for o in outs)


def test_the_shipped_configs_reproduce_the_targets_and_take_architecture_switches(tmp_path: Path) -> None:
    head, chest = load_train_config(CONFIGS / "head.yaml"), load_train_config(CONFIGS / "chest.yaml")
    assert (head.target, head.schedule.crop_px, head.data.pool, head.data.backgrounds) == (
        "head", 128, 2400, ("head-phantom", "head-ge"))
    assert (chest.target, chest.schedule.crop_px, chest.data.pool, chest.data.backgrounds) == (
        "chest", 192, 1600, ("chest-a0001",))
    assert head.data.manifest == REPO / "detector" / "data" / "manifests" / "shared-ct.yaml"
    assert head.augmentation == Augmentation() and head.evaluation.fp_per_scan == 1.0
    ablation = tmp_path / "ablation.yaml"
    ablation.write_text("name: a\nversion: 1\ntarget: chest\narchitecture: {fpn: false, dcn_stages: [], loss: bce}\n"
                        "data: {manifest: m.yaml}\n")
    config = load_train_config(ablation)
    network = config.detector_config()
    assert (network.fpn, network.dcn_stages, network.loss) == (False, (), "bce")
    assert (network.in_channels, network.num_classes) == (6, 1)
    assert config.data.manifest == tmp_path / "m.yaml" and config.version == "1"


@pytest.mark.parametrize(("text", "field"), [
    ("target: knee", "target"),
    ("schedule: {crop_px: 100}", "schedule.crop_px"),
    ("schedule: {iterations: 0}", "schedule.iterations"),
    ("data: {manifest: m.yaml, bogus: 1}", "data.bogus"),
    ("architecture: {fpn: maybe}", "architecture.fpn"),
    ("architecture: {dcn_stages: [7]}", "architecture"),
    ("architecture: {wings: 2}", "architecture"),
    ("augmentation: {hu_noise_sigma: [9, 1]}", "augmentation.hu_noise_sigma"),
    ("data: [", "not valid YAML"),
])
def test_a_bad_config_is_one_line_naming_the_file_and_the_field(tmp_path: Path, text: str, field: str) -> None:
    base = {"name": "name: n", "version": "version: v", "target": "target: head", "data": "data: {manifest: m.yaml}"}
    key = text.split(":")[0]
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join([*(v for k, v in base.items() if k != key), text]) + "\n")
    with pytest.raises(TrainConfigError) as caught:
        load_train_config(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)) and f"{field}" in message


def test_a_checkpoint_round_trips_and_restores_every_rng(tmp_path: Path) -> None:
    generator = np.random.default_rng(3)
    torch.manual_seed(5)
    states = rng_states(generator)
    expected = (generator.random(), float(torch.rand(1)))
    path = tmp_path / "checkpoint.pt"
    model = torch.nn.Linear(2, 1)
    save_checkpoint(Checkpoint(step=4, elapsed_s=2.5, model=model.state_dict(), optimiser={}, scaler={}, rng=states,
                               log=TrainLog(cls=[1.0], box=[0.5], seconds=[0.1], sessions=[0]), key={"a": [1]}), path)
    (tmp_path / ".checkpoint.pt.tmp").write_bytes(b"half a checkpoint: a kill during the next save")
    loaded = load_checkpoint(path)
    assert (loaded.step, loaded.elapsed_s, loaded.log.sessions, loaded.key) == (4, 2.5, [0], {"a": [1]})
    restore_rng_states(loaded.rng, generator)
    assert (generator.random(), float(torch.rand(1))) == expected
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def _pool() -> list[Sample]:
    pool = [_sample([[20.5, 20.5, 30.5, 28.5]], ignore=[[50.0, 8.0, 51.0, 9.0]]) for _ in range(3)]
    return [*pool, _sample([])]


SETTINGS = TrainSettings(iterations=3, budget_s=60.0, batch=2, crop_px=32, report_every=0, checkpoint_every_s=0.0)


def test_a_few_training_iterations_run_and_leave_the_network_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = RetinaNet(DetectorConfig(in_channels=2, num_classes=1, **SMALL))
    log = train(model, _pool(), SPEC, SETTINGS)
    assert len(log.cls) == len(log.seconds) == 3 and all(math.isfinite(v) for v in log.cls + log.box)
    assert log.sessions == [0]
    assert not model.training


def test_a_resumed_run_continues_at_the_saved_step_only_under_the_same_schedule(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.manual_seed(0)
    model = RetinaNet(DetectorConfig(in_channels=2, num_classes=1, **SMALL))
    first = train(model, _pool(), SPEC, SETTINGS, path)
    assert load_checkpoint(path).step == 3
    again = train(model, _pool(), SPEC, SETTINGS, path, resume=True)
    assert again.sessions == [0, 3] and again.cls == first.cls, "nothing left to train: the log carries over"
    with pytest.raises(CheckpointError, match="schedule"):
        train(model, _pool(), SPEC, replace(SETTINGS, lr=0.5), path, resume=True)
    fresh = train(model, _pool(), SPEC, SETTINGS, path, resume=False)
    assert fresh.sessions == [0]


def test_the_shared_ct_manifest_splits_by_patient(ct_data: Callable[[str], Path]) -> None:
    ct_data("")
    manifest = load_manifest(REPO / "detector" / "data" / "manifests" / "shared-ct.yaml")
    roles = {s.id: (s.role, s.path.name) for s in manifest.studies}
    assert roles == {
        "head-phantom": ("train", "head_phantom_philips_study"), "head-ge": ("train", "head_ge_patient"),
        "chest-a0001": ("train", "chest_lung_pet_ct_dx_A0001"), "lidc-0001": ("test", "lidc_idri_0001"),
        "lidc-0002": ("validation", "lidc_idri_0002"),
    }
    assert len({s.patient for s in manifest.studies}) == 5
    assert manifest.by_id("chest-a0001").body_part == "CHEST"


def test_a_small_lesion_gets_more_than_its_one_claimed_anchor_all_centred_on_it() -> None:
    model = RetinaNet(DetectorConfig(in_channels=2, num_classes=1))
    anchors = model.anchors(64, 64)
    labels = torch.zeros(1, dtype=torch.long)
    for box in ([40.0, 41.0, 45.0, 46.0], [30.3, 20.3, 33.3, 23.3]):
        boxes = torch.tensor([box])
        plain = assign(anchors, boxes, labels)
        targets = training_targets(anchors, boxes, labels, torch.zeros(0, 4))
        positive = targets.labels >= 0
        assert ((plain.labels >= 0) & ~positive).sum() == 0, "every RetinaNet positive stays positive"
        assert int(positive.sum()) > int((plain.labels >= 0).sum())
        centres = (anchors[positive, :2] + anchors[positive, 2:]) / 2
        low, high = boxes[0, :2] - 1.0, boxes[0, 2:] + 1.0
        assert ((centres >= low) & (centres <= high)).all()
        # the box deltas of every positive decode back to the lesion's box
        assert torch.allclose(decode(targets.deltas[positive], anchors[positive]), boxes.expand(int(positive.sum()), 4),
                              atol=1e-4)


def test_rendered_head_samples_split_lesion_poles_into_ignore_boxes(ct_data: Callable[[str], Path]) -> None:
    volume, _ = read_ct_volume(ct_data("head_ge_patient"))
    spec = TARGETS["head"]
    rng = np.random.default_rng(5)
    samples = [render_sample("head", volume, spec.input_spec, rng, 2) for _ in range(12)]
    boxes = torch.cat([s.boxes for s in samples])
    ignore = torch.cat([s.ignore for s in samples])
    assert len(boxes) > 0
    assert ((boxes[:, 2:] - boxes[:, :2]).max(dim=1).values >= MIN_BOX_PX).all()
    assert ((ignore[:, 2:] - ignore[:, :2]).max(dim=1).values < MIN_BOX_PX).all()
    for s in samples:
        assert s.image.shape == (spec.input_spec.channels, 256, 256)
        assert len(s.labels) == len(s.boxes)
