"""Who may associate: the calling-AE allow-list (AE title, optionally source host) and our called AE title."""

from __future__ import annotations

from dataclasses import dataclass

from node.config import DicomConfig

# A-ASSOCIATE-RJ source 0x01 (service user) reasons, PS3.8 9.3.4.
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07


@dataclass(frozen=True)
class Rejection:
    reason: str
    diagnostic: int


class AccessPolicy:
    """Decides, from the A-ASSOCIATE-RQ alone, whether to accept a peer."""

    def __init__(self, config: DicomConfig) -> None:
        self.ae_title = config.ae_title
        self.accept_any = config.accept_any
        self.allowed = [(peer.ae_title, peer.host) for peer in config.allowed]

    def check(self, calling_ae: str, called_ae: str, host: str) -> Rejection | None:
        """None to accept; otherwise why not, and the A-ASSOCIATE-RJ diagnostic to send."""
        if called_ae.strip() != self.ae_title:
            return Rejection(f"called AE title {called_ae.strip()!r} is not ours ({self.ae_title!r})",
                             CALLED_AE_NOT_RECOGNISED)
        if self.accept_any:
            return None
        calling = calling_ae.strip()
        titles = [ae for ae, _ in self.allowed]
        if calling not in titles:
            return Rejection(f"calling AE {calling!r} is not on the allow-list", CALLING_AE_NOT_RECOGNISED)
        if not any(ae == calling and (allowed_host is None or allowed_host == host) for ae, allowed_host in self.allowed):
            return Rejection(f"calling AE {calling!r} is not allowed from host {host}", CALLING_AE_NOT_RECOGNISED)
        return None
