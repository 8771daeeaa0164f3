"""Datasets: the manifest that lists labelled studies by role, grouped by patient, for training and evaluation."""

from detector.data.manifest import ROLES, Manifest, ManifestError, StudyEntry, SyntheticSet, load_manifest

__all__ = ["ROLES", "Manifest", "ManifestError", "StudyEntry", "SyntheticSet", "load_manifest"]
