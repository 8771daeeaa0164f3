"""Migrations: shipped inside the package, run one process at a time, SQLite file private (SQLite and PostgreSQL)."""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

from sqlalchemy import text

from node.db.engine import make_engine
from node.db.migrate import MIGRATIONS_DIR, is_current
from tests.support import REPO


def packaged_files() -> list[Path]:
    """The files of the ``node`` package a wheel carries: its modules and the package data pyproject names."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = []
    for path in sorted((REPO / "node").rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(REPO)
        packages = [".".join(relative.parts[:n]) for n in range(1, len(relative.parts))]
        in_package = (path.parent / "__init__.py").exists()
        patterns = [(package, pattern) for package in packages for pattern in data.get(package, [])]
        if (in_package and path.suffix == ".py") or any(
                fnmatch.fnmatch(str(relative.relative_to(Path(*package.split(".")))), pattern)
                for package, pattern in patterns):
            files.append(relative)
    return files


def test_the_installed_package_carries_its_migrations_and_can_migrate(tmp_path: Path) -> None:
    shipped = packaged_files()
    versions = sorted((MIGRATIONS_DIR / "versions").glob("*.py"))
    assert MIGRATIONS_DIR.is_relative_to(REPO / "node") and versions
    for needed in [MIGRATIONS_DIR / "env.py", MIGRATIONS_DIR / "script.py.mako", *versions]:
        assert needed.relative_to(REPO) in shipped, f"{needed} would be left out of a wheel"
    site = tmp_path / "site"
    for relative in shipped:  # the package as a non-editable install lays it out, without the repository
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / relative, site / relative)
    database = tmp_path / "installed.sqlite"
    result = subprocess.run(
        [sys.executable, "-c", f"from node.db.migrate import upgrade; upgrade('sqlite:///{database}')"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    engine = make_engine(f"sqlite:///{database}")
    try:
        assert is_current(engine)
    finally:
        engine.dispose()


def test_processes_migrating_at_once_take_turns_and_the_sqlite_file_is_private(db_url: str, tmp_path: Path) -> None:
    script = f"from node.db.migrate import upgrade; upgrade({db_url!r})"
    processes = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], "\n".join(outputs)
    engine = make_engine(db_url)
    try:
        assert is_current(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    finally:
        engine.dispose()
    if db_url.startswith("sqlite"):
        database = Path(db_url.removeprefix("sqlite:///"))
        assert stat.S_IMODE(database.stat().st_mode) == 0o600
