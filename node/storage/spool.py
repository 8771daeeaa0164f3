"""A write-once spool file that hashes the data set while it is still arriving."""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from pathlib import Path


class SpoolError(Exception):
    """The data set could not be spooled: the disk refused a write, or it was refused before the first byte."""

    def __init__(self, reason: str, errno_: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = errno_


class SpoolFile:
    """Receives a data set in fragments; ``complete()`` closes it and returns (sha256, size).

    Durability is the store's job: it renames the file into place first and fsyncs after, so one
    journal commit covers both the new file and its name (see InstanceStore.commit_file).

    It quacks like the NamedTemporaryFile pynetdicom spools C-STORE data sets into
    (``name``, ``write``, ``file.flush``, ``close``), so it can take that file's place.

    A write that fails (ENOSPC, EIO) never raises into the network layer: the partial file is removed,
    later fragments are dropped, and ``complete()`` raises SpoolError, so the C-STORE gets a precise
    status instead of a dead association. ``refused`` spools (no room before the first byte) do the same
    without touching the disk.
    """

    def __init__(self, directory: Path, refused: str | None = None) -> None:
        self.path = directory / f"{uuid.uuid4().hex}.part"
        self.name = str(self.path)
        self._error: SpoolError | None = SpoolError(refused) if refused else None
        self._fd: int | None = None
        if refused is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self._hash = hashlib.sha256()
        self._size = 0
        self.completed = False

    @property
    def file(self) -> SpoolFile:
        return self

    def write(self, data: bytes) -> int:
        if self._error is not None:
            return len(data)  # dropped: the C-STORE will be answered with the failure
        if self._fd is None:
            raise ValueError(f"spool {self.path.name} is closed")
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self._fail(exc)
            return len(data)
        self._hash.update(data)
        self._size += len(data)
        return len(data)

    def _fail(self, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, "EIO")
        self._error = SpoolError(f"write failed: {name} ({exc.strerror})", exc.errno)
        self.close()
        self.path.unlink(missing_ok=True)  # give the space back at once; the sender still holds the data

    def flush(self) -> None:
        """Called by pynetdicom after each P-DATA fragment; writes are unbuffered, so there is nothing to do.

        Starting writeback here (sync_file_range) was measured and dropped: on a busy disk it blocks the
        receiving thread for longer than the final fdatasync it was meant to shorten.
        """

    def complete(self) -> tuple[str, int]:
        """Close the file; return its sha256 (hex) and size, or raise SpoolError if it could not be written."""
        self.completed = True
        self.close()
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest(), self._size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
