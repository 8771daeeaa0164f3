"""detector.models: focal loss against its formula, fresh DCN equal to plain conv, anchors, config switches."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from detector.models import (
    DetectorConfig,
    RetinaNet,
    assign,
    box_iou,
    decode,
    detection_loss,
    encode,
    level_anchors,
    sigmoid_focal_loss,
)
from detector.models.backbone import Backbone, conv3x3
from detector.models.loss import BACKGROUND, IGNORE
from detector.ops import ModulatedDeformConv2dPack

SMALL = dict(stem_channels=8, stage_channels=(8, 8, 16, 16), fpn_channels=16, head_convs=1)


def _focal_by_hand(p: float, y: int, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p_t = p if y == 1 else 1 - p
    alpha_t = alpha if y == 1 else 1 - alpha
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


@pytest.mark.parametrize(
    ("p", "y"),
    [(0.9, 1), (0.1, 1), (0.5, 1), (0.9, 0), (0.1, 0), (0.01, 0)],
)
def test_focal_loss_matches_its_formula_on_single_elements(p: float, y: int) -> None:
    logit = torch.tensor([math.log(p / (1 - p))], dtype=torch.float64)
    loss = sigmoid_focal_loss(logit, torch.tensor([float(y)], dtype=torch.float64))
    assert float(loss) == pytest.approx(_focal_by_hand(p, y), rel=1e-9)


def test_focal_loss_hand_computed_values_and_sum() -> None:
    # p = 0.9 positive: 0.25 * 0.01 * -ln 0.9 = 2.634e-4; p = 0.9 negative: 0.75 * 0.81 * -ln 0.1 = 1.39883
    logits = torch.tensor([math.log(9.0), math.log(9.0)], dtype=torch.float64)
    targets = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert float(sigmoid_focal_loss(logits, targets)) == pytest.approx(0.25 * 0.01 * -math.log(0.9)
                                                                      + 0.75 * 0.81 * -math.log(0.1), rel=1e-9)
    assert 0.25 * 0.01 * -math.log(0.9) == pytest.approx(2.634e-4, rel=1e-3)


def test_focal_loss_with_gamma_zero_and_no_alpha_is_binary_cross_entropy() -> None:
    logits = torch.tensor([-2.0, 0.3, 4.0])
    targets = torch.tensor([0.0, 1.0, 1.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    assert torch.allclose(sigmoid_focal_loss(logits, targets, alpha=None, gamma=0.0), expected)


def test_focal_loss_down_weights_easy_negatives_relative_to_cross_entropy() -> None:
    easy, hard = torch.tensor([-5.0]), torch.tensor([2.0])
    zero = torch.tensor([0.0])
    ratio_easy = sigmoid_focal_loss(easy, zero) / sigmoid_focal_loss(easy, zero, alpha=None, gamma=0.0)
    ratio_hard = sigmoid_focal_loss(hard, zero) / sigmoid_focal_loss(hard, zero, alpha=None, gamma=0.0)
    assert ratio_easy < 1e-3 < ratio_hard


def test_fresh_dcn_layer_equals_the_plain_conv_it_wraps() -> None:
    torch.manual_seed(0)
    deformable = conv3x3(6, 10, stride=2, deformable=True)
    plain = conv3x3(6, 10, stride=2, deformable=False)
    assert isinstance(deformable, ModulatedDeformConv2dPack)
    plain.weight.data.copy_(deformable.weight.data)
    x = torch.randn(2, 6, 17, 19)
    assert torch.allclose(deformable(x), plain(x), atol=1e-5)


def test_fresh_dcn_backbone_equals_the_plain_backbone_with_the_same_weights() -> None:
    torch.manual_seed(1)
    dcn = Backbone(DetectorConfig(in_channels=3, num_classes=1, dcn_stages=(2, 3), **SMALL)).eval()
    plain = Backbone(DetectorConfig(in_channels=3, num_classes=1, dcn_stages=(), **SMALL)).eval()
    missing, unexpected = plain.load_state_dict(dcn.state_dict(), strict=False)
    assert not missing and all("offset_predictor" in k for k in unexpected) and unexpected
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(dcn(x), plain(x), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_head_starts_at_the_prior_probability_everywhere() -> None:
    model = RetinaNet(DetectorConfig(in_channels=3, num_classes=2, prior_probability=0.01, **SMALL)).eval()
    logits, _ = model(torch.rand(1, 3, 64, 64))
    assert torch.allclose(torch.sigmoid(logits), torch.full_like(logits, 0.01), atol=2e-3)


@pytest.mark.parametrize("fpn", [True, False])
def test_output_rows_match_the_anchors_with_and_without_fpn(fpn: bool) -> None:
    config = DetectorConfig(in_channels=3, num_classes=2, fpn=fpn, **SMALL)
    model = RetinaNet(config).eval()
    logits, deltas = model(torch.rand(2, 3, 64, 96))
    anchors = model.anchors(64, 96)
    assert logits.shape == (2, anchors.shape[0], 2) and deltas.shape == (2, anchors.shape[0], 4)
    assert config.strides == ((4, 8, 16, 32) if fpn else (32,))
    cells = sum((64 // s) * (96 // s) for s in config.strides)
    assert len(anchors) == cells * (2 if fpn else 8)


def test_anchors_are_centred_on_their_cells_with_the_configured_sides() -> None:
    anchors = level_anchors(2, 3, 8, (4.0, 6.0))
    assert anchors.shape == (12, 4)
    # first cell covers pixels 0..7, centre 3.5; second anchor of that cell has side 6
    assert anchors[0].tolist() == [1.5, 1.5, 5.5, 5.5]
    assert anchors[1].tolist() == [0.5, 0.5, 6.5, 6.5]
    assert anchors[2].tolist() == [9.5, 1.5, 13.5, 5.5]


def test_box_coding_round_trips() -> None:
    anchors = torch.tensor([[0.0, 0.0, 8.0, 8.0], [10.0, 4.0, 14.0, 20.0]])
    boxes = torch.tensor([[1.0, 2.0, 5.0, 11.0], [9.0, 3.5, 16.0, 30.0]])
    assert torch.allclose(decode(encode(boxes, anchors), anchors), boxes, atol=1e-5)


def test_assignment_gives_a_box_smaller_than_every_anchor_a_positive() -> None:
    anchors = level_anchors(8, 8, 4, (4.0, 6.0))
    tiny = torch.tensor([[9.0, 9.0, 11.0, 11.0]])
    targets = assign(anchors, tiny, torch.tensor([1]))
    assert float(box_iou(anchors, tiny).max()) < 0.5
    positives = torch.nonzero(targets.labels >= 0).squeeze(1)
    assert len(positives) >= 1 and set(targets.labels[positives].tolist()) == {1}
    assert (targets.labels == BACKGROUND).sum() > 100
    assert set(targets.labels.unique().tolist()) <= {BACKGROUND, IGNORE, 1}


def test_no_boxes_means_every_anchor_is_background() -> None:
    targets = assign(level_anchors(4, 4, 4, (4.0,)), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert (targets.labels == BACKGROUND).all()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny networks train fastest on one thread, above all on a shared CI machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("loss", ["focal", "bce"])
def test_a_few_steps_on_one_batch_reduce_the_loss(loss: str, one_thread: None) -> None:
    torch.manual_seed(0)
    config = DetectorConfig(in_channels=1, num_classes=1, loss=loss, dcn_stages=(), **SMALL)  # type: ignore[arg-type]
    model = RetinaNet(config)
    images = torch.zeros(2, 1, 64, 64)
    images[0, 0, 20:28, 30:38] = 1.0
    boxes = [torch.tensor([[29.5, 19.5, 37.5, 27.5]]), torch.zeros(0, 4)]
    anchors = model.anchors(64, 64)
    targets = [assign(anchors, b, torch.zeros(len(b), dtype=torch.long)) for b in boxes]
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        cls, box = detection_loss(config, *model(images), targets)
        optimiser.zero_grad()
        (cls + box).backward()
        optimiser.step()
        losses.append(float(cls.detach() + box.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_exported_state_rebuilds_the_same_network() -> None:
    config = DetectorConfig(in_channels=3, num_classes=2, dcn_stages=(3,), fpn=False, **SMALL)
    model = RetinaNet(config).eval()
    rebuilt = RetinaNet.from_state(model.export_state()).eval()
    assert rebuilt.config == config
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(model(x)[0], rebuilt(x)[0])


def test_config_rejects_inconsistent_parts() -> None:
    with pytest.raises(ValueError, match="dcn_stages"):
        DetectorConfig(in_channels=3, num_classes=1, dcn_stages=(4,))
    with pytest.raises(ValueError, match="loss"):
        DetectorConfig(in_channels=3, num_classes=1, loss="hinge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown"):
        DetectorConfig.from_json('{"in_channels": 3, "num_classes": 1, "depth": 50}')


def test_dcn_layer_runs_in_float32_under_autocast() -> None:
    layer = conv3x3(4, 4, stride=1, deformable=True)
    x = torch.randn(1, 4, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y, layer(x))
