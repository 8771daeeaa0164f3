"""`ctnode detect` (node.cli.detect): the findings table, overlay PNGs, and a clear error on bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import typer
from PIL import Image
from typer.testing import CliRunner

from detector.findings import Finding, SliceBox
from detector.infer import DetectionResult, load_model
from detector.io import read_ct_volume
from node.cli.detect import detect, findings_table, write_overlays

app = typer.Typer()
app.command()(detect)


def _result_with_one_finding(folder: Path) -> DetectionResult:
    volume, selection = read_ct_volume(folder)
    model = load_model("head")
    cls = model.card.classes[0]
    uid = volume.geometry.sop_instance_uids[10]
    finding = Finding(
        label=cls.label, finding_type=cls.finding_type, score=0.9,
        centre_mm=tuple(volume.geometry.voxel_to_patient([10, 200, 220]).tolist()),  # type: ignore[arg-type]
        size_mm=(10.0, 10.0, 4.0), voxel_box=(10, 190, 210, 11, 211, 231),
        slices=(SliceBox(uid, (210.0, 190.0, 230.0, 210.0), 0.9),), finding_site=cls.finding_site,
    )
    return DetectionResult([finding], volume, selection, model)


def test_overlays_are_written_per_finding_on_its_key_slice(ct_data: Callable[[str], Path], tmp_path: Path) -> None:
    result = _result_with_one_finding(ct_data("head_ge_patient"))
    [png] = write_overlays(result, tmp_path / "out")
    picture = np.asarray(Image.open(png))
    assert picture.shape == (512, 512, 3)
    # the box outline is drawn in the overlay colour around (210..230, 190..210)
    assert (picture[188:212, 208:232] == (255, 210, 0)).all(axis=-1).any()
    assert "hyperdense_lesion" in png.name


def test_table_lists_each_finding_with_patient_millimetres(ct_data: Callable[[str], Path]) -> None:
    result = _result_with_one_finding(ct_data("head_ge_patient"))
    table = findings_table(result)
    assert table.row_count == 1
    assert [c.header for c in table.columns][:3] == ["#", "label", "score"]


def test_cli_runs_on_a_real_series_and_refuses_an_empty_folder(ct_data: Callable[[str], Path], tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, [str(ct_data("head_ge_patient")), "--model", "head", "--out", str(tmp_path / "png")])
    assert ok.exit_code == 0, ok.output
    assert "finding(s), ctnode-head" in ok.output
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = runner.invoke(app, [str(empty)])
    assert refused.exit_code == 1
    assert "cannot detect" in refused.output
    unknown = runner.invoke(app, [str(empty), "--model", "knee"])
    assert unknown.exit_code == 1 and "shipped models" in unknown.output


def test_dicom_flag_writes_what_the_pacs_would_receive_with_stable_uids(
    ct_data: Callable[[str], Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    source = ct_data("chest_lung_pet_ct_dx_A0001")
    first = runner.invoke(app, [str(source), "--model", "chest", "--out", str(tmp_path / "a"), "--dicom"])
    assert first.exit_code == 0, first.output
    written = sorted(p.name for p in (tmp_path / "a" / "dicom").iterdir())
    assert written[-1] == "sr.dcm" and all(name.startswith("sc-") for name in written[:-1]) and len(written) >= 2
    sr = pydicom.dcmread(tmp_path / "a" / "dicom" / "sr.dcm")
    source_study = pydicom.dcmread(next(source.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    assert sr.StudyInstanceUID == source_study and sr.Modality == "SR"
    again = runner.invoke(app, [str(source), "--model", "chest", "--out", str(tmp_path / "b"), "--dicom"])
    assert again.exit_code == 0, again.output
    for name in written:
        assert (pydicom.dcmread(tmp_path / "a" / "dicom" / name).SOPInstanceUID
                == pydicom.dcmread(tmp_path / "b" / "dicom" / name).SOPInstanceUID)
    refused = runner.invoke(app, [str(source), "--model", "chest", "--dicom"])
    assert refused.exit_code == 2 and "--dicom needs --out" in refused.output


def test_without_a_model_detect_routes_like_the_node_and_warns_when_told_otherwise(
    ct_data: Callable[[str], Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    chest = runner.invoke(app, [str(ct_data("chest_lung_pet_ct_dx_A0001"))])
    assert chest.exit_code == 0, chest.output
    said = " ".join(chest.output.split())
    assert "-> chest: study description matches" in said and "finding(s), ctnode-chest" in said
    stripped = tmp_path / "untagged"
    stripped.mkdir()
    for path in sorted(ct_data("head_ge_patient").glob("*")):
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            for keyword in ("BodyPartExamined", "StudyDescription", "SeriesDescription"):
                if keyword in ds:
                    delattr(ds, keyword)
            ds.save_as(stripped / path.name)
    untagged = runner.invoke(app, [str(stripped)])  # no tag says head: the pixels do
    said = " ".join(untagged.output.split())
    assert untagged.exit_code == 0, untagged.output
    assert "-> head: body part HEAD from the pixels (body 196 mm wide" in said and "finding(s), ctnode-head" in said
    forced = runner.invoke(app, [str(ct_data("head_ge_patient")), "-m", "chest"])
    assert forced.exit_code == 0, forced.output
    said = " ".join(forced.output.split())
    assert "warning: the node would not run chest on this study (it routes it to head)" in said
    assert "warning: the model's domain gate would refuse this series (body part HEAD from the pixels" in said


def test_detect_refuses_a_series_outside_the_model_domain_with_the_reason(
    ct_data: Callable[[str], Path], tmp_path: Path
) -> None:
    from tests.support import write_contrast_enhanced

    enhanced = write_contrast_enhanced(ct_data("head_ge_patient"), tmp_path / "enhanced")[0].parent
    refused = CliRunner().invoke(app, [str(enhanced)])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 1
    assert "refused by the model's domain gate (the node would skip this run): contrast-enhanced series" in said
