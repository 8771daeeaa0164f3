"""Labelled studies to evaluate: from manifest entries or plain folders, grouped by Study Instance UID."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detector.data import ManifestError, StudyEntry, load_manifest
from detector.io import InstanceHeader, read_headers
from detector.labels import label_files, xml_references
from detector.labels.lesions import LesionRecord
from detector.synth.sets import synthetic_entries

MANIFEST_SUFFIXES = (".yaml", ".yml")
SYNTHETIC_CACHE = Path("var") / "synthetic"
"""Where a manifest's synthetic sets are written (one folder per manifest name), relative to the working folder."""


@dataclass(frozen=True, eq=False)
class LabelledStudy:
    """One study's DICOM headers (every series) and its label files (and lesions known without one, such as a
    site's reader feedback), under a readable id."""

    id: str
    patient: str
    folder: Path
    study_instance_uid: str
    headers: tuple[InstanceHeader, ...]
    labels: tuple[Path, ...]
    lesions: tuple[LesionRecord, ...] = ()

    @property
    def series_instance_uids(self) -> tuple[str, ...]:
        return tuple(sorted({h.series_instance_uid for h in self.headers}))

    @property
    def sources(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(Study UID, Series UIDs) of this study and of every study its series name as related (the background
        of a synthetic study): what a training record is checked against."""
        related: dict[str, set[str]] = {self.study_instance_uid: set(self.series_instance_uids)}
        for h in self.headers:
            for study, series in h.related_series:
                related.setdefault(study, set()).add(series)
        return tuple((study, tuple(sorted(series))) for study, series in related.items())


def _common_folder(paths: Sequence[Path]) -> Path:
    parts = [p.parent.parts for p in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return Path(*common)


def studies_in(entry: StudyEntry) -> list[LabelledStudy]:
    """The studies under one entry's folder, each with the label files that reference it.

    XML label files (found under the folder, or the entry's own list) go to the study whose images
    they name (in a one-study folder, every one does, so that a broken file is reported, not skipped);
    DICOM SR and SEG files go to their own study.
    """
    scan = read_headers(entry.path)
    by_study: dict[str, list[InstanceHeader]] = {}
    for h in scan.headers:
        by_study.setdefault(h.study_instance_uid, []).append(h)
    given = [p for label in entry.labels for p in ([label] if label.is_file() else sorted(label.rglob("*")))
             if p.is_file()]
    xml = [p for p in (given or sorted(entry.path.rglob("*.xml"))) if p.suffix.lower() == ".xml"]
    uids = {uid: {h.sop_instance_uid: h for h in headers} for uid, headers in by_study.items()}
    xml_of: dict[str, list[Path]] = {uid: [] for uid in by_study}
    for path in xml:
        counts = {uid: xml_references(path, known) for uid, known in uids.items()}
        best = max(counts, key=lambda uid: counts[uid])
        if counts[best] or len(uids) == 1:  # a file naming no image of a one-study folder is still its label
            xml_of[best].append(path)
    dicom_labels = {p.resolve() for p in given if p.suffix.lower() != ".xml"}
    out = []
    for n, (uid, headers) in enumerate(sorted(by_study.items())):
        labels = label_files(headers, xml_of[uid])
        if given:
            labels = [p for p in labels if p.suffix.lower() == ".xml" or p.resolve() in dicom_labels]
        folder = _common_folder([h.path for h in headers])
        sid = entry.id if len(by_study) == 1 else f"{entry.id}/{folder.relative_to(entry.path) if folder.is_relative_to(entry.path) else n}"
        out.append(LabelledStudy(sid, entry.patient if len(by_study) == 1 else sid, folder, uid,
                                 tuple(headers), tuple(labels)))
    return out


def entries_from(data: Sequence[Path], roles: Sequence[str] = ("test",), cache: Path = SYNTHETIC_CACHE,
                 body_part: str | None = None) -> list[StudyEntry]:
    """Manifest files give their studies of ``roles`` and the synthetic sets over them (written under ``cache``
    the first time), less those of another body part than ``body_part`` (a study without one stays); any other
    path is one entry named after the folder."""
    entries: list[StudyEntry] = []
    for path in data:
        if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            manifest = load_manifest(path)
            listed = [*(s for role in roles for s in manifest.role(role)), *synthetic_entries(manifest, roles, cache)]
            entries += [s for s in listed if body_part is None or s.body_part in (None, body_part.upper())]
        elif not path.exists():
            raise ManifestError(f"{path} does not exist")
        else:
            entries.append(StudyEntry(id=path.name, path=path, patient=path.name, role=roles[0]))
    return entries
