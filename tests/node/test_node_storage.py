"""Spool files and the store: what is acknowledged is hashed, fsynced and renamed into place, never overwritten."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from node.config import StorageConfig
from node.storage.spool import SpoolFile
from node.storage.store import InstanceStore


def test_spool_hashes_what_it_writes(tmp_path: Path):
    spool = SpoolFile(tmp_path)
    chunks = [b"\x00" * 128, b"DICM", bytes(range(256)) * 100, b"tail"]
    for chunk in chunks:
        spool.write(chunk)
        spool.file.flush()
    sha256, size = spool.complete()
    data = b"".join(chunks)
    assert (sha256, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert spool.path.read_bytes() == data
    spool.close()  # pynetdicom closes it again after the handler: harmless


def test_store_paths_keep_both_versions_of_a_uid(tmp_path: Path):
    store = InstanceStore(StorageConfig(data_dir=tmp_path, min_free_bytes=0))
    paths = []
    for content in (b"first", b"second"):
        spool = SpoolFile(store.incoming)
        spool.write(content)
        sha256, _ = spool.complete()
        relative = store.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5", sha256)
        paths.append(store.commit_file(spool.path, relative))
    assert paths[0] != paths[1] and [p.read_bytes() for p in paths] == [b"first", b"second"]
    assert list(store.incoming.iterdir()) == []


def test_quarantine_keeps_bytes_with_a_note_and_watermark_is_checked(tmp_path: Path):
    store = InstanceStore(StorageConfig(data_dir=tmp_path, min_free_bytes=0))
    spool = SpoolFile(store.incoming)
    spool.write(b"bad bytes")
    spool.complete()
    kept = store.quarantine(spool.path, "missing_uid", {"reason": "StudyInstanceUID is missing"})
    assert kept.read_bytes() == b"bad bytes"
    assert json.loads(kept.with_suffix(".json").read_text())["reason"] == "StudyInstanceUID is missing"
    assert store.has_room()
    assert not InstanceStore(StorageConfig(data_dir=tmp_path, min_free_bytes=10**18)).has_room()
