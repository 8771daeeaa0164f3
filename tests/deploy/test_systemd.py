"""deploy/systemd: the units pass `systemd-analyze verify`, run the node's own role commands as a dedicated
user with the hardening the issue lists, and give the node more stop time than its own shutdown needs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from node.config import Settings
from tests.deploy.deploy_support import (
    INSTALLED_CONFIG,
    INSTALLED_CTNODE,
    SYSTEMD,
    ctnode_executable,
    deploy_tool,
    timeout_stop_s,
    unit_entries,
    unit_value,
)

ROLE_UNITS = {"receiver": "ctnode-receiver.service", "worker": "ctnode-worker.service",
              "delivery": "ctnode-delivery.service"}
SERVICES = ["ctnode.service", "ctnode-migrate.service", *ROLE_UNITS.values()]
UNITS = [*SERVICES, "ctnode.target"]


def verify(units: list[Path], workdir: Path) -> tuple[int, str]:
    """`systemd-analyze verify` of copies of ``units`` whose ExecStart names this machine's ctnode (verify
    checks that the program exists); returns its exit status and what it said about ctnode units."""
    workdir.mkdir(parents=True, exist_ok=True)
    ctnode = ctnode_executable()
    copies = []
    for unit in units:
        copy = workdir / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED_CTNODE, ctnode))
        copies.append(str(copy))
    done = subprocess.run([deploy_tool("systemd-analyze"), "verify", "--man=no", *copies],
                          capture_output=True, text=True, timeout=120, cwd=workdir, check=False)
    said = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if "ctnode" in line)
    return done.returncode, said


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    status, said = verify([SYSTEMD / name for name in UNITS], tmp_path)
    assert status == 0 and said == "", said


def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt value and a missing program are both reported."""
    broken = tmp_path / "src" / "ctnode-worker.service"
    broken.parent.mkdir()
    text = (SYSTEMD / "ctnode-worker.service").read_text()
    broken.write_text(text.replace("KillMode=mixed", "KillMode=mixd"))
    _, said = verify([broken], tmp_path / "a")
    assert "mixd" in said
    broken.write_text(text.replace(INSTALLED_CTNODE, "/nonexistent/ctnode"))
    status, said = verify([broken], tmp_path / "b")
    assert status != 0 and "/nonexistent/ctnode" in said


@pytest.mark.parametrize("role", sorted(ROLE_UNITS))
def test_role_units_run_the_role_and_wait_for_the_migration(role: str) -> None:
    unit = SYSTEMD / ROLE_UNITS[role]
    assert unit_value(unit, "Service", "ExecStart") == \
        f"{INSTALLED_CTNODE} serve --config {INSTALLED_CONFIG} --role {role}"
    assert unit_value(unit, "Unit", "Requires") == "ctnode-migrate.service"
    assert "ctnode-migrate.service" in unit_value(unit, "Unit", "After").split()
    assert unit_value(unit, "Unit", "PartOf") == "ctnode.target"
    assert unit_value(unit, "Install", "WantedBy") == "ctnode.target"
    assert unit_value(SYSTEMD / "ctnode-migrate.service", "Service", "ExecStart") == \
        f"{INSTALLED_CTNODE} db upgrade --config {INSTALLED_CONFIG}"
    assert unit_value(SYSTEMD / "ctnode.service", "Service", "ExecStart") == \
        f"{INSTALLED_CTNODE} serve --config {INSTALLED_CONFIG}"


@pytest.mark.parametrize("name", SERVICES)
def test_services_run_hardened_as_the_dedicated_user(name: str) -> None:
    unit = SYSTEMD / name
    service = dict(unit_entries(unit)["Service"])
    assert service["User"] == service["Group"] == "ctnode"
    sysusers = (SYSTEMD / "ctnode.sysusers").read_text().split("\n")
    assert any(line.split()[:2] == ["u", "ctnode"] for line in sysusers if line.strip() and not line.startswith("#"))
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "RestrictSUIDSGID": "yes", "ProtectKernelModules": "yes", "CapabilityBoundingSet": ""}.items():
        assert service.get(key) == value, f"{name}: {key}={service.get(key)!r}, expected {value!r}"
    assert "/var/lib/ctnode" in service["ReadWritePaths"].split()
    if name != "ctnode-migrate.service":
        assert service["Restart"] == "on-failure"
        assert service["KillSignal"] == "SIGTERM"
        assert service["KillMode"] == "mixed"


@pytest.mark.parametrize("name", [n for n in SERVICES if n != "ctnode-migrate.service"])
def test_stop_timeout_covers_the_nodes_own_shutdown(name: str) -> None:
    """`serve` on SIGTERM joins its delivery senders (acse_timeout_s + 5 s at most) and then each child
    process (30 s at most): TimeoutStopSec must leave it that long before systemd kills it."""
    defaults = Settings()
    worst_case = defaults.delivery.acse_timeout_s + 5 + 30
    assert timeout_stop_s(SYSTEMD / name) >= worst_case
