"""A short soak (bench/soak.py): split roles on a PostgreSQL of its own, kill -9s, a PostgreSQL restart, the PACS
down; nothing lost, nothing delivered twice, and the files the node wrote are not world-readable."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, require, require_ct, require_tool


@pytest.mark.integration
@pytest.mark.slow
def test_a_short_soak_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    for tool in ("storescu", "Orthanc"):
        require_tool(tool)
    require("PostgreSQL server binaries (/usr/lib/postgresql/*/bin)", any(Path("/usr/lib/postgresql").glob("*/bin/initdb")))
    source = require_ct("head_ge_patient")
    work = tmp_path / "soak"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "--source", str(source),
                             "--studies", "3", "--clients", "2", "--kills", "4", "--kill-gap-s", "2", "6",
                             "--pacs-down-s", "8", "--send-gap-s", "1", "5", "--deadline-s", "900", "--work", str(work)],
                            capture_output=True, text=True, timeout=1200)
    line = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert re.fullmatch(r"studies=3 runs_done=\d+ lost=0 duplicated_deliveries=0 kills=4 notified=3 notify_lost=0 notify_duplicates=0", line), \
        f"{line}\n{result.stderr[-4000:]}"
    assert int(line.split("runs_done=")[1].split()[0]) >= 3
    assert result.returncode == 0, result.stderr[-4000:]
    written = [p for p in (work / "data").rglob("*") if p.is_file() or p.is_dir()]
    assert any(p.suffix == ".dcm" or p.name.endswith(".dcm") for p in written if p.is_file())
    loose = [f"{p}: {stat.filemode(p.stat().st_mode)}" for p in written if p.stat().st_mode & stat.S_IRWXO]
    assert not loose, "world-accessible files or folders:\n" + "\n".join(loose[:10])
