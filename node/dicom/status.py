"""The C-STORE statuses the node answers, and what each means."""

from __future__ import annotations

from enum import IntEnum


class StoreStatus(IntEnum):
    """Storage Service Class statuses (PS3.4 B.2.3); the 0xC0xx codes are ours within "Cannot understand"."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # disk below the free-space watermark, database unreachable, write failed (ENOSPC, EIO)
    SOP_CLASS_MISMATCH = 0xA900  # data set SOP Class UID differs from the C-STORE command's
    CANNOT_PARSE = 0xC000  # the data set could not be decoded
    MISSING_UID = 0xC001  # SOP Instance, Study or Series Instance UID absent or empty
    INVALID_UID = 0xC002  # a UID that is not a valid DICOM UID
    SOP_INSTANCE_MISMATCH = 0xC003  # data set SOP Instance UID differs from the C-STORE command's
    SERIES_IN_OTHER_STUDY = 0xC004  # the Series Instance UID was first received in another study

    @property
    def is_success(self) -> bool:
        return self is StoreStatus.SUCCESS
