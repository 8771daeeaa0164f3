"""The UID-addressed instance store and its quarantine: every accepted byte lands here durably."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from node.config import StorageConfig
from node.storage.durable import fsync_dir, fsync_file, make_dirs_durable


class InstanceStore:
    """Files named ``store/<study>/<series>/<sop>.<sha12>.dcm``: a resend with other bytes never overwrites."""

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self.root = config.store_dir
        self.incoming = config.incoming_dir
        self.quarantine_root = config.quarantine_dir
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()
        for directory in (self.root, self.incoming, self.quarantine_root):
            directory.mkdir(parents=True, exist_ok=True)
        self._quarantined_bytes = sum(p.stat().st_size for p in self.quarantine_root.rglob("*") if p.is_file())

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
        return f"{study_uid}/{series_uid}/{sop_uid}.{sha256[:12]}.dcm"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def has_room(self) -> bool:
        """False when free space is below the configured watermark."""
        return self.free_bytes() >= self.config.min_free_bytes

    def commit_file(self, spooled: Path, relative: str) -> Path:
        """Move a complete spool file to its place in the store and make its bytes and its name durable.

        The rename comes before the fdatasync, so on a journalling filesystem one journal commit carries
        the file's blocks, its creation and its new name; the directory fsync then has nothing left to
        wait for. A crash before the fsync leaves at worst an unindexed file, never an indexed hole.
        """
        target = self.root / relative
        with self._lock:
            make_dirs_durable(target.parent, self._known_dirs)
        os.replace(spooled, target)
        fsync_file(target)
        fsync_dir(target.parent)
        return target

    def spool_refusal(self) -> str | None:
        """Why a new data set must not be spooled at all (checked before its first byte), or None."""
        return None if self.has_room() else "disk below the free-space watermark"

    def quarantine_refusal(self, size: int) -> str | None:
        """Why ``size`` more refused bytes must not be kept (quota, or the free-space watermark), or None."""
        if not self.has_room():
            return "disk below the free-space watermark"
        if self._quarantined_bytes + size > self.config.quarantine_max_bytes:
            return f"quarantine quota of {self.config.quarantine_max_bytes} bytes reached"
        return None

    def quarantine(self, spooled: Path, reason: str, detail: dict[str, object], folder: str | None = None) -> Path:
        """Keep bytes we refused, with a JSON note beside them; returns the quarantined file's path.

        ``folder`` (default: today's date) is the sub-folder of the quarantine they go to.
        """
        now = datetime.now(timezone.utc)
        day = self.quarantine_root / (folder or now.strftime("%Y%m%d"))
        with self._lock:
            make_dirs_durable(day, self._known_dirs)
        target = day / f"{now.strftime('%H%M%S%f')}-{reason}-{spooled.stem}.dcm"
        os.replace(spooled, target)
        fsync_file(target)
        note = target.with_suffix(".json")
        note.write_text(json.dumps({"reason": reason, "at": now.isoformat(), **detail}, default=str))
        fsync_dir(day)
        with self._lock:
            self._quarantined_bytes += target.stat().st_size + note.stat().st_size
        return target

    def store_files(self, older_than_s: float) -> list[str]:
        """Paths (relative to the store) of the instance files last written more than ``older_than_s`` ago."""
        limit = time.time() - older_than_s
        out = []
        for path in self.root.rglob("*.dcm"):
            try:
                if path.stat().st_mtime <= limit:
                    out.append(path.relative_to(self.root).as_posix())
            except FileNotFoundError:
                continue
        return sorted(out)

    def set_aside(self, relative: str, reason: str) -> Path:
        """Move a store file no row names into ``quarantine/orphans/`` (ignoring the quota: these are not new bytes)."""
        return self.quarantine(self.root / relative, reason, {"store_path": relative}, folder="orphans")

    def discard(self, spooled: Path) -> None:
        spooled.unlink(missing_ok=True)

    def stale_spools(self) -> list[Path]:
        """Spool files left by a receiver that died mid-transfer (never acknowledged)."""
        return sorted(self.incoming.glob("*.part"))
