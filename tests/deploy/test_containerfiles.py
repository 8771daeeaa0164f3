"""deploy/Containerfile.*: lint clean (hadolint), multi-stage, the CI install steps, non-root, the shipped models
in the build context, and a HEALTHCHECK whose script answers from a real node's /healthz."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.deploy_support import DEPLOY, deploy_tool
from tests.support import REPO, NodeProcess, free_port

CONTAINERFILES = ["Containerfile.cpu", "Containerfile.cuda"]
HEALTHCHECK = DEPLOY / "container" / "healthcheck.py"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending += " " + line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        keyword, _, rest = pending.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_hadolint_finds_nothing(name: str) -> None:
    done = subprocess.run([deploy_tool("hadolint"), str(DEPLOY / name)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_reports_a_bad_containerfile(tmp_path: Path) -> None:
    """The lint can fail: a root image that installs with apt without cleaning up is reported."""
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y g++\nCMD ctnode serve\n")
    done = subprocess.run([deploy_tool("hadolint"), str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "DL3008" in done.stdout


@pytest.mark.parametrize("name", CONTAINERFILES)
def test_build_stage_runs_the_ci_install_and_the_runtime_stage_runs_as_a_user(name: str) -> None:
    steps = instructions(DEPLOY / name)
    stages = [i for i, (keyword, _) in enumerate(steps) if keyword == "FROM"]
    assert len(stages) == 2, "a build stage and a runtime stage"
    build, runtime = steps[stages[0]:stages[1]], steps[stages[1]:]
    assert any(k == "RUN" and "make install VENV=/opt/ctnode/venv" in a for k, a in build), "not the Makefile's install"
    assert ("COPY", ". .") in build, "the build stage installs from the source tree (.dockerignore trims it)"
    assert any(k == "COPY" and a.startswith("--from=build /opt/ctnode /opt/ctnode") for k, a in runtime)
    assert not any(k == "RUN" and ("g++" in a or "make install" in a) for k, a in runtime), "compiler in the runtime"
    [user] = [a for k, a in runtime if k == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    [healthcheck] = [a for k, a in runtime if k == "HEALTHCHECK"]
    assert "/opt/ctnode/healthcheck.py" in healthcheck
    assert any(k == "COPY" and a.startswith("deploy/container/healthcheck.py /opt/ctnode/healthcheck.py")
               for k, a in runtime)
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    [entrypoint] = [a for k, a in runtime if k == "ENTRYPOINT"]
    assert entrypoint.endswith('"/opt/ctnode/venv/bin/ctnode"]')


def test_the_build_context_keeps_the_shipped_models_and_drops_local_builds() -> None:
    """.dockerignore must not drop a file the image needs (the models, the migrations), and must drop the
    host's virtual environment and compiled extension (the image compiles its own)."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(relative: str) -> bool:
        """Docker's rule: a pattern matches from the context's root; ``**/`` matches at any depth."""
        parts = relative.split("/")
        for pattern in patterns:
            if pattern.startswith("**/"):
                if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                    return True
            elif fnmatch.fnmatch(relative, pattern) or relative.startswith(pattern.rstrip("/") + "/"):
                return True
        return False

    models = sorted((REPO / "detector" / "registry" / "models").glob("*"))
    assert any(m.suffix == ".pt" for m in models) and any(m.suffix == ".json" for m in models)
    migrations = [p for p in REPO.glob("**/migrations/versions/*.py") if ".venv" not in p.parts]
    assert migrations, "no Alembic migrations found"
    needed = [REPO / name for name in ("pyproject.toml", "setup.py", "Makefile", "README.md", "csrc/ctnode.cpp",
                                       "node/cli/main.py", "detector/ops/__init__.py", "deploy/container/ctnode.yaml",
                                       "deploy/container/healthcheck.py")]
    for path in [*models, *migrations, *needed]:
        assert not ignored(str(path.relative_to(REPO))), f"{path} would be left out of the image"
    for local in (".venv/bin/python", "detector/ops/_C.cpython-311-x86_64-linux-gnu.so", "var/ctnode/x", ".git/HEAD",
                  "tests/support.py", "node/__pycache__/x.pyc"):
        assert ignored(local), f"{local} would be copied into the build context"


def test_healthcheck_script_answers_from_a_running_node(tmp_path: Path) -> None:
    """The image's HEALTHCHECK command exits 0 against a live node's /healthz and 1 once it is gone."""
    metrics = free_port()
    node = NodeProcess(tmp_path / "node", f"sqlite:///{tmp_path / 'ctnode.sqlite'}", roles=("delivery",),
                       sections={"metrics": {"host": "127.0.0.1", "port": metrics}}).start()
    env = {"CTNODE_METRICS__PORT": str(metrics), "PATH": "/usr/bin:/bin"}
    try:
        for _ in range(300):  # the endpoint comes up after the database migration
            check = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, timeout=30,
                                   check=False)
            if check.returncode == 0:
                break
            assert node.process is not None and node.process.poll() is None, node.log()[-2000:]
            time.sleep(0.2)
        assert check.returncode == 0, check.stderr
    finally:
        assert node.stop() == 0
    gone = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, timeout=30, check=False)
    assert gone.returncode == 1
