"""detector.train: ignore boxes (lesion poles, crop-cut lesions), their anchor targets, calibration, a smoke run."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.io import read_ct_volume
from detector.models import DetectorConfig, RetinaNet, assign, decode
from detector.models.loss import BACKGROUND, IGNORE
from detector.train.__main__ import Outcome, _operating_threshold
from detector.train.loop import TrainSettings, _flip, train
from detector.train.matching import training_targets
from detector.train.samples import MIN_BOX_PX, Sample, crop, render_sample
from detector.train.targets import TARGETS

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
    flipped = next(f for f in (_flip(sample, np.random.default_rng(k)) for k in range(20))
                   if not torch.equal(f.image, sample.image))
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


def test_the_operating_threshold_leaves_the_target_false_positive_rate() -> None:
    outcome = Outcome(lesion_scores=[0.9, 0.2], lesion_sizes=[4.0, 12.0],
                      false_scores=[[0.8, 0.3]] + [[0.1 * (k % 5)] for k in range(19)])
    threshold = _operating_threshold(outcome)
    assert outcome.fp_per_slice(threshold) <= 0.1
    assert threshold <= 0.8 - 1e-5 or outcome.fp_per_slice(threshold) == 0
    assert outcome.sensitivity(threshold)[1] == 2
    assert outcome.sensitivity(0.5, (2.0, 5.0)) == (1.0, 1)
    (s_low, s_high), (f_low, f_high) = outcome.bootstrap(threshold, rounds=50)
    assert 0.0 <= s_low <= s_high <= 1.0 and 0.0 <= f_low <= f_high


def test_a_few_training_iterations_run_and_leave_the_network_in_eval_mode() -> None:
    torch.manual_seed(0)
    pool = [_sample([[20.5, 20.5, 30.5, 28.5]], ignore=[[50.0, 8.0, 51.0, 9.0]]) for _ in range(3)]
    pool.append(_sample([]))
    model = RetinaNet(DetectorConfig(in_channels=2, num_classes=1, **SMALL))
    log = train(model, pool, TrainSettings(iterations=3, budget_s=60.0, batch=2, crop_px=32, report_every=0))
    assert len(log.cls) == 3 and all(math.isfinite(v) for v in log.cls + log.box)
    assert not model.training


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
