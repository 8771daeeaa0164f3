"""Configuration: YAML, CTNODE_SECTION__KEY environment variables, CLI overrides, validation, the example file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from node.config import AllowedPeer, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "ctnode.example.yaml"


def test_precedence_cli_over_environment_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"dicom": {"port": 4000, "ae_title": "FILEAE", "max_associations": 3},
                                      "storage": {"data_dir": str(tmp_path)}}))
    monkeypatch.setenv("CTNODE_DICOM__AE_TITLE", "ENVAE")
    monkeypatch.setenv("CTNODE_DICOM__PORT", "4100")
    monkeypatch.setenv("CTNODE_DICOM__ALLOWED", '[{"ae_title": "PACS", "host": "10.1.2.3"}]')
    settings = load_settings(config, {"dicom": {"port": 4200}})
    assert settings.dicom.port == 4200  # CLI
    assert settings.dicom.ae_title == "ENVAE"  # environment
    assert settings.dicom.max_associations == 3  # file
    assert settings.dicom.allowed == [AllowedPeer(ae_title="PACS", host="10.1.2.3")]
    assert settings.database_url == f"sqlite:///{tmp_path / 'ctnode.sqlite'}"


@pytest.mark.parametrize(("section", "values", "needle"), [
    ("dicom", {"ae_title": "A" * 17}, "ae_title"),
    ("dicom", {"port": 70000}, "port"),
    ("dicom", {"tls": {"enabled": True}}, "cert_file"),
    ("dicom", {"unknown_key": 1}, "unknown_key"),
    ("logging", {"format": "xml"}, "format"),
])
def test_invalid_values_name_the_key(tmp_path: Path, section: str, values: dict, needle: str):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({section: values}))
    with pytest.raises(ValidationError, match=needle):
        load_settings(config)


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="ctnode init"):
        load_settings(tmp_path / "absent.yaml")


def test_allow_spec_parsing():
    assert AllowedPeer.parse("PACS@10.0.0.5") == AllowedPeer(ae_title="PACS", host="10.0.0.5")
    assert AllowedPeer.parse("PACS") == AllowedPeer(ae_title="PACS", host=None)
    with pytest.raises(ValidationError):
        AllowedPeer.parse("BAD\\AE")


def _leaf_keys(model: type, prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            keys |= _leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_example_config_documents_every_key_and_loads():
    lines = EXAMPLE.read_text().splitlines()
    for key in _leaf_keys(Settings):
        leaf = key.rsplit(".", 1)[-1]
        index = next((i for i, line in enumerate(lines) if line.strip().lstrip("- ").startswith(f"{leaf}:")), None)
        assert index is not None, f"{key} missing from the example config"
        # a comment stands above the key or above the block of keys it belongs to (no blank line between)
        probe = index - 1
        while probe >= 0 and lines[probe].strip() and not lines[probe].strip().startswith("#"):
            probe -= 1
        assert probe >= 0 and lines[probe].strip().startswith("#"), f"{key} is not documented"
    settings = load_settings(EXAMPLE)
    assert settings.dicom.ae_title == "CTNODE" and settings.dicom.allowed[0].ae_title == "STORESCU"
