"""A configuration checked before the node starts: one line per problem (syntax, types, paths, files, models)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from node.config import Settings, load_settings


def problem_lines(exc: Exception, config_file: Path | None) -> list[str]:
    """Each problem a failed load found, one line each, naming the file, the key and what is wrong."""
    where = f"{config_file}: " if config_file is not None else ""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return [f"{where}YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"]
    if isinstance(exc, yaml.YAMLError):
        return [f"{where}not valid YAML: {str(exc).splitlines()[0]}"]
    if isinstance(exc, ValidationError):
        lines = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            given = error.get("input")
            shown = "" if isinstance(given, dict | list) or given is None else f" (given: {given!r})"
            lines.append(f"{where}{key}: {message}{shown}")
        return lines
    return [f"{where}{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"]


def load_checked(config_file: Path | None, overrides: dict[str, object] | None = None) -> tuple[Settings | None, list[str]]:
    """The settings and the problem lines; settings is None when the file does not load at all."""
    try:
        settings = load_settings(config_file, overrides)
    except (FileNotFoundError, ValidationError, ValueError, yaml.YAMLError, OSError) as exc:
        return None, problem_lines(exc, config_file)
    where = f"{config_file}: " if config_file is not None else ""
    return settings, [where + line for line in environment_problems(settings)]


def environment_problems(settings: Settings, models: bool = True) -> list[str]:
    """What the machine lacks for these settings: writable data folder, TLS files, and (``models``) model names."""
    problems = []
    data_dir = settings.storage.data_dir
    existing = next((p for p in (data_dir, *data_dir.resolve().parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"storage.data_dir: {data_dir} cannot be created or written (nearest existing: {existing})")
    tls = settings.dicom.tls
    files = [("dicom.tls.cert_file", tls.cert_file), ("dicom.tls.key_file", tls.key_file),
             ("dicom.tls.ca_file", tls.ca_file)] if tls.enabled else []
    for index, destination in enumerate(settings.delivery.destinations):
        files += [(f"delivery.destinations.{index}.tls.{name}", getattr(destination.tls, name))
                  for name in ("ca_file", "cert_file", "key_file")]
    problems += [f"{key}: {path} is not a readable file" for key, path in files
                 if path is not None and not (Path(path).is_file() and os.access(path, os.R_OK))]
    if models:
        problems += model_name_problems(settings)
    return problems


def model_name_problems(settings: Settings) -> list[str]:
    """Routes naming a model or shadow that is neither shipped nor a card file (the card itself is `ctnode models check`'s)."""
    from detector.infer.models import card_path

    problems = []
    for index, route in enumerate(settings.pipeline.routes):
        named = [("model", route.model), *((f"shadows.{n}", shadow) for n, shadow in enumerate(route.shadows))]
        for key, model in named:
            try:
                card_path(model)
            except LookupError as exc:
                problems.append(f"pipeline.routes.{index}.{key}: {exc}")
    return problems
