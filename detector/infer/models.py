"""Shipped models: find a card by name, verify its weights and build its network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detector.models import RetinaNet
from detector.refine import PatchNet, PatchSpec, Refiner
from detector.registry import ModelCard, ModelCardError, load_card, load_state_dict

MODELS_DIR = Path(__file__).resolve().parents[1] / "registry" / "models"


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model card and its network, weights verified against the card's sha256, in eval mode."""

    card: ModelCard
    network: RetinaNet
    refiner: Refiner | None = None
    """The second stage, when the card has one: it re-scores the first stage's candidates."""


def shipped_cards() -> dict[str, Path]:
    """Card paths of the models shipped with the package, by card file stem (e.g. "ctnode-head")."""
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.json"))}


def card_path(model: str | Path) -> Path:
    """A card file from a path, a shipped card's name ("ctnode-head") or its short form ("head")."""
    path = Path(model)
    if path.suffix == ".json" and path.is_file():
        return path
    cards = shipped_cards()
    for name in (str(model), f"ctnode-{model}"):
        if name in cards:
            return cards[name]
    raise LookupError(f"no model card {model!r}; shipped models: {', '.join(cards) or 'none'}")


def load_model(model: str | Path) -> LoadedModel:
    """Load a card (see :func:`card_path`) and its sha256-verified weights into an eval-mode network.

    Every way a card or its weights can be unusable raises ``ModelCardError`` with a sentence naming the model.
    """
    path = card_path(model)
    card = load_card(path)
    state = load_state_dict(card, path.parent)
    try:
        network = RetinaNet.from_state(state)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelCardError(f"model {card.name} {card.version}: weights {card.weights_file} do not fit the "
                             f"network: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if network.config.in_channels != card.input_spec.channels or network.config.num_classes != len(card.classes):
        raise ModelCardError(
            f"model {card.name} {card.version}: network takes {network.config.in_channels} channels and "
            f"{network.config.num_classes} classes, the card says {card.input_spec.channels} and {len(card.classes)}"
        )
    return LoadedModel(card=card, network=network.eval(), refiner=_refiner(card, path.parent))


def _refiner(card: ModelCard, folder: Path) -> Refiner | None:
    stage = card.second_stage
    if stage is None:
        return None
    state = load_state_dict(card, folder, second_stage=True)
    try:
        network = PatchNet.from_state(state)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelCardError(f"model {card.name} {card.version}: second-stage weights {stage.weights_file} do not "
                             f"fit its network: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    spec = PatchSpec(windows=card.input_spec.windows, side_mm=stage.side_mm, voxels=stage.voxels, scale=stage.scale)
    return Refiner(spec=spec, network=network.eval(), candidate_threshold=stage.candidate_threshold,
                   max_candidates=stage.max_candidates)
