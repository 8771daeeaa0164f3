"""fsync helpers: a file and the directory entry that names it must both reach the disk."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

_SYNC_FILE_RANGE_WRITE = 2  # start writeback of dirty pages, do not wait


def _load_sync_file_range() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to begin writing a range to disk now (Linux), so a later fdatasync has little left to do."""
    if _sync_file_range is not None and nbytes > 0:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def fsync_file(path: Path) -> None:
    """fdatasync a file that was written (and possibly renamed) earlier."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: Path, known: set[Path]) -> None:
    """Create ``path`` and any missing parents, fsyncing each parent whose listing changed."""
    if path in known:
        return
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:  # another receiver thread or process created it first
            pass
        fsync_dir(directory.parent)
    known.add(path)
