"""Which storage SOP classes and transfer syntaxes the node accepts."""

from __future__ import annotations

import copy
from typing import Any

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.ae import ApplicationEntity
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

# Encoded bytes are stored as received, never transcoded; the detector decodes these itself.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)


def add_scp_contexts(ae: ApplicationEntity) -> None:
    """Support Verification and every storage SOP class in every accepted transfer syntax."""
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))


class SharedUIDContexts(list[PresentationContext]):
    """A server's supported contexts whose per-association deep copy shares the (immutable) UIDs.

    pynetdicom deep-copies the acceptor's contexts for every association; a deep copy rebuilds every UID
    through pydicom's regex validation, 171 SOP classes x 12 transfer syntaxes: about 9 ms of CPU, under
    the GIL, per association. This copy gives each association its own contexts and transfer syntax
    lists (what negotiation changes) around the same UID objects.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for context in self:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies
