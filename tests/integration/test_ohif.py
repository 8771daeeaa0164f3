"""What a radiologist sees: ctnode's SR and overlays in OHIF (the pinned prebuilt viewer) over Orthanc's DICOMweb,
in a real headless Chromium. Every image region of every finding is drawn on its own slice, tracking loads one
measurement per region, the overlay series renders, and the browser logs no error, nor a warning that carries one
(OHIF logs a measurement group it cannot hydrate as a warning).

Screenshots are kept under CTNODE_TEST_ARTIFACTS (default var/test-artifacts)/ohif.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from detector.findings import Finding
from node.reports import (
    AlgorithmIdentity,
    OutputObject,
    ReportOptions,
    report_stage,
)
from node.reports.captions import key_slice
from node.reports.render import BANNER_RGB
from tests.integration.ohif import (
    LOAD_TIMEOUT_MS,
    OhifServer,
    ohif_dist,
    render_when_loaded,
    require_viewer,
    viewer_page,
)
from tests.integration.orthanc import Orthanc
from tests.node.reports.conftest import CHEST, LUNG, NEOPLASM, finding_on, run_on
from tests.support import REPO, imaging_measurements, require_ct

pytestmark = pytest.mark.integration

_SOP_IN_IMAGE_ID = re.compile(r"/instances/([0-9.]+)/frames/")


def artifacts() -> Path:
    folder = Path(os.environ.get("CTNODE_TEST_ARTIFACTS", REPO / "var" / "test-artifacts")) / "ohif"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def chest() -> tuple[list[Path], list[Dataset], list[Finding]]:
    """The chest series' files and headers, and two findings on it: the radiologists' tumour boxes on their 11
    slices, and a smaller finding on two other slices."""
    folder = require_ct(CHEST, "series_5mm_lung_kernel")
    files = sorted(folder.glob("*.dcm"))
    series = [pydicom.dcmread(p) for p in files]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series}
    annotated = []
    for xml in require_ct(CHEST, "annotations").glob("*.xml"):
        box = ET.parse(xml).getroot().find("object/bndbox")
        assert box is not None
        annotated.append((by_uid[xml.stem], tuple(float(box.findtext(k, "")) for k in ("xmin", "ymin", "xmax", "ymax"))))
    annotated.sort(key=lambda a: float(a[0].ImagePositionPatient[2]))
    tumour = finding_on([a[0] for a in annotated], [a[1] for a in annotated], 0.91, "tumour", NEOPLASM, LUNG, "lesion A")
    along_z = sorted(series, key=lambda ds: float(ds.ImagePositionPatient[2]))
    nodule = finding_on(along_z[40:42], [(100.0, 120.0, 130.0, 150.0), (102.0, 121.0, 128.0, 149.0)], 0.42,
                        "nodule", NEOPLASM, LUNG)
    return files, series, [tumour, nodule]


@pytest.fixture(scope="module")
def viewer(chest: tuple[list[Path], list[Dataset], list[Finding]], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[OhifServer, list[OutputObject]]]:
    """Orthanc (DICOMweb) holding the chest series and ctnode's SR and overlays, and OHIF served in front of it."""
    require_viewer()
    files, series, findings = chest
    work = tmp_path_factory.mktemp("ohif")
    algorithm = AlgorithmIdentity("ctnode-chest", "0.2.0", "ab" * 32)
    _, written = report_stage(run_on("ohif-check", series, findings, algorithm), ReportOptions(), work / "objects")
    orthanc = Orthanc(work / "orthanc", dicomweb=True).start()
    server = None
    try:
        for path in [*files, *(w.path for w in written)]:
            orthanc.upload(path)
        server = OhifServer(ohif_dist(), f"http://127.0.0.1:{orthanc.http_port}").start()
        yield server, written
    finally:
        if server is not None:
            server.stop()
        orthanc.stop()


# After moving the viewport to one image: wait until cornerstone says the annotations of THAT image were drawn,
# then report the image's SOP Instance UID and the annotation UIDs drawn in the viewport's SVG layer (an image
# that never renders fails the test instead of hanging it).
_DRAWN_ON_EACH_IMAGE = """async () => {
    const tools = window.cornerstoneTools;
    const viewport = window.cornerstone.getEnabledElements()[0].viewport;
    const drawn = {};
    const ids = viewport.getImageIds();
    for (let i = 0; i < ids.length; i++) {
        const rendered = Promise.race([
            new Promise(resolve => viewport.element.addEventListener(
                tools.Enums.Events.ANNOTATION_RENDERED, resolve, { once: true })),
            new Promise((_, reject) => setTimeout(() => reject(new Error(`image ${i} never rendered`)), 60000)),
        ]);
        await viewport.setImageIdIndex(i);
        viewport.render();
        await rendered;
        const sop = ids[i].match(/\\/instances\\/([0-9.]+)\\/frames\\//)[1];
        const uids = Array.from(viewport.element.querySelectorAll('svg [data-annotation-uid]'))
            .map(node => node.getAttribute('data-annotation-uid'));
        drawn[sop] = Array.from(new Set(uids));
    }
    return drawn;
}"""


def _region_uids(sr: Dataset) -> dict[str, str]:
    """Tracking UID -> referenced image of every image region group (a group with a 2D region) of the SR."""
    regions = {}
    for group in imaging_measurements(sr).ContentSequence:
        scoords = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
        if scoords:
            uid = next(str(i.UID) for i in group.ContentSequence if i.ValueType == "UIDREF")
            regions[uid] = str(scoords[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    return regions


def test_ohif_draws_and_tracks_every_region_and_shows_the_overlays(
    viewer: tuple[OhifServer, list[OutputObject]], chest: tuple[list[Path], list[Dataset], list[Finding]]
) -> None:
    server, written = viewer
    _, series, findings = chest
    sr = pydicom.dcmread(written[0].path)
    regions = _region_uids(sr)
    assert len(regions) == sum(len(f.slices) for f in findings) == 13
    out = artifacts()
    problems: list[str] = []
    with viewer_page(server, series[0].StudyInstanceUID, problems) as page:
        page.get_by_text("AI findings report").first.dblclick()  # the SR's thumbnail: its regions on the CT
        page.locator('[data-cy="yes-hydrate-btn"]').wait_for(timeout=LOAD_TIMEOUT_MS)
        page.screenshot(path=out / "sr-regions.png")
        drawn = page.evaluate(_DRAWN_ON_EACH_IMAGE)
        on_image = {sop: set(uids) for sop, uids in drawn.items() if uids}
        expected: dict[str, set[str]] = {}
        for uid, sop in regions.items():
            expected.setdefault(sop, set()).add(uid)
        assert on_image == expected, "each slice draws exactly the SR's image regions on it"
        labels = page.evaluate("() => window.cornerstoneTools.annotation.state.getAllAnnotations()"
                               ".filter(a => a.metadata.toolName === 'DICOMSRDisplay').map(a => a.data.labels)")
        scores = sorted(entry["value"] for entry_list in labels for entry in entry_list
                        if entry["label"] == "Certainty of Finding")
        assert scores == sorted(f"{100 * f.score:.2f} %" for f in findings), "each finding's certainty shown once"
        assert all({"label": "363698007", "value": "Lung"} in entry_list for entry_list in labels)

        key = key_slice(findings[0]).sop_instance_uid  # back to the tumour's key slice for the screenshots
        page.evaluate("async sop => { const v = window.cornerstone.getEnabledElements()[0].viewport;"
                      " await v.setImageIdIndex(v.getImageIds().findIndex(id => id.includes(`/instances/${sop}/`))); }",
                      key)
        page.locator('[data-cy="yes-hydrate-btn"]').click()  # "continue tracking measurements": yes
        page.wait_for_function(f"() => window.services.measurementService.getMeasurements().length >= {len(regions)}",
                               timeout=LOAD_TIMEOUT_MS)
        measurements = page.evaluate("() => window.services.measurementService.getMeasurements().map(m => ["
                                     "m.toolName, m.referencedImageId, m.finding && m.finding.text,"
                                     " (m.findingSites || []).map(site => site.text)])")
        page.locator('[data-cy="trackedMeasurements-btn"]').click()
        page.get_by_text(f"Measurements ({len(regions)})").wait_for(timeout=LOAD_TIMEOUT_MS)
        page.screenshot(path=out / "sr-tracked.png")
        assert len(measurements) == len(regions)
        assert {tool for tool, *_ in measurements} == {"RectangleROI"}
        assert all(finding == "Neoplasm" and sites == ["Lung"] for _, _, finding, sites in measurements), \
            "each tracked measurement is labelled with its finding type and site"
        per_image = Counter(_SOP_IN_IMAGE_ID.search(image_id).group(1) for _, image_id, *_ in measurements)
        assert per_image == Counter(regions.values()), "one tracked measurement per region, on its slice"

        page.get_by_text("AI findings overlay").first.dblclick()
        render_when_loaded(page, images=3)
        page.locator('[data-cy="viewport-pane"]').first.screenshot(path=out / "sc-overlay.png")

    shown = np.asarray(Image.open(out / "sc-overlay.png").convert("RGB"), dtype=int)
    banner = np.all(np.abs(shown - np.array(BANNER_RGB)) < 40, axis=-1)
    assert banner.sum() > 2000, "the overlay's red 'not for diagnosis' banner is on screen"
    # OHIF 3.13's listener for a failed image load throws this itself ("handler is not a function": its bug, not
    # a failure of ours); seen once in CI under load, on a run where everything asserted above rendered.
    problems = [p for p in problems if "IMAGE_LOAD_ERROR TypeError: handler is not a function" not in p]
    assert not problems, "the browser logged errors:\n" + "\n".join(problems)


_SHOW_AND_DRAW = """async sop => {
    const viewport = window.cornerstone.getEnabledElements()[0].viewport;
    const rendered = Promise.race([
        new Promise(resolve => viewport.element.addEventListener(
            window.cornerstoneTools.Enums.Events.ANNOTATION_RENDERED, resolve, { once: true })),
        new Promise((_, reject) => setTimeout(() => reject(new Error(`image ${sop} never rendered`)), 60000)),
    ]);
    await viewport.setImageIdIndex(viewport.getImageIds().findIndex(id => id.includes(`/instances/${sop}/`)));
    viewport.render();
    await rendered;
}"""


def test_ohif_tracks_a_lone_finding_on_one_slice(
    chest: tuple[list[Path], list[Dataset], list[Finding]], tmp_path: Path
) -> None:
    """One finding on one slice, the report's only image region: OHIF shows its certainty on its box, tracks the
    box, and hydrating the SR logs no error (every group of the SR hydrates or is passed by cleanly)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    require_viewer()
    files, series, _ = chest
    image = sorted(series, key=lambda ds: float(ds.ImagePositionPatient[2]))[30]
    lone = finding_on([image], [(200.0, 290.0, 230.0, 320.0)], 0.8, "nodule", NEOPLASM, LUNG)
    _, written = report_stage(run_on("ohif-lone", series, [lone], AlgorithmIdentity("ctnode-chest", "0.2.0", "ab" * 32)),
                              ReportOptions(), tmp_path / "objects")
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    server = None
    problems: list[str] = []
    try:
        for path in [*files, *(w.path for w in written)]:
            orthanc.upload(path)
        server = OhifServer(ohif_dist(), f"http://127.0.0.1:{orthanc.http_port}").start()
        with viewer_page(server, series[0].StudyInstanceUID, problems) as page:
            page.get_by_text("AI findings report").first.dblclick()
            page.locator('[data-cy="yes-hydrate-btn"]').wait_for(timeout=LOAD_TIMEOUT_MS)
            page.evaluate(_SHOW_AND_DRAW, str(image.SOPInstanceUID))
            labels = page.evaluate("() => window.cornerstoneTools.annotation.state.getAllAnnotations()"
                                   ".filter(a => a.metadata.toolName === 'DICOMSRDisplay').map(a => a.data.labels)")
            page.locator('[data-cy="yes-hydrate-btn"]').click()
            try:  # a group OHIF cannot hydrate is logged and left out: wait for the box, not for ever
                page.wait_for_function("() => window.services.measurementService.getMeasurements().length >= 1",
                                       timeout=60_000)
            except PlaywrightTimeout:
                pass
            measurements = page.evaluate("() => window.services.measurementService.getMeasurements()"
                                         ".map(m => [m.toolName, m.SOPInstanceUID])")
    finally:
        if server is not None:
            server.stop()
        orthanc.stop()
    assert not problems, "the browser logged errors:\n" + "\n".join(problems)
    assert measurements == [["RectangleROI", str(image.SOPInstanceUID)]], "the lone box is tracked on its slice"
    assert [entry["value"] for entry_list in labels for entry in entry_list
            if entry["label"] == "Certainty of Finding"] == ["80.00 %"], "its certainty shown once"


def test_readme_screenshot_is_committed() -> None:
    assert (REPO / "docs" / "ohif-sr.png").exists() and "docs/ohif-sr.png" in (REPO / "README.md").read_text()


def test_ohif_shows_that_a_study_was_not_analysed(tmp_path: Path) -> None:
    """A study the model refused: OHIF lists the not-analysed SR beside the CT and shows its page, NOT ANALYSED
    and the reason, under the red banner."""
    from node.reports import build_not_analysed_objects, write_report_objects

    require_viewer()
    files = sorted(require_ct("head_ge_patient").glob("*.dcm"))
    series = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    objects = build_not_analysed_objects(
        run_on("ohif-not-analysed", series, (), AlgorithmIdentity("ctnode-head", "0.2.0", "ab" * 32)),
        ReportOptions(), "refused by the model's domain gate: contrast-enhanced (Contrast/Bolus Agent IOHEXOL)")
    written = write_report_objects(objects, tmp_path / "objects")
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    server = None
    problems: list[str] = []
    out = artifacts()
    try:
        for path in [*files, *(w.path for w in written)]:
            orthanc.upload(path)
        server = OhifServer(ohif_dist(), f"http://127.0.0.1:{orthanc.http_port}").start()
        with viewer_page(server, series[0].StudyInstanceUID, problems) as page:
            descriptions = page.evaluate("() => window.services.displaySetService.getActiveDisplaySets()"
                                         ".map(d => [d.Modality, d.SeriesDescription])")
            assert ["SR", "AI result: NOT ANALYSED (not for diagnosis)"] in descriptions, descriptions
            page.get_by_text("AI result: NOT ANALYSED (page)").first.dblclick()
            render_when_loaded(page, images=1)
            page.locator('[data-cy="viewport-pane"]').first.screenshot(path=out / "not-analysed.png")
    finally:
        if server is not None:
            server.stop()
        orthanc.stop()
    shown = np.asarray(Image.open(out / "not-analysed.png").convert("RGB"), dtype=int)
    banner = np.all(np.abs(shown - np.array(BANNER_RGB)) < 40, axis=-1)
    assert banner.sum() > 2000, "the page's red banner is on screen"
    text = np.all(shown > 180, axis=-1) & ~banner
    assert text.sum() > 500, "the page's text (NOT ANALYSED and the reason) is on screen"
    assert not problems, "the browser logged errors:\n" + "\n".join(problems)
