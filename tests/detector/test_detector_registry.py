"""Model cards: JSON round trip, precise validation errors, and sha256 refusal of mismatched weights."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from detector.findings import Code
from detector.infer.models import shipped_cards
from detector.preprocess import HUWindow, InputSpec
from detector.registry import (
    EvaluationFigure,
    ModelCard,
    ModelCardError,
    ModelClass,
    WeightsMismatchError,
    card_to_dict,
    load_card,
    load_state_dict,
    save_card,
    sha256_file,
)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "head.pt"
    torch.save({"conv.weight": torch.arange(6.0).reshape(2, 3), "conv.bias": torch.zeros(2)}, path)
    return path


@pytest.fixture
def card(weights: Path) -> ModelCard:
    return ModelCard(
        name="ctnode-head-hyperdense",
        version="0.1.0",
        weights_file=weights.name,
        weights_sha256=sha256_file(weights),
        body_part="HEAD",
        classes=(
            ModelClass(
                label="hyperdense",
                finding_type=Code("RID50167", "RADLEX", "Hemorrhage"),
                finding_site=Code("12738006", "SCT", "Brain"),
            ),
            ModelClass(label="calcification", finding_type=Code("RID5196", "RADLEX", "Calcification")),
        ),
        input_spec=InputSpec(
            pixel_spacing_mm=0.7, windows=(HUWindow(40, 80), HUWindow(600, 2800)), context_slices=2, slice_step_mm=2.5
        ),
        operating_threshold=0.42,
        evaluation=(
            EvaluationFigure("CPM", 0.81, "head test split v1", (0.75, 0.86)),
            EvaluationFigure("sensitivity@1FP", 0.9, "head test split v1"),
        ),
    )


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_a_figure_not_held_out_says_so_in_fields_of_its_own(card: ModelCard, tmp_path: Path) -> None:
    """The dataset stays the dataset's name (a re-evaluation replaces the figures of that name); held_out and the
    overlap with training are fields of the card."""
    seen = EvaluationFigure("CPM", 0.7, "head set", held_out=False, training_overlap="2 of 2 studies it saw")
    path = tmp_path / "card.json"
    save_card(replace(card, evaluation=(*card.evaluation, seen)), path)
    written = json.loads(path.read_text())["evaluation"]
    assert written[-1] == {"metric": "CPM", "value": 0.7, "dataset": "head set", "ci95": None, "held_out": False,
                           "training_overlap": "2 of 2 studies it saw"}
    assert "held_out" not in written[0]
    assert load_card(path).evaluation[-1] == seen


def test_card_round_trips_through_json(card: ModelCard, tmp_path: Path) -> None:
    path = tmp_path / "head.json"
    save_card(card, path)
    loaded = load_card(path)
    assert loaded == card
    assert json.loads(path.read_text())["classes"][1]["finding_site"] is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("anatomy", ["lungs", "intracranial", "body", "none"])
def test_the_anatomy_round_trips_and_defaults_to_none(card: ModelCard, tmp_path: Path, anatomy: str) -> None:
    path = tmp_path / "card.json"
    save_card(replace(card, anatomy=anatomy), path)
    assert json.loads(path.read_text())["anatomy"] == anatomy
    assert load_card(path).anatomy == anatomy
    data = card_to_dict(card)
    del data["anatomy"]
    assert load_card(_write(path, data)).anatomy == "none"


def test_the_context_round_trips_and_defaults_to_none(card: ModelCard, tmp_path: Path) -> None:
    assert card.context == ()
    assert "context" not in card_to_dict(card)
    path = tmp_path / "card.json"
    save_card(replace(card, context=("age", "referral")), path)
    assert load_card(path).context == ("age", "referral")


def test_no_shipped_card_names_context() -> None:
    cards = shipped_cards()
    assert cards
    assert all(load_card(path).context == () for path in cards.values())


def test_matching_weights_load(card: ModelCard, weights: Path) -> None:
    state = load_state_dict(card, weights.parent)
    assert torch.equal(state["conv.weight"], torch.arange(6.0).reshape(2, 3))


def test_tampered_weights_are_refused(card: ModelCard, weights: Path) -> None:
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsMismatchError, match=rf"have sha256 [0-9a-f]{{64}}, the card requires {card.weights_sha256}; refusing"):
        load_state_dict(card, weights.parent)


def test_missing_weights_are_refused(card: ModelCard, tmp_path: Path) -> None:
    with pytest.raises(WeightsMismatchError, match=r"weights file .*other\.pt not found"):
        load_state_dict(replace(card, weights_file="other.pt"), tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(operating_threshold="high"), r"card\.json: operating_threshold: expected int or float, got \"high\""),
        (lambda d: d.update(operating_threshold=1.5), r"operating_threshold must be in \(0, 1\), got 1\.5"),
        (lambda d: d.update(thresold=0.5), r"card\.json: top level: unknown field\(s\) \['thresold'\]"),
        (lambda d: d.pop("classes"), r"card\.json: top level: missing or null field\(s\) \['classes'\]"),
        (lambda d: d.update(classes=[]), r"at least one class"),
        (lambda d: d["classes"][0]["finding_type"].pop("scheme"), r"card\.json: classes\[0\]\.finding_type: missing or null field\(s\) \['scheme'\]"),
        (lambda d: d["weights"].update(sha256="abc"), r"weights_sha256 must be 64 lowercase hex digits, got 'abc'"),
        (lambda d: d["weights"].update(file="../x.pt"), r"weights_file '\.\./x\.pt' must be a bare file name"),
        (lambda d: d["input"]["windows"][1].update(width=0), r"card\.json: input\.windows\[1\]: window width must be > 0 HU, got 0"),
        (lambda d: d["input"].update(context_slices=1.5), r"card\.json: input\.context_slices: expected int, got 1\.5"),
        (lambda d: d["evaluation"][0].update(ci95=[0.1]), r"card\.json: evaluation\[0\]\.ci95: expected \[low, high\], got \[0\.1\]"),
        (lambda d: d.update(schema_version=2), r"card\.json: schema_version: 2 is not supported, expected 1"),
        (lambda d: d.update(anatomy="liver"), r"anatomy must be one of body, lungs, intracranial, none, got 'liver'"),
        (lambda d: d.update(anatomy=1), r"card\.json: anatomy: expected str, got 1"),
        (lambda d: d.update(context=["age", "weight"]), r"context must name distinct items of age, sex, referral, "
                                                        r"got \['age', 'weight'\]"),
        (lambda d: d.update(context=["sex", "sex"]), r"context must name distinct items"),
        (lambda d: d.update(context=[1]), r"card\.json: context\[0\]: expected str, got 1"),
        (lambda d: d["evaluation"][0].update(held_out="no"), r"evaluation\[0\]\.held_out: expected true or false"),
        (lambda d: d["evaluation"][0].update(held_out=False), r"evaluation\[0\]: .* not held out says why"),
        (lambda d: d["evaluation"][0].update(training_overlap="x"), r"evaluation\[0\]: .* and only such a figure"),
    ],
)
def test_invalid_cards_raise_precise_errors(card: ModelCard, tmp_path: Path, edit: Any, message: str) -> None:
    data = card_to_dict(card)
    edit(data)
    with pytest.raises(ModelCardError, match=message):
        load_card(_write(tmp_path / "card.json", data))


def test_card_that_is_not_json_names_the_position(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text('{"name": "x",\n  oops}')
    with pytest.raises(ModelCardError, match=r"not valid JSON \(line 2, column 3"):
        load_card(path)
