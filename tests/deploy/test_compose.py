"""deploy/compose.yaml: a valid Compose file (the Compose reference implementation's own parser), whose
receiver, worker, delivery, PostgreSQL and Orthanc are wired to each other and whose ctnode settings load."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from node.config import load_settings
from tests.deploy.deploy_support import DEPLOY, compose_tool

ROLES = ("receiver", "worker", "delivery")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file as Compose resolves it (anchors, merges, defaults), validated by `docker compose config`."""
    done = subprocess.run([compose_tool(), "-f", str(DEPLOY / "compose.yaml"), "config",
                           "--format", "json"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validation can fail: a service depending on a service that does not exist is refused."""
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  a:\n    image: x\n    depends_on: [nowhere]\n")
    done = subprocess.run([compose_tool(), "-f", str(broken), "config"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "nowhere" in done.stderr


def seconds(duration: str) -> float:
    """A Compose duration (``1m30s``, ``90s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)([hms])", duration))


def ip(service: dict[str, Any]) -> str:
    [network] = service["networks"].values()
    return str(network["ipv4_address"])


def test_every_role_runs_the_image_with_its_role(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for role in ROLES:
        assert services[role]["command"] == ["serve", "--config", "/etc/ctnode/ctnode.yaml", "--role", role]
        assert services[role]["build"]["dockerfile"] == "deploy/Containerfile.cpu"
        assert services[role]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert seconds(services[role]["stop_grace_period"]) >= 60, "serve needs up to a minute to stop cleanly"
    assert services["migrate"]["command"] == ["db", "upgrade", "--config", "/etc/ctnode/ctnode.yaml"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert len({services[s]["image"] for s in (*ROLES, "migrate")}) == 1


def test_roles_share_one_volume_at_the_data_dir_and_one_database(compose: dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    postgres = services["postgres"]["environment"]
    for role in (*ROLES, "migrate"):
        env = services[role]["environment"]
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings(DEPLOY / "container" / "ctnode.yaml")  # what the container reads
        [mount] = services[role]["volumes"]
        assert (mount["type"], mount["source"]) == ("volume", "ctnode-data")
        assert Path(mount["target"]) == settings.storage.data_dir
        url = urlsplit(settings.database_url)
        assert (url.hostname, url.port, url.username, url.password, url.path.lstrip("/")) == \
            ("postgres", 5432, postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"])


def test_orthanc_and_ctnode_know_each_other(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose["services"]
    orthanc_config = json.loads((DEPLOY / "compose" / "orthanc.json").read_text())
    [mount] = [v for v in services["orthanc"]["volumes"] if v["target"] == "/etc/orthanc/orthanc.json"]
    assert Path(mount["source"]) == (DEPLOY / "compose" / "orthanc.json").resolve()
    for key, value in services["receiver"]["environment"].items():
        monkeypatch.setenv(key, value)
    settings = load_settings(DEPLOY / "container" / "ctnode.yaml")
    # Orthanc sends to the receiver: its modality "ctnode" is the receiver's AE, address and port.
    ae, host, port = orthanc_config["DicomModalities"]["ctnode"]
    assert (ae, host, port) == (settings.dicom.ae_title, ip(services["receiver"]), settings.dicom.port)
    assert any(p["target"] == settings.dicom.port for p in services["receiver"]["ports"])
    # ctnode admits Orthanc only, from Orthanc's address.
    assert [(p.ae_title, p.host) for p in settings.dicom.allowed] == [(orthanc_config["DicomAet"],
                                                                       ip(services["orthanc"]))]
    # Results go back to Orthanc's DICOM port under its AE title, as a reply to the studies it sent.
    [destination] = settings.delivery.destinations
    assert (destination.host, destination.port, destination.ae_title) == \
        ("orthanc", orthanc_config["DicomPort"], orthanc_config["DicomAet"])
    assert settings.delivery.reply_to == {orthanc_config["DicomAet"]: destination.name}
    subnet = compose["networks"]["ctnode"]["ipam"]["config"][0]["subnet"]
    assert all(ip(s).startswith(subnet.rsplit(".", 1)[0] + ".") for s in services.values())


def test_the_demo_pacs_and_database_images_are_pinned(compose: dict[str, Any]) -> None:
    for name in ("postgres", "orthanc"):
        image = compose["services"][name]["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
