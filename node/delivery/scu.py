"""The C-STORE SCU: one association per destination batch, contexts per SOP class, every response judged."""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import code_to_category

from node.config import ClientTLSConfig, DeliveryConfig, Destination
from node.delivery.claims import AttemptResult, Claimed
from node.events import AttemptOutcome

MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1..255


class AssociationFailed(Exception):
    """The destination could not be reached, refused the association, or accepted none of our contexts."""


def presentation_contexts(items: Sequence[Claimed]) -> list[PresentationContext]:
    """One context per SOP class: the objects' own transfer syntaxes, then Explicit and Implicit VR LE."""
    syntaxes: dict[str, list[str]] = {}
    for item in items:
        syntaxes.setdefault(item.sop_class_uid, []).append(item.transfer_syntax_uid)
    contexts = [build_context(sop_class, list(dict.fromkeys([*own, ExplicitVRLittleEndian, ImplicitVRLittleEndian])))
                for sop_class, own in syntaxes.items()]
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} SOP classes in one batch; one association carries at most {MAX_CONTEXTS}")
    return contexts


def client_tls_context(config: ClientTLSConfig) -> ssl.SSLContext | None:
    """The TLS client context for a destination, or None for plain TCP."""
    if not config.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.ca_file) if config.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = config.check_hostname
    if config.cert_file is not None and config.key_file is not None:
        context.load_cert_chain(str(config.cert_file), str(config.key_file))
    return context


def judge(status: int) -> AttemptResult:
    """Success and Warning are delivered (Warning is audited); anything else is a failure to retry."""
    category = code_to_category(status)
    if category == "Success":
        return AttemptResult(AttemptOutcome.SUCCESS, status)
    if category == "Warning":
        return AttemptResult(AttemptOutcome.WARNING, status, f"warning status 0x{status:04X}")
    return AttemptResult(AttemptOutcome.FAILURE, status, f"{category.lower()} status 0x{status:04X}")


class StoreSCU:
    """Sends claimed objects to one destination."""

    def __init__(self, destination: Destination, config: DeliveryConfig, calling_ae_title: str) -> None:
        self.destination = destination
        self.config = config
        self.calling_ae_title = destination.calling_ae_title or calling_ae_title

    @contextmanager
    def associate(self, items: Sequence[Claimed]) -> Iterator[Association]:
        """An association proposing the contexts ``items`` need; released (or aborted) on exit."""
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = self.config.acse_timeout_s
        ae.dimse_timeout = self.config.dimse_timeout_s
        ae.network_timeout = self.config.network_timeout_s
        ae.connection_timeout = self.config.acse_timeout_s
        tls = client_tls_context(self.destination.tls)
        target = self.destination
        try:
            assoc = ae.associate(target.host, target.port, presentation_contexts(items), ae_title=target.ae_title,
                                 tls_args=(tls, target.host) if tls is not None else None)
            if not assoc.is_established:
                why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
                raise AssociationFailed(f"association with {target.ae_title}@{target.host}:{target.port} {why}")
            if not assoc.accepted_contexts:
                assoc.abort()
                raise AssociationFailed(f"{target.ae_title} accepted none of the proposed presentation contexts")
            try:
                yield assoc
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            ae.shutdown()

    def send(self, assoc: Association, item: Claimed) -> AttemptResult:
        """C-STORE one object on ``assoc`` and judge the response."""
        try:
            dataset = pydicom.dcmread(item.path)
        except (OSError, InvalidDicomError) as exc:
            return AttemptResult(AttemptOutcome.FAILURE, None, f"cannot read {item.path}: {type(exc).__name__}")
        try:
            response = assoc.send_c_store(dataset)
        except ValueError as exc:  # no accepted context fits the SOP class / transfer syntax
            return AttemptResult(AttemptOutcome.FAILURE, None, f"not sendable on this association: {exc}")
        except RuntimeError as exc:  # the association went away under us
            return AttemptResult(AttemptOutcome.FAILURE, None, f"association lost: {exc}")
        if "Status" not in response:
            return AttemptResult(AttemptOutcome.FAILURE, None, "no C-STORE response (aborted or timed out)")
        return judge(int(response.Status))
