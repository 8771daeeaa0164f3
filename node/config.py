"""Typed node configuration: YAML file, then CTNODE_SECTION__KEY environment variables, then CLI overrides."""

from __future__ import annotations

import ipaddress
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from node.events import RunMode

# A UUID-derived root (2.25.<uuid as integer>) owned by ctnode; sites with their own root configure it.
DEFAULT_UID_ROOT = "2.25.275020071003996822760402709912833401401"
DEFAULT_BANNER = "AI result - not for diagnosis"
ROUTE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_CS = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 1-16 chars, no backslash or control chars


def check_ae_title(value: str) -> str:
    """Return ``value`` stripped if it is a valid DICOM AE title, else raise ValueError."""
    title = value.strip()
    if not title or not _AE_RE.match(title):
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return title


def peer_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A peer's address, an IPv4-mapped IPv6 address (::ffff:a.b.c.d, as a dual-stack socket reports it) as IPv4."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An allow-list host: an address (a one-address network) or a CIDR network, mapped IPv6 normalised to IPv4."""
    if "/" not in text:
        return ipaddress.ip_network(peer_address(text))
    network = ipaddress.ip_network(text, strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
        mapped = network.network_address.ipv4_mapped
        return ipaddress.ip_network(f"{mapped}/{max(0, network.prefixlen - 96)}", strict=False)
    return network


def check_host_name(value: str) -> str:
    """``value`` if it is an IP address or a DNS host name, else ValueError."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOST_NAME.match(value):
        raise ValueError(f"{value!r} is neither an IP address nor a host name")
    return value


def check_bind_address(value: str) -> str:
    """``value`` if it is an IP address a socket can bind to (0.0.0.0 = every interface), else ValueError."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address to listen on (e.g. 0.0.0.0 or 127.0.0.1)") from None
    return value


class _Section(BaseModel):
    """A configuration section: unknown keys are errors, not silently ignored typos."""

    model_config = ConfigDict(extra="forbid")


class AllowedPeer(_Section):
    """A calling AE allowed to associate; ``host`` (an IP address or CIDR network) narrows it to those sources,
    ``max_associations`` caps how many it may hold open at once (on the node, every receiver process)."""

    ae_title: str
    host: str | None = None
    max_associations: int | None = Field(None, ge=1)

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            host_network(value)
        except ValueError:
            raise ValueError(f"host {value!r} is not an IP address or CIDR network (e.g. 10.1.2.3 or 10.1.0.0/16)")
        return value

    def admits(self, address: str) -> bool:
        """Whether a peer at ``address`` matches this entry's host (any host when none is pinned)."""
        if self.host is None:
            return True
        try:
            return peer_address(address) in host_network(self.host)
        except ValueError:
            return False

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
    max_associations: int = Field(16, ge=1)  # open at once on the node (every receiver process)
    processes: int = Field(2, ge=1, le=64)  # receiver processes (one Python process receives on about one core)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    network_timeout_s: float = Field(120.0, gt=0)
    max_pending_connections: int = Field(32, ge=1)  # connected but not yet associated; the oldest is dropped
    pending_timeout_s: float = Field(5.0, gt=0)  # a connection must send its A-ASSOCIATE-RQ within this
    max_request_pdu_bytes: int = Field(65536, ge=1024)  # largest A-ASSOCIATE-RQ (and other non-P-DATA PDU)
    association_deadline_s: float = Field(14400.0, gt=0)  # an association is aborted after this long
    instance_deadline_s: float = Field(600.0, gt=0)  # one data set must arrive within this
    accept_any: bool = False
    allowed: list[AllowedPeer] = Field(default_factory=list)
    tls: TLSConfig = Field(default_factory=TLSConfig)

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))


class StorageConfig(_Section):
    """Where instances live; the node refuses new data below ``min_free_bytes``."""

    data_dir: Path = Path("var/ctnode")
    min_free_bytes: int = Field(2 * 1024**3, ge=0)
    quarantine_max_bytes: int = Field(10 * 1024**3, ge=0)  # refused bytes kept beyond this are not kept

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def incoming_dir(self) -> Path:
        return self.data_dir / "incoming"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def outputs_dir(self) -> Path:
        """Where the report stage writes the objects of every run."""
        return self.data_dir / "outputs"

    def attempt_outputs_dir(self, study_instance_uid: str, run_id: int, attempt: int) -> Path:
        """The folder of one attempt's objects of a run: one per attempt, so that a worker that lost its claim
        never writes into the files of the one holding it."""
        return self.outputs_dir / study_instance_uid / f"run-{run_id}" / f"attempt-{attempt}"


class DatabaseConfig(_Section):
    """The audit database; empty ``url`` means SQLite inside the data directory."""

    url: str = ""
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if url and not re.match(r"^(sqlite|postgres|postgresql)(\+\w+)?://", url):
            raise ValueError("must be empty (SQLite in the data directory), sqlite:///PATH or postgresql://...")
        return url


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
    _check_host = field_validator("host")(classmethod(lambda cls, v: check_host_name(v)))
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


class ReportOptions(_Section):
    """What a site configures about the objects sent back to its PACS (the ``reports`` section)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uid_root: str = Field(default=DEFAULT_UID_ROOT, description="root under which every emitted UID is derived")
    banner_text: str = Field(default=DEFAULT_BANNER, min_length=1, max_length=64)
    window_centre_hu: float | None = Field(default=None, description="display window centre (HU); None: the model's")
    window_width_hu: float | None = Field(default=None, gt=0, description="display window width (HU); None: the model's")
    manufacturer: str = Field(default="ctnode", min_length=1, max_length=64)
    institution_name: str | None = Field(default=None, max_length=64)
    institutional_department_name: str | None = Field(default=None, max_length=64)
    series_number_base: int = Field(
        default=9000, ge=1, le=2**31 - 10, description="SR is base+1, SC +2, GSPS +3, KOS +4"
    )
    gsps_layer_name: str = Field(default="CTNODE_AI", description="DICOM CS: upper case, digits, _ and space, max 16")
    enable_gsps: bool = False
    enable_kos: bool = False

    def display_window(self) -> tuple[float, float]:
        """(centre, width) in HU of the overlays: the configured window, else the soft-tissue window 40/400."""
        return (40.0 if self.window_centre_hu is None else self.window_centre_hu,
                400.0 if self.window_width_hu is None else self.window_width_hu)

    @field_validator("uid_root")
    @classmethod
    def _check_root(cls, root: str) -> str:
        if not _UID_ROOT.match(root):
            raise ValueError(f"UID root {root!r} must be dot-separated numbers without leading zeros, e.g. 2.25.1234")
        if len(root) > 44:
            raise ValueError(f"UID root {root!r} is {len(root)} characters; at most 44 leave room for unique suffixes")
        return root

    @field_validator("gsps_layer_name")
    @classmethod
    def _check_layer(cls, name: str) -> str:
        if not _CS.match(name):
            raise ValueError(f"GSPS layer name {name!r} must be 1-16 upper-case letters, digits, '_' or spaces")
        return name


class Route(_Section):
    """Which model reads which series. Every criterion given must hold; empty lists do not restrict.

    ``body_parts`` (Body Part Examined, any case) and ``description_patterns`` (regular expressions
    searched, ignoring case, in the series and study descriptions) are alternatives: when both are
    given, either may match. ``calling_aes`` restricts the route to studies sent by those AEs.

    ``name``: what promotion, rollback and comparisons call the route (default: derived from ``model``);
    ``ctnode models promote`` can give the route another model without a restart (see node.pipeline.assignment).
    ``mode``: ``live`` delivers to the clinical destinations; ``silent`` runs and records everything and
    delivers nothing to them. ``shadows``: candidate models (shipped names or card paths) that read the same
    series after the route's model, at lower priority, recorded but never delivered to the clinical
    destinations. ``review_destination``: the one destination that silent and shadow objects go to (e.g. a
    research PACS); it must not be one the clinical results go to.
    """

    model: str = Field(min_length=1)  # a shipped model ("head", "chest") or a model card JSON path
    # the route's stable name (promotion and rollback name it); default: the model's ("chest", a card file's stem)
    name: str | None = Field(None, pattern=ROUTE_NAME)
    body_parts: list[str] = Field(default_factory=list)
    description_patterns: list[str] = Field(default_factory=list)
    calling_aes: list[str] = Field(default_factory=list)
    mode: Literal["live", "silent"] = "live"
    shadows: list[str] = Field(default_factory=list)
    review_destination: str | None = Field(None, min_length=1)
    notify: list[str] = Field(default_factory=list)  # notification channels (notify.channels) of its live results

    @field_validator("shadows")
    @classmethod
    def _distinct_shadows(cls, shadows: list[str]) -> list[str]:
        if any(not name for name in shadows):
            raise ValueError("a shadow model name must not be empty")
        if len(set(shadows)) != len(shadows):
            raise ValueError(f"shadow models must be distinct, got {shadows}")
        return shadows

    @property
    def run_mode(self) -> RunMode:
        """The mode of the runs of the route's own model."""
        return RunMode(self.mode)

    @model_validator(mode="after")
    def _shadow_is_not_the_model(self) -> Route:
        if self.model in self.shadows:
            raise ValueError(f"model {self.model!r} cannot shadow itself")
        if self.name is None:  # a default: not among the fields set (a name given must be unique)
            self.__dict__["name"] = route_name_of(self.model)
        return self

    @property
    def key(self) -> str:
        """The route's name (always set once validated)."""
        return self.name or route_name_of(self.model)

    @field_validator("description_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"description pattern {pattern!r} is not a regular expression: {exc}") from None
        return patterns


def route_name_of(model: str) -> str:
    """A route's default name from its model: a shipped name as given ("chest"), a card path's file stem, with
    characters a name may not hold replaced by "-"."""
    stem = Path(model).stem if model.endswith(".json") else model
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", stem).lstrip("._-")[:64]
    return name or "route"


def _default_routes() -> list[Route]:
    return [
        Route(model="head", body_parts=["HEAD", "BRAIN", "SKULL"], description_patterns=[r"head|brain|skull|cran"]),
        Route(model="chest", body_parts=["CHEST", "LUNG", "THORAX"], description_patterns=[r"chest|thora|lung"]),
    ]


class PipelineConfig(_Section):
    """When a study is ready, which model reads it, and how workers claim and run the queue."""

    quiet_s: float = Field(60.0, ge=0)  # no new instance of the study for this long: ready
    fast_path: bool = True  # ready at once when every association is released and the slices are complete
    max_gap_factor: float = Field(1.5, gt=1)  # a slice gap beyond this x the median spacing is incomplete
    poll_interval_s: float = Field(1.0, gt=0)
    lease_s: float = Field(120.0, gt=0)  # a claimed run whose worker stops heartbeating is free again after this
    heartbeat_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    retry_delay_s: float = Field(30.0, ge=0)
    workers: int = Field(1, ge=0, le=64)  # worker processes `ctnode serve` starts (role all or worker)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)  # CPU threads per worker; None = one per core
    batch_slices: int = Field(8, ge=1)
    max_findings: int | None = Field(None, ge=1)  # findings reported per study; None = each model card's cap
    # model (as routes name it) -> where its findings must be centred, overriding its card's anatomy
    anatomy: dict[str, Literal["body", "lungs", "intracranial", "none"]] = Field(default_factory=dict)
    domain_gate: bool = True  # refuse (skip) series outside a model card's domain: body part, contrast, slices
    routes: list[Route] = Field(default_factory=_default_routes)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> PipelineConfig:
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s}) must be at most half of lease_s ({self.lease_s})")
        return self

    @model_validator(mode="after")
    def _route_names_unique(self) -> PipelineConfig:
        """Names given must be unique; a default name that another route has too gets the route's position
        ("chest-2"): give such routes names to keep them stable when the list changes."""
        given = [route.key for route in self.routes if "name" in route.model_fields_set]
        twice = sorted({name for name in given if given.count(name) > 1})
        if twice:
            raise ValueError(f"route names must be unique, {', '.join(map(repr, twice))} is given twice "
                             "(pipeline.routes.N.name)")
        names = [route.key for route in self.routes]
        for index, route in enumerate(self.routes):
            if "name" not in route.model_fields_set and names.count(route.key) > 1:
                route.__dict__["name"] = f"{route.key[:60]}-{index + 1}"
        names = [route.key for route in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"route names must be unique, got {names}: name the routes (pipeline.routes.N.name)")
        return self

    def route(self, name: str) -> Route:
        """The route called ``name``; KeyError when there is none."""
        for route in self.routes:
            if route.key == name:
                return route
        raise KeyError(name)


class PromotionConfig(_Section):
    """What a comparison must show before `ctnode models promote` gives a route its candidate as the live model.

    Judged on the paired figures of the newest comparison of (the route's live model, the candidate), on the
    studies both read that a reader reviewed: at least ``min_studies`` of them; non-inferior lesion-level
    sensitivity at each card's operating point (the paired 95% CI's low end of candidate - live at least
    ``-sensitivity_margin``); false positives per scan rising by at most ``max_fp_per_scan_increase`` (the CI's
    high end; None: not judged); with ``require_cpm_gain``, a CPM gain (the CI's low end above 0)."""

    min_studies: int = Field(20, ge=1)
    sensitivity_margin: float = Field(0.05, ge=0, le=1)
    max_fp_per_scan_increase: float | None = Field(0.5, ge=0)
    require_cpm_gain: bool = False


class MetricsConfig(_Section):
    """Prometheus metrics and health endpoints over HTTP; port 0 turns them off."""

    host: str = "127.0.0.1"
    port: int = Field(9110, ge=0, le=65535)

    _check_host = field_validator("host")(classmethod(lambda cls, v: check_bind_address(v)))
    request_timeout_s: float = Field(10.0, gt=0)  # a client that sends nothing for this long is dropped
    stall_s: float = Field(300.0, gt=0)  # /readyz fails when a loop (completion, worker, delivery) made no progress


class Hl7Config(_Section):
    """The HL7 v2 listener (MLLP) for ORU^R01 radiology reports from the RIS; off unless enabled."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(2575, ge=0, le=65535)  # 0: any free port (tests)
    max_message_bytes: int = Field(1024 * 1024, ge=1024)  # a larger MLLP block closes the connection
    timeout_s: float = Field(60.0, gt=0)  # a message begun must be complete within this
    idle_timeout_s: float = Field(3600.0, gt=0)  # a connection that sends nothing for this long is closed

    _check_host = field_validator("host")(classmethod(lambda cls, v: check_bind_address(v)))


_yaml_file: ContextVar[Path | None] = ContextVar("ctnode_yaml_file", default=None)


class OAuth2ClientConfig(_Section):
    """OAuth2 client credentials (RFC 6749 section 4.4): the token endpoint, our client id and secret, scopes."""

    token_url: str = Field(pattern=r"^https?://")
    client_id: str = Field(min_length=1)
    client_secret_file: Path  # a file holding the secret (not the YAML: it is readable by more people)
    scope: str | None = None


NOTIFY_DECISIONS = ("suspected_positive", "negative", "not_analysed")


class NotifyChannel(_Section):
    """One destination of triage notifications: an HL7 v2 RIS (ORU^R01 over MLLP), a FHIR R4 server, a webhook.

    ``decisions``: which study decisions it is told of (default: suspected positive and not analysed; add
    ``negative`` for a "no urgent finding" result). ``include_identifiers``: whether the payload carries patient
    identifiers (name, ID, birth date, accession); default yes for HL7 and FHIR (they file the result on the
    patient), no for webhooks (pagers and chat).
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["hl7", "fhir", "webhook"]
    decisions: list[Literal["suspected_positive", "negative", "not_analysed"]] = Field(
        default_factory=lambda: ["suspected_positive", "not_analysed"])
    include_identifiers: bool | None = None
    timeout_s: float = Field(10.0, gt=0)  # connect, send and wait for the acknowledgement
    # hl7
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tls: ClientTLSConfig = Field(default_factory=ClientTLSConfig)
    sending_application: str = "CTNODE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    # fhir and webhook
    url: str | None = Field(None, pattern=r"^https?://")
    bearer_token_file: Path | None = None  # fhir: a static bearer token
    oauth2: OAuth2ClientConfig | None = None  # fhir: client credentials instead
    secret_file: Path | None = None  # webhook: the HMAC-SHA256 key

    @property
    def identifiers(self) -> bool:
        """Whether this channel's payloads carry patient identifiers."""
        return self.kind != "webhook" if self.include_identifiers is None else self.include_identifiers

    @model_validator(mode="after")
    def _complete(self) -> NotifyChannel:
        where = f"notify channel {self.name!r} ({self.kind})"
        if self.kind == "hl7" and (self.host is None or self.port is None):
            raise ValueError(f"{where} needs host and port")
        if self.kind in ("fhir", "webhook") and self.url is None:
            raise ValueError(f"{where} needs url")
        if self.kind == "webhook" and self.secret_file is None:
            raise ValueError(f"{where} needs secret_file (every request is signed)")
        if self.bearer_token_file is not None and self.oauth2 is not None:
            raise ValueError(f"{where}: bearer_token_file and oauth2 are alternatives")
        if len(set(self.decisions)) != len(self.decisions) or not self.decisions:
            raise ValueError(f"{where}: decisions must be distinct and not empty")
        return self


class NotifyConfig(_Section):
    """Triage notifications: the channels, and how hard and how soon the senders try."""

    channels: list[NotifyChannel] = Field(default_factory=list)
    max_attempts: int = Field(20, ge=1)
    backoff_initial_s: float = Field(2.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    backoff_jitter: float = Field(0.2, ge=0, le=1)
    poll_interval_s: float = Field(0.2, gt=0)  # how soon a new notification is seen when the sender is idle
    lease_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _unique(self) -> NotifyConfig:
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError(f"notify channel names must be unique, got {names}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("notify.backoff_max_s must be at least notify.backoff_initial_s")
        return self


class Settings(BaseSettings):
    """The whole node configuration. Precedence: CLI overrides > CTNODE_* environment > YAML file > defaults."""

    model_config = SettingsConfigDict(env_prefix="CTNODE_", env_nested_delimiter="__", extra="forbid")

    dicom: DicomConfig = Field(default_factory=DicomConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    reports: ReportOptions = Field(default_factory=ReportOptions)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    hl7: Hl7Config = Field(default_factory=Hl7Config)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)

    @model_validator(mode="after")
    def _notify_channels(self) -> Settings:
        """Every channel a route names is configured."""
        names = [c.name for c in self.notify.channels]
        for index, route in enumerate(self.pipeline.routes):
            for name in route.notify:
                if name not in names:
                    raise ValueError(f"pipeline.routes.{index}.notify names channel {name!r}, which is not in "
                                     f"notify.channels {names}")
        return self

    @model_validator(mode="after")
    def _review_destinations(self) -> Settings:
        """A review destination is a configured destination that no clinical result goes to."""
        names = [d.name for d in self.delivery.destinations]
        clinical = {*self.delivery.default_destinations, *self.delivery.reply_to.values()}
        for index, route in enumerate(self.pipeline.routes):
            name = route.review_destination
            if name is None:
                continue
            where = f"pipeline.routes.{index}.review_destination"
            if name not in names:
                raise ValueError(f"{where} names destination {name!r}, which is not in delivery.destinations {names}")
            if name in clinical:
                raise ValueError(f"{where} {name!r} receives clinical results (delivery.default_destinations or "
                                 "reply_to): a review destination must be apart from them")
        return self

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
