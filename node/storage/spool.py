"""A write-once spool file that hashes the data set while it is still arriving."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path



class SpoolFile:
    """Receives a data set in fragments; ``complete()`` closes it and returns (sha256, size).

    Durability is the store's job: it renames the file into place first and fsyncs after, so one
    journal commit covers both the new file and its name (see InstanceStore.commit_file).

    It quacks like the NamedTemporaryFile pynetdicom spools C-STORE data sets into
    (``name``, ``write``, ``file.flush``, ``close``), so it can take that file's place.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"{uuid.uuid4().hex}.part"
        self.name = str(self.path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self._hash = hashlib.sha256()
        self._size = 0

    @property
    def file(self) -> SpoolFile:
        return self

    def write(self, data: bytes) -> int:
        if self._fd is None:
            raise ValueError(f"spool {self.path.name} is closed")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._hash.update(data)
        self._size += len(data)
        return len(data)

    def flush(self) -> None:
        """Called by pynetdicom after each P-DATA fragment; writes are unbuffered, so there is nothing to do.

        Starting writeback here (sync_file_range) was measured and dropped: on a busy disk it blocks the
        receiving thread for longer than the final fdatasync it was meant to shorten.
        """

    def complete(self) -> tuple[str, int]:
        """Close the file (its pages are already on their way to disk); return its sha256 (hex) and size."""
        self.close()
        return self._hash.hexdigest(), self._size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
