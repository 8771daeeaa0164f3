"""Loads the compiled extension detector.ops._C, naming the fix when it is missing."""

import importlib

try:
    importlib.import_module("detector.ops._C")
except ImportError as error:  # pragma: no cover - only without a build
    raise ImportError(
        "ctnode's compiled operators (detector.ops._C) are missing or do not load: "
        "reinstall with `pip install --no-build-isolation -e .` (or `make install`) "
        "so that setup.py compiles csrc/."
    ) from error
