"""Reading a YAML file with every failure as one line naming the file (and the line, for syntax errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: Path) -> Any:
    """The file's data; ``ValueError`` "PATH: cannot read (...)" or "PATH: not valid YAML (line N: ...)"."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        first = str(getattr(exc, "problem", None) or exc).splitlines()[0] or type(exc).__name__
        raise ValueError(f"{path}: not valid YAML ({where}{first})") from exc
