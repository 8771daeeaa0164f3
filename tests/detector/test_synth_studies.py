"""detector.synth.studies and `ctnode synth`: labelled synthetic studies read back through the node's own path."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from typer.testing import CliRunner

from detector.io import StackGeometry, Volume, read_ct_volume
from detector.synth import Lesion, insert_lesions
from detector.synth.studies import SyntheticStudy, label_volume, write_synthetic_study
from node.cli.main import app
from tests.support import REPO, dicom_files, require

SEED = 7


@pytest.fixture(scope="module")
def background(ct_data: Callable[[str], Path]) -> Path:
    return ct_data("head_ge_patient")


@pytest.fixture(scope="module")
def study(background: Path, tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(background, tmp_path_factory.mktemp("synth") / "study", "head", 2, SEED)


def test_lesions_get_labels_only_while_their_masks_stay_apart() -> None:
    geometry = StackGeometry(
        row_direction=np.array([1.0, 0.0, 0.0]), column_direction=np.array([0.0, 1.0, 0.0]),
        pixel_spacing_mm=(1.0, 1.0), positions_mm=np.array([[0.0, 0.0, 2.0 * k] for k in range(16)]),
        sop_instance_uids=tuple(map(str, range(16))), shape=(16, 48, 48),
    )
    volume = Volume(np.zeros(geometry.shape, np.int16), geometry, "1.2.3", 1, "1.2", None, CTImageStorage, 2.0)
    left = Lesion(centre_mm=(12.0, 24.0, 15.0), radii_mm=(5.0, 5.0, 5.0), hu=70.0)
    for right_x_mm, apart in ((36.0, True), (20.0, False)):
        right = Lesion(centre_mm=(right_x_mm, 24.0, 15.0), radii_mm=(5.0, 5.0, 5.0), hu=70.0)
        labels = label_volume(insert_lesions(volume, [left, right])[1], geometry.shape)
        assert (labels is not None) == apart
        if labels is not None:
            assert np.unique(labels).tolist() == [0, 1, 2]


def test_the_series_reads_back_as_the_source_with_the_lesions_inserted(background: Path, study: SyntheticStudy) -> None:
    written, selection = read_ct_volume(study.folder)
    source, _ = read_ct_volume(background)
    expected, _ = insert_lesions(source, list(study.lesions))
    assert selection.chosen.series_instance_uid == study.series_instance_uid
    assert written.study_instance_uid == study.study_instance_uid
    assert len(study.lesions) == 2 and len(list(study.folder.glob("*.dcm"))) == 28
    assert np.array_equal(written.hu, expected.hu)
    assert not np.array_equal(written.hu, source.hu)
    assert np.allclose(written.geometry.positions_mm, source.geometry.positions_mm)
    ds = pydicom.dcmread(study.folder / "CT0001.dcm")
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SeriesDescription.startswith("SYNTHETIC")
    assert "2 synthetic lesion(s)" in ds.DerivationDescription


def test_uids_are_new_and_a_rerun_writes_the_same_bytes(
    background: Path, study: SyntheticStudy, tmp_path: Path
) -> None:
    source = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in dicom_files(background)}
    first = pydicom.dcmread(dicom_files(background)[0], stop_before_pixels=True)
    written = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(study.folder.glob("*.dcm"))]
    assert not source & {str(ds.SOPInstanceUID) for ds in written}
    assert study.study_instance_uid != first.StudyInstanceUID
    assert study.series_instance_uid != first.SeriesInstanceUID
    assert written[0].FrameOfReferenceUID != first.FrameOfReferenceUID
    again = write_synthetic_study(background, tmp_path / "again", "head", 2, SEED)
    assert again.study_instance_uid == study.study_instance_uid
    assert again.series_instance_uid == study.series_instance_uid
    assert (tmp_path / "again" / "CT0014.dcm").read_bytes() == (study.folder / "CT0014.dcm").read_bytes()
    seg_uids = {str(pydicom.dcmread(s.segmentation).SOPInstanceUID) for s in (study, again) if s.segmentation}
    assert len(seg_uids) == 1
    other = write_synthetic_study(background, tmp_path / "other", "head", 2, SEED + 1)
    assert other.study_instance_uid != study.study_instance_uid


def test_the_seg_labels_the_inserted_voxels_on_the_written_instances(background: Path, study: SyntheticStudy) -> None:
    assert study.segmentation is not None
    seg = pydicom.dcmread(study.segmentation)
    volume, _ = read_ct_volume(study.folder)
    uids = volume.geometry.sop_instance_uids
    source, _ = read_ct_volume(background)
    _, inserted = insert_lesions(source, list(study.lesions))
    expected = np.zeros(source.geometry.shape, dtype=bool)
    for lesion in inserted:
        expected[lesion.region] |= lesion.mask
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == study.study_instance_uid
    assert seg.SegmentSequence[0].SegmentLabel == "synthetic lesion"
    frames = seg.pixel_array.reshape(-1, *source.geometry.shape[1:]).astype(bool)
    labelled = []
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert uid in uids, "every SEG frame references a written CT instance"
        assert np.array_equal(frame, expected[uids.index(uid)])
        labelled.append(uids.index(uid))
    assert sorted(labelled) == [int(z) for z in np.flatnonzero(expected.any(axis=(1, 2)))]
    listed = json.loads((study.folder / "labels" / "lesions.json").read_text())
    assert [item["seed"] for item in listed["lesions"]] == [lesion.seed for lesion in study.lesions]


def test_no_source_patient_identifier_remains(background: Path, study: SyntheticStudy) -> None:
    first = pydicom.dcmread(dicom_files(background)[0], stop_before_pixels=True)
    secrets = [str(first.PatientID), str(first.PatientName)]
    for path in [*study.folder.rglob("*.dcm"), study.folder / "labels" / "lesions.json"]:
        raw = path.read_bytes()
        assert not [s for s in secrets if s.encode() in raw], f"source identifier left in {path.name}"
    ds = pydicom.dcmread(study.folder / "CT0001.dcm", stop_before_pixels=True)
    # the source series is named once, as the declared source of the synthetic one, and nowhere else
    [related] = ds.RelatedSeriesSequence
    assert (related.StudyInstanceUID, related.SeriesInstanceUID) == (first.StudyInstanceUID, first.SeriesInstanceUID)
    del ds.RelatedSeriesSequence
    assert first.StudyInstanceUID not in str(ds) and first.SeriesInstanceUID not in str(ds)
    assert (str(ds.PatientName), ds.PatientBirthDate, ds.PatientIdentityRemoved) == (f"SYNTHETIC^{SEED}", "", "YES")
    assert ds.PatientID.startswith("SYN-") and ds.DeidentificationMethod == "ctnode synthetic lesion insertion"


def test_the_cli_writes_positive_and_lesion_free_studies(background: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "eval"
    result = runner.invoke(app, ["synth", str(background), "--out", str(out), "--target", "head",
                                 "--studies", "2", "--lesions", "2", "--negatives", "1", "--seed", "40"])
    assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["head_ge_patient-40", "head_ge_patient-41", "head_ge_patient-42"]
    assert (out / "head_ge_patient-40" / "labels" / "lesions.seg.dcm").exists()
    negative = out / "head_ge_patient-42"
    assert not (negative / "labels" / "lesions.seg.dcm").exists()
    assert json.loads((negative / "labels" / "lesions.json").read_text())["lesions"] == []
    assert len(list(negative.glob("*.dcm"))) == 28
    assert "3 synthetic studies" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = runner.invoke(app, ["synth", str(empty), "--out", str(out), "--target", "head"])
    assert refused.exit_code == 1
    assert "cannot synthesise: no DICOM image instance" in refused.output


def test_a_written_slice_and_the_seg_pass_the_dicom_validators(study: SyntheticStudy, tmp_path: Path) -> None:
    script = REPO.parent / "shared" / "tools" / "validate-dicom"
    missing = [t for t in ("dciodvfy", "dsrdump", "java") if shutil.which(t) is None]
    if not Path("/usr/share/java/pixelmed.jar").exists():
        missing.append("pixelmed.jar")
    require(f"the validator {script} and its tools ({', '.join(missing) or 'all found'})",
            script.exists() and not missing)
    assert study.segmentation is not None
    for path in (study.folder / "CT0014.dcm", study.segmentation):
        shutil.copy(path, tmp_path / path.name)
    result = subprocess.run([str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("validated=2 with_errors=0")


def test_an_evaluation_flags_a_synthetic_study_whose_background_the_model_trained_on(
    study: SyntheticStudy, tmp_path: Path
) -> None:
    from detector.data import StudyEntry
    from detector.evaluate import EvaluationOptions, evaluate_studies
    from detector.infer import load_model

    head = load_model("head")  # its card lists head_ge_patient as a training background
    entry = StudyEntry(id="syn", path=study.folder, patient="syn", role="test")
    report = evaluate_studies(head, [entry], options=EvaluationOptions(bootstrap_rounds=10), progress=False)
    [result] = report.results
    assert result.error is None and result.trained_on is not None and result.trained_on.id == "head-ge"
    assert all(not f.held_out and f.training_overlap == "1 of 1 studies come from head-ge, which it saw"
               and f.dataset == "synthetic" for f in report.figures("synthetic"))
