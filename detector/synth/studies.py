"""Labelled synthetic studies: lesions inserted into a real CT series, written as a new DICOM series, SEG and JSON."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as Sequence_
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from detector.io import Volume, read_ct_volume
from detector.io.pixels import rescale
from detector.labels import read_labels, xml_references
from detector.labels.lesions import LesionRecord, planes_from_headers
from detector.synth.insertion import InsertedLesion, Lesion, insert_lesions
from detector.synth.placement import Target, random_lesion

LABELS = "labels"
SEG_NAME = "lesions.seg.dcm"
JSON_NAME = "lesions.json"
SEGMENT_LABEL = "synthetic lesion"
DEIDENTIFICATION_METHOD = "ctnode synthetic lesion insertion"
MIN_GAP_MM = 5.0
"""Least distance between two lesions' bounding spheres."""
_DRAWS_PER_LESION = 25
_LESION_SETS = 10
_SEG_SERIES_NUMBER = 9000
_UID = re.compile(r"[0-9]+(?:\.[0-9]+){3,}")
_IDENTIFYING = (
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "IssuerOfPatientID", "PatientBirthName",
    "PatientBirthTime", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator",
)
_SOURCE_REFERENCES = (
    "ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence", "ReferencedImageSequence",
    "SourceImageSequence", "ReferencedSOPClassUID", "ReferencedSOPInstanceUID",
)
"""Links to the source study's objects, which the synthetic study does not hold."""
_SOURCE_ENCODING = (
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "PixelDataProviderURL", "SmallestImagePixelValue",
    "LargestImagePixelValue", "SmallestPixelValueInSeries", "LargestPixelValueInSeries",
)
_TYPE_2 = ("PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName", "AcquisitionNumber")


class SynthesisError(ValueError):
    """The background cannot take the lesions asked for."""


@dataclass(frozen=True, eq=False)
class Background:
    """A real CT series read as the node reads it: its volume, the file of each slice, where it came from, and
    its own labelled findings (XML label files naming its images, and the lesions they hold)."""

    folder: Path
    volume: Volume
    files: tuple[Path, ...]
    label_files: tuple[Path, ...] = ()
    findings: tuple[LesionRecord, ...] = ()


def read_background(folder: Path) -> Background:
    """Select and load the series the node would read in ``folder`` (raises ``SeriesInputError`` when none),
    with the XML label files under ``folder`` that name its images (a malformed one raises ``LabelError``)."""
    volume, selection = read_ct_volume(folder)
    paths = {h.sop_instance_uid: h.path for h in selection.chosen.instances}
    labels = tuple(p for p in sorted(Path(folder).rglob("*.xml")) if xml_references(p, paths))
    planes = planes_from_headers(selection.chosen.instances)
    return Background(folder, volume, tuple(paths[uid] for uid in volume.geometry.sop_instance_uids), labels,
                      tuple(read_labels(list(labels), planes)))


@dataclass(frozen=True)
class SyntheticStudy:
    """A written synthetic study: its folder, its new Study and Series Instance UIDs, and the lesions inserted."""

    folder: Path
    study_instance_uid: str
    series_instance_uid: str
    lesions: tuple[Lesion, ...]

    @property
    def segmentation(self) -> Path | None:
        """The DICOM SEG labelling the lesions; None for a lesion-free study."""
        return self.folder / LABELS / SEG_NAME if self.lesions else None


def _uid(*parts: object) -> str:
    """A 2.25 UID of a name-based (SHA-1) UUID of ``parts``: the same parts always give the same UID."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '/'.join(['ctnode-synth', *map(str, parts)])).int}"


def _visible(volume: Volume, lesion: Lesion) -> bool:
    """The voxel nearest the lesion's centre lies in the volume and is mostly lesion (so its mask is not empty)."""
    zyx = np.rint(volume.geometry.patient_to_voxel(lesion.centre_mm))
    if not all(0 <= v < n for v, n in zip(zyx, volume.geometry.shape)):
        return False
    return bool(lesion.coverage(volume.geometry.voxel_to_patient(zyx)) >= 0.5)


def _apart(lesion: Lesion, centre_mm: tuple[float, float, float], radius_mm: float) -> bool:
    gap = np.linalg.norm(np.subtract(lesion.centre_mm, centre_mm))
    return bool(gap >= max(lesion.radii_mm) + radius_mm + MIN_GAP_MM)


def place_lesions(
    target: Target, volume: Volume, count: int, rng: np.random.Generator, avoid: Sequence[LesionRecord] = ()
) -> list[Lesion]:
    """``count`` random lesions where the target's lesions belong, clear of each other and of the background's
    own labelled findings ``avoid``, each covering a voxel."""
    placed: list[Lesion] = []
    taken = [(a.centre_mm, a.diameter_mm / 2) for a in avoid]
    for _ in range(count * _DRAWS_PER_LESION):
        if len(placed) == count:
            break
        lesion = random_lesion(target, volume, rng)
        if lesion is None:
            break
        if _visible(volume, lesion) and all(_apart(lesion, c, r) for c, r in taken):
            placed.append(lesion)
            taken.append((lesion.centre_mm, max(lesion.radii_mm)))
    if len(placed) < count:
        raise SynthesisError(f"found room for only {len(placed)} of {count} separate {target} lesions "
                             f"in series {volume.series_instance_uid}")
    return placed


def _faces(ndim: int, axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index pairs of every voxel and its neighbour one step further along ``axis``."""
    low = tuple(slice(None, -1) if a == axis else slice(None) for a in range(ndim))
    high = tuple(slice(1, None) if a == axis else slice(None) for a in range(ndim))
    return low, high


def _connected(mask: NDArray[np.bool_]) -> bool:
    """Whether the set voxels of ``mask`` (at least one) form one face-connected piece."""
    mask = mask[tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))]
    reached = np.zeros_like(mask)
    reached.flat[np.flatnonzero(mask)[0]] = True
    while True:
        grown = reached.copy()
        for axis in range(mask.ndim):
            low, high = _faces(mask.ndim, axis)
            grown[high] |= reached[low]
            grown[low] |= reached[high]
        grown &= mask
        if np.array_equal(grown, reached):
            return bool(np.array_equal(reached, mask))
        reached = grown


def label_volume(inserted: list[InsertedLesion], shape: tuple[int, int, int]) -> NDArray[np.uint8] | None:
    """Each lesion's f >= 0.5 voxels numbered 1, 2, ...; None unless each is one face-connected piece
    touching no other (so that the label mask's connected components are the lesions, one each)."""
    labels = np.zeros(shape, dtype=np.uint8)
    for number, lesion in enumerate(inserted, start=1):
        if not lesion.mask.any() or not _connected(lesion.mask) or labels[lesion.region][lesion.mask].any():
            return None
        labels[lesion.region][lesion.mask] = number
    for axis in range(3):
        low, high = _faces(3, axis)
        a, b = labels[low], labels[high]
        if np.any((a != b) & (a > 0) & (b > 0)):
            return None
    return labels


def _lesion_set(
    target: Target, background: Background, count: int, rng: np.random.Generator
) -> tuple[list[Lesion], Volume, NDArray[np.uint8]]:
    """Lesions placed, inserted and labelled; drawn again in the rare case that their labels split or touch."""
    volume = background.volume
    for _ in range(_LESION_SETS):
        placed = place_lesions(target, volume, count, rng, background.findings)
        changed, inserted = insert_lesions(volume, placed)
        labels = label_volume(inserted, volume.geometry.shape)
        if labels is not None:
            return placed, changed, labels
    raise SynthesisError(f"no {count} {target} lesions with separate labels in {_LESION_SETS} tries "
                         f"in series {volume.series_instance_uid}")


def _stored_values(hu: NDArray, ds: Dataset) -> NDArray[np.integer]:
    """HU back to stored values through the inverse modality LUT, clipped to what the pixel format holds."""
    slope, intercept = rescale(ds)
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    values = np.clip(np.rint((hu.astype(np.float64) - intercept) / slope), low, high)
    return values.astype(f"<{'i' if signed else 'u'}{int(ds.BitsAllocated) // 8}")


def _related_series(volume: Volume) -> Sequence_:
    """The background series as this series' Related Series: how an evaluation knows which patient it came from."""
    item = Dataset()
    item.StudyInstanceUID = volume.study_instance_uid
    item.SeriesInstanceUID = volume.series_instance_uid
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = Sequence_([purpose])
    return Sequence_([item])


def _synthetic_slice(source: Path, hu: NDArray, shared: dict[str, Any], key: tuple[int, int],
                     background: Volume) -> Dataset:
    """The source image's header with the new pixels, UIDs and patient identity, uncompressed, naming its source
    series in Related Series Sequence."""
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    ds.remove_private_tags()
    for keyword in (*_IDENTIFYING, *_SOURCE_REFERENCES, *_SOURCE_ENCODING):
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in _TYPE_2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    for keyword, value in shared.items():
        setattr(ds, keyword, value)
    ds.RelatedSeriesSequence = _related_series(background)
    if "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = _uid("frame", ds.FrameOfReferenceUID, *key)
    ds.SOPInstanceUID = _uid("instance", ds.SOPInstanceUID, *key)
    ds.set_pixel_data(_stored_values(hu, ds), str(ds.PhotometricInterpretation), int(ds.BitsStored),
                      generate_instance_uid=False)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _derivation(lesions: list[Lesion], seed: int) -> str:
    if not lesions:
        return f"ctnode: no lesion inserted (lesion-free control, seed {seed})"
    sizes = ", ".join(f"{lesion.diameter_mm:.1f} mm {lesion.hu:.0f} HU" for lesion in lesions)
    return f"ctnode: {len(lesions)} synthetic lesion(s) inserted (seed {seed}): {sizes}"


def _segmentation(images: list[Dataset], labels: NDArray[np.uint8]) -> hd.seg.Segmentation:
    """A binary SEG of every lesion's f >= 0.5 voxels over the written images (empty frames left out)."""
    series_uid = str(images[0].SeriesInstanceUID)
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=DEIDENTIFICATION_METHOD, version=version("ctnode"), family=codes.cid7162.MorphologicalOperations),
    )
    return hd.seg.Segmentation(
        source_images=images,
        pixel_array=labels > 0,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=_uid("seg-series", series_uid),
        series_number=_SEG_SERIES_NUMBER,
        sop_instance_uid=_uid("seg", series_uid),
        instance_number=1,
        manufacturer="ctnode",
        manufacturer_model_name="ctnode synth",
        software_versions=version("ctnode"),
        device_serial_number="none",
        series_description=f"SYNTHETIC {SEGMENT_LABEL} labels",
        omit_empty_frames=True,
    )


def _lesion_json(lesion: Lesion) -> dict[str, Any]:
    return {"centre_mm": [round(v, 3) for v in lesion.centre_mm], "radii_mm": [round(v, 3) for v in lesion.radii_mm],
            "hu": round(lesion.hu, 1), "diameter_mm": round(lesion.diameter_mm, 2), "shape": lesion.shape,
            "seed": lesion.seed}


def _copy_labels(source: Background, folder: Path, renamed: dict[str, str]) -> None:
    """The background's own XML labels, every UID of its study, series and images replaced by the new one, so that
    its real findings stay labelled (targets or ignore regions) in the synthetic study."""
    if not source.label_files:
        return
    folder.mkdir(exist_ok=True)
    for path in source.label_files:
        text = _UID.sub(lambda m: renamed.get(m.group(0), m.group(0)), path.read_text(encoding="utf-8"))
        (folder / f"{renamed.get(path.stem, path.stem)}{path.suffix}").write_text(text, encoding="utf-8")


def write_synthetic_study(
    background: Path | Background, out: Path, target: Target, lesions: int, seed: int
) -> SyntheticStudy:
    """Insert ``lesions`` seeded random lesions into the series the node would read in ``background``.

    Writes under ``out`` one Explicit VR Little Endian file per slice (new deterministic UIDs, patient
    identity replaced), and under ``out/labels`` a DICOM SEG of the lesions (none when ``lesions`` is 0)
    and a JSON list of them. The same background, seed and count always give the same slice files.
    """
    source = background if isinstance(background, Background) else read_background(background)
    volume = source.volume
    placed, changed, labels = _lesion_set(target, source, lesions, np.random.default_rng(seed))
    key = (seed, lesions)
    study_uid = _uid("study", volume.study_instance_uid, *key)
    series_uid = _uid("series", volume.series_instance_uid, *key)
    first = pydicom.dcmread(source.files[0], stop_before_pixels=True)
    shared = {
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "SeriesDescription": f"SYNTHETIC {first.get('SeriesDescription', '')}".strip()[:64],
        "DerivationDescription": _derivation(placed, seed),
        "PatientName": f"SYNTHETIC^{seed}",
        "PatientID": "SYN-" + hashlib.sha256(study_uid.encode()).hexdigest()[:16],
        "PatientBirthDate": "",
        "PatientIdentityRemoved": "YES",
        "DeidentificationMethod": DEIDENTIFICATION_METHOD,
        "AccessionNumber": "",
        "StudyID": "",
    }
    out.mkdir(parents=True, exist_ok=True)
    headers = []
    for z, path in enumerate(source.files):
        ds = _synthetic_slice(path, changed.hu[z], shared, key, volume)
        pydicom.dcmwrite(out / f"CT{z + 1:04d}.dcm", ds, enforce_file_format=True)
        del ds.PixelData
        headers.append(ds)
    folder = out / LABELS
    folder.mkdir(exist_ok=True)
    renamed = {volume.study_instance_uid: study_uid, volume.series_instance_uid: series_uid,
               **{old: str(new.SOPInstanceUID) for old, new in zip(volume.geometry.sop_instance_uids, headers,
                                                                    strict=True)}}
    _copy_labels(source, folder / "background", renamed)
    (folder / SEG_NAME).unlink(missing_ok=True)
    if placed:
        _segmentation(headers, labels).save_as(folder / SEG_NAME)
    summary = {"background": str(source.folder), "target": target, "seed": seed, "study_instance_uid": study_uid,
               "series_instance_uid": series_uid, "lesions": [_lesion_json(lesion) for lesion in placed]}
    (folder / JSON_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return SyntheticStudy(out, study_uid, series_uid, tuple(placed))
