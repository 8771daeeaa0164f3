"""Who may associate: the calling-AE allow-list (AE title, optionally source addresses), per-AE limits, our AE title."""

from __future__ import annotations

from dataclasses import dataclass

from node.config import DicomConfig

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 permanent / 2 transient; source 1 service user / 3 service provider
# (presentation); reasons: user 3 calling AE not recognised, 7 called AE not recognised; provider 2 local limit.
PERMANENT, TRANSIENT = 0x01, 0x02
SERVICE_USER, SERVICE_PROVIDER_PRESENTATION = 0x01, 0x03
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07
LOCAL_LIMIT_EXCEEDED = 0x02


@dataclass(frozen=True)
class Rejection:
    """Why a peer is refused, and the A-ASSOCIATE-RJ (result, source, reason) that tells it so."""

    reason: str
    result: int
    source: int
    diagnostic: int


class AccessPolicy:
    """Decides, from the A-ASSOCIATE-RQ and the associations already open, whether to accept a peer."""

    def __init__(self, config: DicomConfig) -> None:
        self.ae_title = config.ae_title
        self.accept_any = config.accept_any
        self.allowed = list(config.allowed)
        self.max_associations = config.max_associations

    def limited_aes(self) -> set[str]:
        """The calling AEs with a limit of their own."""
        return {peer.ae_title for peer in self.allowed if peer.max_associations is not None}

    def check(self, calling_ae: str, called_ae: str, host: str, open_by_calling_ae: int = 0,
              open_in_all: int = 0) -> Rejection | None:
        """None to accept; otherwise why not. ``open_by_calling_ae``: associations this AE holds open now,
        ``open_in_all``: associations open on the node now (every receiver process)."""
        if called_ae.strip() != self.ae_title:
            return Rejection(f"called AE title {called_ae.strip()!r} is not ours ({self.ae_title!r})",
                             PERMANENT, SERVICE_USER, CALLED_AE_NOT_RECOGNISED)
        calling = calling_ae.strip()
        entries = [peer for peer in self.allowed if peer.ae_title == calling]
        if not entries and not self.accept_any:
            return Rejection(f"calling AE {calling!r} is not on the allow-list",
                             PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
        admitting = [peer for peer in entries if peer.admits(host)]
        if entries and not admitting:
            return Rejection(f"calling AE {calling!r} is not allowed from host {host}",
                             PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
        if open_in_all >= self.max_associations:
            return Rejection(f"the node already holds {open_in_all} associations, its limit",
                             TRANSIENT, SERVICE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED)
        limits = [peer.max_associations for peer in admitting]
        if limits and None not in limits and open_by_calling_ae >= max(limits):  # type: ignore[type-var]
            return Rejection(f"calling AE {calling!r} already holds {open_by_calling_ae} associations, its limit",
                             TRANSIENT, SERVICE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED)
        return None
