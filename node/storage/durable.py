"""fsync helpers: a file and the directory entry that names it must both reach the disk."""

from __future__ import annotations

import os
from pathlib import Path

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
