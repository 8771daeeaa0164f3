"""Typed node configuration: YAML file, then CTNODE_SECTION__KEY environment variables, then CLI overrides."""

from __future__ import annotations

import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 1-16 chars, no backslash or control chars


def check_ae_title(value: str) -> str:
    """Return ``value`` stripped if it is a valid DICOM AE title, else raise ValueError."""
    title = value.strip()
    if not title or not _AE_RE.match(title):
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return title


class _Section(BaseModel):
    """A configuration section: unknown keys are errors, not silently ignored typos."""

    model_config = ConfigDict(extra="forbid")


class AllowedPeer(_Section):
    """A calling AE allowed to associate; ``host`` (an IP address) narrows it to one source."""

    ae_title: str
    host: str | None = None

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))

    @classmethod
    def parse(cls, spec: str) -> AllowedPeer:
        """Parse ``AE`` or ``AE@HOST`` as given on the command line."""
        ae, _, host = spec.partition("@")
        return cls(ae_title=ae, host=host or None)


class TLSConfig(_Section):
    """Optional TLS on the DICOM port (DICOM Part 15 secure transport)."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None  # when set, peers must present a certificate signed by it

    @model_validator(mode="after")
    def _files_present(self) -> TLSConfig:
        if self.enabled and (self.cert_file is None or self.key_file is None):
            raise ValueError("tls.enabled needs tls.cert_file and tls.key_file")
        return self


class DicomConfig(_Section):
    """The DICOM listener."""

    ae_title: str = "CTNODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    max_pdu_bytes: int = Field(65536, ge=0)  # 0 = unlimited
    max_associations: int = Field(16, ge=1)  # per receiver process
    processes: int = Field(1, ge=1, le=64)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    network_timeout_s: float = Field(120.0, gt=0)
    accept_any: bool = False
    allowed: list[AllowedPeer] = Field(default_factory=list)
    tls: TLSConfig = Field(default_factory=TLSConfig)

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))


class StorageConfig(_Section):
    """Where instances live; the node refuses new data below ``min_free_bytes``."""

    data_dir: Path = Path("var/ctnode")
    min_free_bytes: int = Field(2 * 1024**3, ge=0)

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def incoming_dir(self) -> Path:
        return self.data_dir / "incoming"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"


class DatabaseConfig(_Section):
    """The audit database; empty ``url`` means SQLite inside the data directory."""

    url: str = ""
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"


class LoggingConfig(_Section):
    """``format: auto`` is pretty on a terminal and JSON lines otherwise."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ClientTLSConfig(_Section):
    """Optional TLS when we connect to a destination: verify its certificate, optionally present ours."""

    enabled: bool = False
    ca_file: Path | None = None  # trust anchors for the destination's certificate; None = the system's
    cert_file: Path | None = None  # our client certificate, for destinations that demand one
    key_file: Path | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> ClientTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together")
        return self


class Destination(_Section):
    """A DICOM node (usually the PACS) that receives our results by C-STORE."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = None  # our AE title towards this destination; None = dicom.ae_title
    tls: ClientTLSConfig = Field(default_factory=ClientTLSConfig)

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))
    _check_calling = field_validator("calling_ae_title")(
        classmethod(lambda cls, v: None if v is None else check_ae_title(v))
    )


class DeliveryConfig(_Section):
    """Where results go and how hard we try: destinations, routing, retry policy."""

    destinations: list[Destination] = Field(default_factory=list)
    reply_to: dict[str, str] = Field(default_factory=dict)  # calling AE of the sender -> destination name
    default_destinations: list[str] = Field(default_factory=list)  # always sent to, whoever sent the study
    max_attempts: int = Field(8, ge=1)
    backoff_initial_s: float = Field(10.0, gt=0)
    backoff_max_s: float = Field(900.0, gt=0)
    backoff_jitter: float = Field(0.2, ge=0, le=1)  # each delay is scaled by a random factor in 1 +/- jitter
    batch_size: int = Field(64, ge=1, le=1000)
    poll_interval_s: float = Field(2.0, gt=0)
    lease_s: float = Field(300.0, gt=0)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(120.0, gt=0)
    network_timeout_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _names_resolve(self) -> DeliveryConfig:
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"destination names must be unique, got {names}")
        for where, name in [*(("reply_to", n) for n in self.reply_to.values()),
                            *(("default_destinations", n) for n in self.default_destinations)]:
            if name not in names:
                raise ValueError(f"{where} names destination {name!r}, which is not in destinations {names}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        return self

    def destination(self, name: str) -> Destination:
        """The destination called ``name``; KeyError when there is none."""
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise KeyError(name)


_yaml_file: ContextVar[Path | None] = ContextVar("ctnode_yaml_file", default=None)


class Settings(BaseSettings):
    """The whole node configuration. Precedence: CLI overrides > CTNODE_* environment > YAML file > defaults."""

    model_config = SettingsConfigDict(env_prefix="CTNODE_", env_nested_delimiter="__", extra="forbid")

    dicom: DicomConfig = Field(default_factory=DicomConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{(self.storage.data_dir / 'ctnode.sqlite').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = _yaml_file.get()
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if yaml_file is not None:
            sources += (YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file),)
        return sources


def load_settings(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load ``config_file`` (YAML), apply CTNODE_SECTION__KEY environment variables, then ``overrides``.

    Raises FileNotFoundError for a missing file and pydantic's ValidationError naming the offending key.
    """
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"configuration file {config_file} does not exist (create one with `ctnode init DIR`)")
    token = _yaml_file.set(config_file)
    try:
        return Settings(**(overrides or {}))
    finally:
        _yaml_file.reset(token)
