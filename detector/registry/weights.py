"""Model weights next to their card: sha256 verified before anything is deserialised."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from detector.registry.card import ModelCard, ModelCardError

_CHUNK_BYTES = 1 << 20


class WeightsMismatchError(ModelCardError):
    """The weights file is missing or its sha256 differs from the card's; the model is refused."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checked_bytes(card: ModelCard, folder: Path) -> bytes:
    path = Path(folder) / card.weights_file
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise WeightsMismatchError(f"model {card.name} {card.version}: weights file {path} not found") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != card.weights_sha256:
        raise WeightsMismatchError(
            f"model {card.name} {card.version}: weights {card.weights_file} have sha256 {actual}, "
            f"the card requires {card.weights_sha256}; refusing to load them"
        )
    return data


def verify_weights(card: ModelCard, folder: Path) -> Path:
    """The path of the card's weights in ``folder`` once their sha256 matches; else ``WeightsMismatchError``."""
    _checked_bytes(card, folder)
    return Path(folder) / card.weights_file


def load_state_dict(card: ModelCard, folder: Path) -> dict[str, torch.Tensor]:
    """The card's state dict, deserialised (tensors only) from the very bytes whose sha256 was checked."""
    state = torch.load(io.BytesIO(_checked_bytes(card, folder)), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelCardError(f"model {card.name} {card.version}: {card.weights_file} is not a state dict of tensors")
    return state
