"""Dataset manifest (YAML): which studies exist, whose they are, and whether they train, validate or test.

```yaml
name: chest-v1
root: ../shared/ct            # relative to this file; $CTNODE_TEST_DATA overrides when set
studies:
  - id: lidc-0001             # unique
    path: lidc_idri_0001      # a folder under root: DICOM files (any depth) and their labels
    patient: LIDC-IDRI-0001   # studies of one patient share one role (patient-level split)
    role: test                # train | validation | test
    body_part: CHEST          # optional
    labels: [annotations/069.xml]   # optional: label files/folders under path; default: found in path
synthetic:                    # optional: labelled studies with lesions inserted into a study of the manifest
  - {background: lidc-0001, target: chest, studies: 8, negatives: 2, lesions: 3, seed: 100}
```
A synthetic set takes its background's patient and role (`ctnode synth` writes it, deterministically, the first
time it is needed). A patient in two roles, an unknown role, a duplicate id or a missing folder is a one-line
error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.data.yamlfile import read_yaml

ROLES = ("train", "validation", "test")


class ManifestError(ValueError):
    """A manifest cannot be used; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class StudyEntry:
    """One labelled study: where it is, whose it is, and its role in the split."""

    id: str
    path: Path
    patient: str
    role: str
    body_part: str | None = None
    labels: tuple[Path, ...] = ()
    """Label files or folders; empty: discovered in ``path``."""


@dataclass(frozen=True)
class SyntheticSet:
    """``studies`` studies with 1..``lesions`` synthetic lesions and ``negatives`` lesion-free ones over the
    manifest study ``background``, seeds counting up from ``seed``."""

    background: str
    target: str
    studies: int
    negatives: int = 0
    lesions: int = 2
    seed: int = 0


@dataclass(frozen=True)
class Manifest:
    """A named, patient-grouped list of studies, and synthetic sets over some of them."""

    name: str
    source: Path
    studies: tuple[StudyEntry, ...]
    synthetic: tuple[SyntheticSet, ...] = ()

    def role(self, role: str) -> tuple[StudyEntry, ...]:
        """The studies of one role, in manifest order."""
        if role not in ROLES:
            raise ManifestError(f"{self.source}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        return tuple(s for s in self.studies if s.role == role)

    def by_id(self, study_id: str) -> StudyEntry:
        for s in self.studies:
            if s.id == study_id:
                return s
        raise ManifestError(f"{self.source}: no study {study_id!r}")


def _root(data: dict[str, Any], path: Path) -> Path:
    env = os.environ.get("CTNODE_TEST_DATA")
    if env and data.get("root_env", True):
        return Path(env)
    return (path.parent / str(data.get("root", "."))).resolve()


def load_manifest(path: Path) -> Manifest:
    """Read and check a manifest; every problem is a :class:`ManifestError` naming the file."""
    path = Path(path)
    try:
        data = read_yaml(path)
    except ValueError as exc:
        raise ManifestError(str(exc)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("studies"), list) or not data["studies"]:
        raise ManifestError(f"{path}: expected a mapping with a non-empty 'studies' list")
    unknown = sorted(set(data) - {"name", "root", "root_env", "studies", "synthetic"})
    if unknown:
        raise ManifestError(f"{path}: unknown key(s) {unknown}")
    root = _root(data, path)
    studies: list[StudyEntry] = []
    roles_of: dict[str, str] = {}
    for n, item in enumerate(data["studies"]):
        where = f"{path}: studies[{n}]"
        if not isinstance(item, dict):
            raise ManifestError(f"{where}: expected a mapping")
        extra = sorted(set(item) - {"id", "path", "patient", "role", "body_part", "labels"})
        if extra:
            raise ManifestError(f"{where}: unknown key(s) {extra}")
        missing = [k for k in ("id", "path", "patient", "role") if not item.get(k)]
        if missing:
            raise ManifestError(f"{where}: missing {', '.join(missing)}")
        sid, role, patient = str(item["id"]), str(item["role"]), str(item["patient"])
        if role not in ROLES:
            raise ManifestError(f"{where} ({sid}): role {role!r} is not one of {', '.join(ROLES)}")
        if any(s.id == sid for s in studies):
            raise ManifestError(f"{where}: duplicate id {sid!r}")
        if roles_of.setdefault(patient, role) != role:
            raise ManifestError(f"{where} ({sid}): patient {patient!r} is in both {roles_of[patient]} and {role}; "
                                "a patient's studies must share one role")
        folder = root / str(item["path"])
        if not folder.exists():
            raise ManifestError(f"{where} ({sid}): {folder} does not exist")
        labels = item.get("labels") or []
        if not isinstance(labels, list):
            labels = [labels]
        studies.append(StudyEntry(
            id=sid, path=folder, patient=patient, role=role,
            body_part=str(item["body_part"]).upper() if item.get("body_part") else None,
            labels=tuple(folder / str(label) for label in labels),
        ))
    synthetic = tuple(_synthetic_set(item, f"{path}: synthetic[{n}]", {s.id for s in studies})
                      for n, item in enumerate(data.get("synthetic") or []))
    return Manifest(name=str(data.get("name") or path.stem), source=path, studies=tuple(studies), synthetic=synthetic)


def _synthetic_set(item: Any, where: str, ids: set[str]) -> SyntheticSet:
    if not isinstance(item, dict):
        raise ManifestError(f"{where}: expected a mapping")
    fields = {"background", "target", "studies", "negatives", "lesions", "seed"}
    extra = sorted(set(item) - fields)
    if extra:
        raise ManifestError(f"{where}: unknown key(s) {extra}")
    if item.get("background") not in ids:
        raise ManifestError(f"{where}: background {item.get('background')!r} is not a study id of the manifest")
    if item.get("target") not in ("head", "chest"):
        raise ManifestError(f"{where}: target must be head or chest, got {item.get('target')!r}")
    counts = {k: item.get(k, default) for k, default in (("studies", 1), ("negatives", 0), ("lesions", 2),
                                                         ("seed", 0))}
    bad = [k for k, v in counts.items() if not isinstance(v, int) or isinstance(v, bool) or v < (1 if k == "lesions"
                                                                                                   else 0)]
    if bad:
        raise ManifestError(f"{where}: {', '.join(bad)} must be whole numbers (lesions at least 1)")
    return SyntheticSet(background=str(item["background"]), target=str(item["target"]), **counts)
