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


def _checked_bytes(card: ModelCard, folder: Path, file: str, sha256: str) -> bytes:
    path = Path(folder) / file
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise WeightsMismatchError(f"model {card.name} {card.version}: weights file {path} not found") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise WeightsMismatchError(
            f"model {card.name} {card.version}: weights {file} have sha256 {actual}, "
            f"the card requires {sha256}; refusing to load them"
        )
    return data


def load_state_dict(card: ModelCard, folder: Path, second_stage: bool = False) -> dict[str, torch.Tensor]:
    """The card's state dict (the second stage's with ``second_stage``), deserialised (tensors only) from the very
    bytes whose sha256 was checked."""
    stage = card.second_stage
    if second_stage and stage is None:
        raise ModelCardError(f"model {card.name} {card.version} has no second stage")
    file, sha256 = (stage.weights_file, stage.weights_sha256) if second_stage and stage else (
        card.weights_file, card.weights_sha256)
    data = _checked_bytes(card, folder, file, sha256)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged archive; each means "not loadable"
        raise ModelCardError(f"model {card.name} {card.version}: weights {file} do not load "
                             f"(sha256 matches the card, the file is damaged or not a PyTorch archive): "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelCardError(f"model {card.name} {card.version}: {file} is not a state dict of tensors")
    return state
