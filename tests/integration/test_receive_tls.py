"""DICOM over TLS (PS3.15): the node serves TLS when configured, and with a CA it demands a client certificate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import require_tool

pytestmark = pytest.mark.integration


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


def _echo(port: int, *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("echoscu"), *tls, "-aec", "CTNODE", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def test_tls_listener_and_client_certificates(make_node, tmp_path: Path):
    server_key, server_cert = _self_signed(tmp_path, "ctnode")
    client_key, client_cert = _self_signed(tmp_path, "pacs")
    node = make_node(tls={"enabled": True, "cert_file": str(server_cert), "key_file": str(server_key),
                          "ca_file": str(client_cert)})
    assert _echo(node.port).returncode != 0  # plain TCP is refused by a TLS listener
    assert _echo(node.port, "+tla", "-ic").returncode != 0  # no client certificate while a CA is configured
    trusted = _echo(node.port, "+tls", str(client_key), str(client_cert), "+cf", str(server_cert))
    assert trusted.returncode == 0, trusted.stderr
