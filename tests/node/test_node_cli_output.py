"""A command's standard output is its output alone: logs go to stderr, at WARNING unless asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CTNODE = Path(sys.executable).parent / "ctnode"


def ctnode(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CTNODE_")}
    return subprocess.run([str(CTNODE), *args], capture_output=True, text=True, env={**clean, **env}, timeout=300,
                          check=False)


def _levels(stderr: str) -> set[str]:
    return {json.loads(line)["level"] for line in stderr.splitlines() if line.startswith("{")}


def test_commands_print_their_output_alone_and_log_warnings_only_unless_asked(tmp_path: Path) -> None:
    init = ctnode("init", str(tmp_path / "node"))  # migrates a fresh database: Alembic narrates each step at INFO
    assert init.returncode == 0, init.stderr
    assert init.stdout.splitlines()[0].startswith("wrote ") and _levels(init.stderr) <= {"warning", "error"}
    config = str(tmp_path / "node" / "ctnode.yaml")

    listed = ctnode("runs", "list", "--json", "-c", config)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []  # nothing before the JSON, nothing after it
    assert "info" not in _levels(listed.stderr) and '"info"' not in listed.stderr

    verbose = ctnode("-v", "runs", "list", "--json", "-c", config)  # asked for: the configured level (INFO)
    assert verbose.returncode == 0 and json.loads(verbose.stdout) == []
    assert "info" in _levels(verbose.stderr)

    by_env = ctnode("runs", "list", "--json", "-c", config, CTNODE_LOGGING__LEVEL="DEBUG")  # set for this run
    assert by_env.returncode == 0 and json.loads(by_env.stdout) == []
    assert "debug" in _levels(by_env.stderr) or "info" in _levels(by_env.stderr)
