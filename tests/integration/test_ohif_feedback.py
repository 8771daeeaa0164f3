"""A radiologist's review comes back to ctnode: Orthanc sends the chest series to a real node, the node's SR and
overlays come back, a reader in OHIF (the pinned prebuilt viewer, headless Chromium, real mouse input) tracks
ctnode's findings, deletes every measurement of one, draws a missed lesion far from all of them and saves the
report; OHIF stores it in Orthanc by STOW-RS, Orthanc's Lua script (deploy/orthanc/forward-reader-sr.lua) forwards
it to ctnode, ctnode stores it and reads it as feedback on its run.

Screenshots and the SR OHIF wrote (reader-sr.dcm) are kept under CTNODE_TEST_ARTIFACTS (default
var/test-artifacts)/ohif.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from detector.io.pixels import read_hu
from detector.labels.tid1500 import measurement_groups
from detector.preprocess.anatomy import enclosed
from node.db.engine import make_engine
from node.db.schema import Instance
from tests.integration.loop import (
    CHEST,
    node_sections,
    orthanc_study,
    results_in_orthanc,
    send_to_node,
    upload,
    wait_for_srs,
)
from tests.integration.ohif import LOAD_TIMEOUT_MS, OhifServer, ohif_dist, require_viewer, viewer_page
from tests.integration.orthanc import Orthanc
from tests.integration.test_ohif import artifacts
from tests.support import REPO, free_port, require_ct

pytestmark = pytest.mark.integration

LUA_SCRIPT = REPO / "deploy" / "orthanc" / "forward-reader-sr.lua"
READER_SERIES = "Radiologist review"
MISSED_LABEL = "missed nodule"
MISSED_SIDE_MM = 10.0  # the square the reader draws around the lesion ctnode missed
FEEDBACK_TIMEOUT_S = 90  # the feedback stage polls every second or so
# OHIF 3.13's listener for a failed image load throws this itself (see test_ohif.py): its bug, not a failure of ours.
OHIF_OWN_ERROR = "IMAGE_LOAD_ERROR TypeError: handler is not a function"


@dataclass(frozen=True)
class DrawnFinding:
    """One of ctnode's findings as its SR draws it: the images its boxes (POLYLINE regions) lie on."""

    name: str
    boxes: tuple[str, ...]


def drawn_findings(sr: Dataset) -> list[DrawnFinding]:
    """ctnode's findings in its SR, read as the feedback stage reads an SR: groups joined by tracking identifier."""
    boxes: dict[str, list[str]] = {}
    for group in measurement_groups(sr):
        boxes.setdefault(str(group.tracking_identifier), []).extend(
            r.sop_instance_uid for r in group.regions if r.graphic_type == "POLYLINE")
    return [DrawnFinding(name, tuple(sops)) for name, sops in boxes.items()]


@dataclass(frozen=True)
class Review:
    """What the reader does: the finding rejected (all its regions deleted), the findings kept, and the slice and
    the patient-space square (LPS mm, four corners) of the lesion drawn by hand."""

    rejected: DrawnFinding
    kept: list[DrawnFinding]
    missed_sop: str
    missed_corners_mm: list[list[float]]


def _rejected_finding(findings: list[DrawnFinding]) -> DrawnFinding:
    """The finding with the most regions on slices no other finding touches (its measurements are then told
    apart by their slice alone, as a reader tells them in OHIF's list)."""
    others = Counter(sop for f in findings for sop in f.boxes)
    alone = [f for f in findings if all(others[sop] == 1 for sop in f.boxes)]
    assert alone, "every finding shares a slice with another one"
    return max(alone, key=lambda f: len(f.boxes))


def _lung_square(ds: Dataset, side_mm: float) -> list[list[float]]:
    """Corners (LPS mm) of a ``side_mm`` square lying in the lung of this slice: lung is air (< -600 HU) inside
    the body, and the square's centre is the lung pixel nearest the lungs' centroid whose whole square is lung."""
    hu = read_hu(ds)
    lung = enclosed(hu > -300) & (hu < -600)
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    half = int(np.ceil(side_mm / min(row_mm, col_mm)))
    window = 2 * half + 1
    total = np.pad(lung.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    counts = total[window:, window:] - total[:-window, window:] - total[window:, :-window] + total[:-window, :-window]
    rows, cols = np.nonzero(counts == window * window)
    assert rows.size, "no lung region on the slice chosen for the missed lesion"
    ys, xs = np.nonzero(lung)
    k = int(np.argmin((rows + half - ys.mean()) ** 2 + (cols + half - xs.mean()) ** 2))
    centre_rc = (rows[k] + half, cols[k] + half)
    origin = np.array([float(v) for v in ds.ImagePositionPatient])
    along_row, along_col = (np.array([float(v) for v in ds.ImageOrientationPatient[i:i + 3]]) for i in (0, 3))
    centre = origin + centre_rc[1] * col_mm * along_row + centre_rc[0] * row_mm * along_col
    h = side_mm / 2
    return [list(centre + dx * along_row + dy * along_col) for dx, dy in ((-h, -h), (h, h))]


def plan_review(ct: list[Dataset], findings: list[DrawnFinding]) -> Review:
    """One finding rejected, the others kept, and the missed lesion on the slice farthest from every finding."""
    rejected = _rejected_finding(findings)
    along_z = sorted(ct, key=lambda ds: float(ds.ImagePositionPatient[2]))
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(along_z)}
    found_at = [index[sop] for f in findings for sop in f.boxes]
    middle = len(along_z) / 2
    far = max(range(len(along_z)), key=lambda k: (min(abs(k - z) for z in found_at), -abs(k - middle)))
    assert min(abs(far - z) for z in found_at) >= 5, "no slice 25 mm away from every finding"
    slice_ds = along_z[far]
    return Review(rejected, [f for f in findings if f is not rejected], str(slice_ds.SOPInstanceUID),
                  _lung_square(slice_ds, MISSED_SIDE_MM))


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc as the PACS: DICOMweb for OHIF, the Lua script that forwards readers' SRs, ctnode as "ctnode"."""
    node_port = free_port()
    server = Orthanc(tmp_path / "orthanc", modalities={"ctnode": ["CTNODE", "127.0.0.1", node_port]}, dicomweb=True)
    server.config["LuaScripts"] = [str(LUA_SCRIPT)]
    server.node_port = node_port  # type: ignore[attr-defined]
    server.start()
    yield server
    server.stop()


def _row(page: Any, series_number: int, instance_number: int) -> Any:
    """The rows of OHIF's measurement panel whose image is this one ("S: 2 I: 10")."""
    where = re.compile(rf"^S: {series_number} I: {instance_number}$")
    return page.locator('[data-cy^="measurement-table-row-"]').filter(
        has=page.locator('[data-cy="data-row-details-secondary"]', has_text=where))


def _row_action(page: Any, row: Any, action: str) -> None:
    row.hover()
    row.locator('[data-cy="actionsMenuTrigger"]').click()
    page.locator('[role="menuitem"]').filter(has=page.locator(f'[data-cy="{action}"]')).click()


_SHOW_IMAGE = """async sop => {
    const viewport = window.cornerstone.getEnabledElements()[0].viewport;
    const rendered = new Promise(resolve => viewport.element.addEventListener(
        window.cornerstone.Enums.Events.IMAGE_RENDERED, resolve, { once: true }));
    await viewport.setImageIdIndex(viewport.getImageIds().findIndex(id => id.includes(`/instances/${sop}/`)));
    viewport.render();
    await rendered;
}"""

# Page coordinates of patient-space points on the viewport's canvas.
_ON_PAGE = """corners => {
    const viewport = window.cornerstone.getEnabledElements()[0].viewport;
    const frame = viewport.canvas.getBoundingClientRect();
    return corners.map(p => { const [x, y] = viewport.worldToCanvas(p); return [frame.left + x, frame.top + y]; });
}"""

_MEASUREMENTS = """() => window.services.measurementService.getMeasurements().map(m => ({
    tool: m.toolName, sop: m.SOPInstanceUID, label: m.label || null }))"""


def _drag(page: Any, start: list[float], end: list[float], steps: int = 12) -> None:
    """A press, a move in small steps and a release, as a hand draws."""
    page.mouse.move(*start)
    page.mouse.down()
    for k in range(1, steps + 1):
        page.mouse.move(start[0] + (end[0] - start[0]) * k / steps, start[1] + (end[1] - start[1]) * k / steps)
    page.mouse.up()


def review_in_ohif(server: OhifServer, study_uid: str, ct: list[Dataset], review: Review, regions: int,
                   out: Path) -> list[str]:
    """The reader's session in OHIF, up to the saved report; returns the browser's errors."""
    by_sop = {str(ds.SOPInstanceUID): ds for ds in ct}
    series_number = int(ct[0].SeriesNumber)
    problems: list[str] = []
    with viewer_page(server, study_uid, problems) as page:
        page.get_by_text("AI findings report").first.dblclick()
        page.locator('[data-cy="yes-hydrate-btn"]').wait_for(timeout=LOAD_TIMEOUT_MS)
        page.locator('[data-cy="yes-hydrate-btn"]').click()  # "continue tracking measurements": yes
        page.wait_for_function(f"() => window.services.measurementService.getMeasurements().length >= {regions}",
                               timeout=LOAD_TIMEOUT_MS)
        page.locator('[data-cy="trackedMeasurements-btn"]').click()
        page.get_by_text(f"Measurements ({regions})").wait_for(timeout=LOAD_TIMEOUT_MS)
        page.screenshot(path=out / "feedback-tracked.png")
        tracked = page.evaluate(_MEASUREMENTS)
        assert Counter(m["sop"] for m in tracked) == Counter(
            sop for f in [review.rejected, *review.kept] for sop in f.boxes), "one measurement per region, on its slice"

        for sop in review.rejected.boxes:  # the reader deletes every measurement of the finding that is wrong
            row = _row(page, series_number, int(by_sop[sop].InstanceNumber))
            assert row.count() == 1, f"one row in OHIF's list for the rejected finding's slice {sop}"
            _row_action(page, row.first, "Delete")
        left = regions - len(review.rejected.boxes)
        page.get_by_text(f"Measurements ({left})").wait_for(timeout=LOAD_TIMEOUT_MS)
        assert Counter(m["sop"] for m in page.evaluate(_MEASUREMENTS)) == Counter(
            sop for f in review.kept for sop in f.boxes), "the kept findings' measurements are all still tracked"

        # and draws the lesion ctnode missed with the Rectangle tool, by mouse, on its slice
        page.locator('[data-cy="MeasurementTools-split-button-secondary"] button').click()
        page.locator('[role="menuitem"][data-cy="RectangleROI"]').click()
        page.evaluate(_SHOW_IMAGE, review.missed_sop)
        start, end = page.evaluate(_ON_PAGE, review.missed_corners_mm)
        _drag(page, start, end)
        page.get_by_text(f"Measurements ({left + 1})").wait_for(timeout=LOAD_TIMEOUT_MS)
        drawn = [m for m in page.evaluate(_MEASUREMENTS) if m["sop"] == review.missed_sop]
        assert [m["tool"] for m in drawn] == ["RectangleROI"], drawn
        _row_action(page, _row(page, series_number, int(by_sop[review.missed_sop].InstanceNumber)), "Rename")
        page.locator('[data-cy="dialog-input"]').fill(MISSED_LABEL)
        page.locator('[data-cy="input-dialog-save-button"] button').click()
        page.get_by_text(MISSED_LABEL).first.wait_for(timeout=LOAD_TIMEOUT_MS)
        page.screenshot(path=out / "feedback-review.png")

        # and saves the report as a new series: OHIF stores it in Orthanc by STOW-RS
        page.get_by_role("button", name="Create SR").click()
        page.locator('[role="dialog"] [role="combobox"]').click()
        page.locator('[role="option"]', has_text="Create new series").click()
        page.locator('[data-cy="dialog-input"]').fill(READER_SERIES)
        with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/dicom-web/studies"),
                                  timeout=LOAD_TIMEOUT_MS) as stow:
            page.locator('[data-cy="input-dialog-save-button"] button').click()
        assert stow.value.status == 200, f"STOW-RS answered {stow.value.status}"
        page.screenshot(path=out / "feedback-saved.png")
    return [p for p in problems if OHIF_OWN_ERROR not in p]


def reader_sr_in_orthanc(orthanc: Orthanc, study_uid: str) -> tuple[str, bytes]:
    """The reader's SR as Orthanc's DICOMweb lists it (QIDO-RS), and its bytes as Orthanc holds them."""
    series = [s for s in orthanc.get(f"/dicom-web/studies/{study_uid}/series")
              if s.get("0008103E", {}).get("Value") == [READER_SERIES]]
    assert len(series) == 1, f"{len(series)} series '{READER_SERIES}' in Orthanc"
    assert series[0]["00080060"]["Value"] == ["SR"]
    series_uid = series[0]["0020000E"]["Value"][0]
    [instance] = orthanc.get(f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances")
    sop = instance["00080018"]["Value"][0]
    [found] = orthanc.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop}})
    return sop, orthanc.get_bytes(f"/instances/{found}/file")


def regions_by_image(sr: Dataset) -> Counter[str]:
    """How many measurement groups of a TID 1500 SR have a region (SCOORD) on each image."""
    def images(item: Dataset) -> set[str]:
        found = {str(ref.ReferencedSOPInstanceUID) for ref in item.get("ReferencedSOPSequence", [])}
        for child in item.get("ContentSequence", []):
            found |= images(child)
        return found

    def scoords(item: Dataset) -> list[Dataset]:
        children = item.get("ContentSequence", [])
        return [c for c in children if c.ValueType == "SCOORD"] + [s for c in children for s in scoords(c)]

    [measurements] = [c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return Counter(sop for group in measurements.ContentSequence
                   for sop in set().union(*(images(s) for s in scoords(group))))


def wait_for_instance(db_url: str, sop: str, timeout_s: float = 60) -> Instance:
    engine = make_engine(db_url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with engine.connect() as conn:
                row = conn.execute(select(Instance).where(Instance.sop_instance_uid == sop)).first()
            if row is not None:
                return row
            assert time.monotonic() < deadline, f"ctnode did not store the reader's SR {sop} in {timeout_s} s"
            time.sleep(0.25)
    finally:
        engine.dispose()


def wait_for_feedback(config: Path, run_id: int, timeout_s: float) -> dict[str, Any]:
    """`ctnode feedback list --json` until it lists a feedback for the run; that feedback."""
    ctnode = Path(sys.executable).with_name("ctnode")
    deadline = time.monotonic() + timeout_s
    while True:
        done = subprocess.run([str(ctnode), "feedback", "list", "--json", "-c", str(config)],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        if done.returncode == 0:
            listed = [f for f in json.loads(done.stdout) if f["run_id"] == run_id]
            if listed:
                assert len(listed) == 1, f"one feedback for the run, not {listed}"
                return listed[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"`ctnode feedback list` shows no feedback for run {run_id} after {timeout_s} s "
                                 f"(exit {done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
        time.sleep(1)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_reader_review_saved_in_ohif_comes_back_through_orthanc_as_feedback(
    orthanc: Orthanc, make_node, db_url: str
) -> None:
    require_viewer()
    files = sorted(require_ct(CHEST, "series_5mm_lung_kernel").glob("*.dcm"))
    ct = [pydicom.dcmread(p) for p in files]
    study_uid = str(ct[0].StudyInstanceUID)
    node = make_node(port=orthanc.node_port, allowed=[{"ae_title": orthanc.ae_title, "host": "127.0.0.1"}],
                     sections=node_sections(orthanc))

    upload(orthanc, files)
    send_to_node(orthanc, [orthanc_study(orthanc, study_uid)])  # REST /modalities/ctnode/store
    wait_for_srs(orthanc, study_uid, 1, 240, node.log)
    found = results_in_orthanc(orthanc, study_uid)
    ctnode_sr = orthanc.get_bytes(f"/instances/{found['SR'][0]['id']}/file")
    findings = drawn_findings(pydicom.dcmread(io.BytesIO(ctnode_sr)))
    assert len(findings) >= 2, f"the shipped chest model finds {len(findings)} findings; the review needs two"
    [run] = json.loads(node.cli("runs", "list", "--json", "--study", study_uid).stdout)
    assert run["findings"] == len(findings)
    review = plan_review(ct, findings)
    regions = sum(len(f.boxes) for f in findings)

    server = OhifServer(ohif_dist(), f"http://127.0.0.1:{orthanc.http_port}").start()
    try:
        problems = review_in_ohif(server, study_uid, ct, review, regions, artifacts())
    finally:
        server.stop()

    sop, held = reader_sr_in_orthanc(orthanc, study_uid)
    (artifacts() / "reader-sr.dcm").write_bytes(held)
    assert regions_by_image(pydicom.dcmread(io.BytesIO(held))) == Counter(
        [*(sop for f in review.kept for sop in f.boxes), review.missed_sop]), \
        "the saved report holds a region on each kept finding's slices and the missed lesion's, none on the rejected"

    stored = wait_for_instance(db_url, sop)  # Orthanc's Lua script forwarded it and ctnode kept it as sent
    # Orthanc re-encodes the data set as it sends it (OHIF wrote undefined-length sequences): same elements
    assert pydicom.dcmread(node.data_dir / "store" / stored.path) == pydicom.dcmread(io.BytesIO(held))
    study = json.loads(node.cli("studies", "show", study_uid, "--json").stdout)
    assert study["instances"] == len(files) + 1, "ctnode's own SR and overlays were not sent back to it"
    assert [(s["modality"], s["series_description"], s["instances"]) for s in study["series"]
            if s["modality"] != "CT"] == [("SR", READER_SERIES, 1)]
    assert not problems, "the browser logged errors:\n" + "\n".join(problems)

    feedback = wait_for_feedback(node.config_file, run["id"], FEEDBACK_TIMEOUT_S)
    assert feedback["study_instance_uid"] == study_uid and feedback["sop_instance_uid"] == sop
    assert feedback["current"]
    assert feedback["confirmed"] + feedback["edited"] == len(findings) - 1
    assert feedback["rejected"] == 1
    assert feedback["missed"] == 1
