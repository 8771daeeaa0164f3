"""A simulated site, end to end, through a real node: studies in, readers' reviews and reports back, figures, drift.

Studies: labelled synthetic chest studies written by `ctnode synth`'s writer (``detector.synth.sets.write_set``)
over the real series of ../shared/ct, cached under var/site/studies (a rerun writes nothing). Phase 1 sends
one background mix (the Philips Brilliance 16 5 mm series of chest_lung_pet_ct_dx_A0001 twice, then the GE
LightSpeed Plus 2.5 mm series of lidc_idri_0001, over and over: with two backgrounds at 50/50 a minute's median
slice thickness flips between 2.5 and 5 mm by chance, which a first run took for drift), phase 2 another (the
GE LightSpeed16 1.25 mm series of lidc_idri_0002): a new scanner model, one kernel instead of two, thinner
slices, another HU histogram, to provoke input drift. Within a phase, studies with 1-2 inserted lesions and
studies without them alternate.

The node: `ctnode serve` (tests.support.NodeProcess) on SQLite in a temporary folder, one worker, the fast path,
one route to the shipped chest model, the HL7 listener on a free port, no delivery destination. DCMTK's storescu
sends each study (calling AE STORESCU), at most two ahead of the worker.

The scripted radiologist, for each run the node finishes (read from the node's database with the node's own
``run_record``): its truth is the study's labels/lesions.json plus the background's own labels that the node's
label readers count as targets (the Lung-PET-CT-Dx tumour, LIDC-IDRI-0001's 4-reader nodule; LIDC-IDRI-0002's
nodule, marked by 2 of 4 readers, is an ignore region by the LIDC convention, so that background's studies without
inserted lesions are negatives). A finding whose centre lies within a lesion's radius (at least 2 mm) is true:
its boxes are kept exactly (one in five true findings is resized instead: edited); the others are deleted;
each lesion no finding hit is drawn as a box around its centre on its nearest slice, sized by its diameter. The
review is saved as OHIF 3.13.2 saves it (tests.integration.reader.ohif_review) and sent to the node by C-STORE
from calling AE ORTHANC, as the PACS's Lua script forwards it; a run with nothing left to save gets no SR (OHIF
saves none). Then the signed report goes to the node's MLLP listener as ORU^R01 (python-hl7's client; the
Study Instance UID in ZDS-1), its text written from the same truth in varied wording (positive, negative, and
one positive study in six hedged as uncertain), and its ACK must be AA with MSA-2 = MSH-10.

Figures, from the node's own commands: studies received (``ctnode studies list``) and runs done; feedback_sr:
review SRs sent; matched: share of them that ``ctnode feedback list`` holds with the confirmed, edited,
rejected and missed counts the radiologist meant (mismatches printed); report_labels: lung_nodule labels of the
stored reports (``ctnode reports list``); extractor_accuracy: share of ORUs whose stored label is the one the text
was written from; site_cpm: lesion-level CPM of ``ctnode monitor --period all``; drift: ``ctnode monitor --period
minute --baseline B`` over the whole run, each alarm counted in the phase its minute lies in (phase 2 starts on a
minute boundary after phase 1's last run is done, so no minute holds both). Drift needs B baseline minutes and
judged minutes of at least 5 studies (the monitor's min_n), hence the phase lengths of the full run.

Last line: ``studies=N feedback_sr=N matched=R report_labels=N extractor_accuracy=R site_cpm=X
drift_alarm_phase1=0 drift_alarm_phase2=1`` (0/1: whether any alarm fell in that phase). ``--quick`` (CI: 4 + 3
studies, no minute alignment, baseline 1 minute) prints the same line; its minutes hold fewer studies than min_n,
so its drift fields say nothing (0/0, or 0/1 when a finding-level metric such as the mean score, whose n counts
findings, happens to be judged).

Measured on the 2-core development machine (CPU, one worker, quiet, study cache warm), 2026-12-07: the full run
(50 + 30 studies) took 6.8 min and printed ``studies=80 feedback_sr=70 matched=0.97 report_labels=80
extractor_accuracy=1.00 site_cpm=0.293 drift_alarm_phase1=0 drift_alarm_phase2=1``. An earlier run with a 50/50
phase-1 mix raised one phase-1 alarm (a minute's median slice thickness, 2.5 against 5.0 mm, z -3.55), which the
2:1 mix now in MIXES prevents. 2 of 70 reviews are recorded otherwise than meant (a missed lesion drawn where a
deleted false finding's box overlaps it is matched to that finding as an edit: OHIF keeps no tracking UID).
--quick: 1.0 min idle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from node.events import OutputKind  # noqa: E402
from tests.integration.reader import Rectangle, ohif_review, oru_r01, send_oru  # noqa: E402
from tests.support import NodeProcess, ct_data, free_port  # noqa: E402

CACHE = REPO / "var" / "site" / "studies"
MIXES = {1: ("chest_lung_pet_ct_dx_A0001", "chest_lung_pet_ct_dx_A0001", "lidc_idri_0001"), 2: ("lidc_idri_0002",)}
"""Each phase's backgrounds, in the order studies cycle through them."""
SEEDS = {1: 41000, 2: 42000}
PACS_AE = "ORTHANC"
LUNG_NODULE = "lung_nodule"
EDIT_SHARE = 0.2
UNCERTAIN_SHARE = 1 / 6
MIN_HIT_RADIUS_MM = 2.0
AHEAD = 2
"""Studies sent and not yet done, at most (the one being read and one waiting)."""


# --- the studies ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lesion:
    """A lesion the radiologist knows of (LPS mm); ``ignore``: a mark that is no target (neither kept nor drawn)."""

    centre_mm: tuple[float, float, float]
    diameter_mm: float
    source: str
    ignore: bool = False

    def hit_by(self, point_mm: Sequence[float]) -> bool:
        distance = float(np.linalg.norm(np.subtract(point_mm, self.centre_mm)))
        return distance <= max(self.diameter_mm / 2, MIN_HIT_RADIUS_MM)


@dataclass
class SiteStudy:
    """One written study of a phase: its folder, UIDs, CT files, and (read when first needed) its geometry."""

    phase: int
    folder: Path
    background: str
    study_instance_uid: str
    series_instance_uid: str
    files: list[Path]
    inserted: int
    _planes: dict[str, Any] | None = field(default=None, repr=False)
    _paths: dict[str, Path] | None = field(default=None, repr=False)
    _lesions: list[Lesion] | None = field(default=None, repr=False)

    def geometry(self) -> tuple[dict[str, Any], dict[str, Path]]:
        """(ImagePlane per SOP Instance UID, file per SOP Instance UID)."""
        if self._planes is None:
            from detector.io import read_headers
            from detector.labels.lesions import planes_from_headers

            headers = read_headers(self.files).headers
            self._planes = planes_from_headers(headers)
            self._paths = {h.sop_instance_uid: h.path for h in headers}
        assert self._paths is not None
        return self._planes, self._paths

    def lesions(self) -> list[Lesion]:
        """The inserted lesions (labels/lesions.json) and the background's own labels (labels/background)."""
        if self._lesions is None:
            from detector.labels import read_labels

            summary = json.loads((self.folder / "labels" / "lesions.json").read_text())
            found = [Lesion(tuple(x["centre_mm"]), float(x["diameter_mm"]), "inserted")  # type: ignore[arg-type]
                     for x in summary["lesions"]]
            own = sorted((self.folder / "labels" / "background").glob("*.xml"))
            if own:
                planes, _ = self.geometry()
                found += [Lesion(r.centre_mm, r.diameter_mm, f"background: {r.source}", r.ignore)
                          for r in read_labels(own, planes)]
            self._lesions = found
        return self._lesions

    @property
    def targets(self) -> list[Lesion]:
        return [lesion for lesion in self.lesions() if not lesion.ignore]


def _spread(positives: list[Path], negatives: list[Path]) -> list[Path]:
    """Negatives spread evenly among positives."""
    out: list[Path] = []
    total = len(positives) + len(negatives)
    for k in range(total):
        due = (k + 1) * len(negatives) // total > (k * len(negatives)) // total
        take_negative = negatives and (not positives or due)
        out.append(negatives.pop(0) if take_negative else positives.pop(0))
    return out


def prepare_phase(phase: int, count: int, negative_share: float, each: Callable[[], None]) -> list[SiteStudy]:
    """``count`` studies of the phase's mix, cycling through its backgrounds; written once into CACHE/lesions and
    CACHE/none (write_set keeps a folder already written)."""
    import pydicom

    from detector.synth.sets import write_set

    cycle = [MIXES[phase][k % len(MIXES[phase])] for k in range(count)]
    columns: dict[str, list[Path]] = {}
    for k, name in enumerate(dict.fromkeys(cycle)):
        n = cycle.count(name)
        negatives, seed = int(round(n * negative_share)), SEEDS[phase] + 1000 * k
        positives = write_set(ct_data() / name, CACHE / "lesions", "chest", n - negatives, 2, 0, seed,
                              each=lambda _f: each())
        controls = write_set(ct_data() / name, CACHE / "none", "chest", 0, 2, negatives, seed,
                             each=lambda _f: each())
        columns[name] = _spread(positives, controls)
    order = [(columns[name].pop(0), name) for name in cycle]
    studies = []
    for folder, name in order:
        summary = json.loads((folder / "labels" / "lesions.json").read_text())
        files = sorted(folder.glob("CT*.dcm"))
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert str(first.StudyInstanceUID) == summary["study_instance_uid"], folder
        studies.append(SiteStudy(phase, folder, name, summary["study_instance_uid"], summary["series_instance_uid"],
                                 files, len(summary["lesions"])))
    return studies


# --- the node ------------------------------------------------------------------------------------------------

def start_node(root: Path) -> NodeProcess:
    """`ctnode serve` on SQLite: one worker, fast path, the chest model for every CT series, HL7 on a free port."""
    sections = {
        "pipeline": {"workers": 1, "fast_path": True, "quiet_s": 20, "poll_interval_s": 0.5,
                     "routes": [{"model": "chest"}]},
        "delivery": {"destinations": [], "poll_interval_s": 1.0},
        "hl7": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
        "logging": {"format": "json", "level": "INFO"},
    }
    node = NodeProcess(root / "node", f"sqlite:///{root / 'node' / 'ctnode.sqlite'}", processes=1,
                       allowed=[{"ae_title": "STORESCU", "host": "127.0.0.1"},
                                {"ae_title": PACS_AE, "host": "127.0.0.1"}], sections=sections)
    return node.start()


def storescu(node: NodeProcess, files: Sequence[Path], calling_ae: str) -> None:
    """DCMTK's storescu over one association; raises with its output when it fails."""
    proc = subprocess.run(["storescu", "-aet", calling_ae, "-aec", node.ae_title, "127.0.0.1", str(node.port),
                           *map(str, files)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr[-800:]}")


def cli_json(node: NodeProcess, *args: str) -> Any:
    result = node.cli(*args, "--json")
    if result.returncode != 0:
        raise RuntimeError(f"ctnode {' '.join(args)} failed: {result.stderr[-1500:]}")
    return json.loads(result.stdout)


class Runs:
    """The node's runs as its database holds them (read with the node's own schema and record functions)."""

    def __init__(self, node: NodeProcess) -> None:
        from node.db.engine import make_engine

        self.engine = make_engine(str(node.config["database"]["url"]))

    def finished(self) -> dict[str, tuple[int, str, datetime | None]]:
        """Study Instance UID -> (run id, status, finished at) of each study's newest finished run."""
        from sqlalchemy import select

        from node.db.schema import Run

        with self.engine.connect() as conn:
            rows = conn.execute(select(Run.id, Run.study_instance_uid, Run.status, Run.finished_at)
                                .where(Run.status.in_(("done", "failed", "skipped"))).order_by(Run.id)).all()
        return {r.study_instance_uid: (r.id, r.status, r.finished_at) for r in rows}

    def record(self, run_id: int) -> dict[str, Any]:
        from node.pipeline.run_records import run_record

        record = run_record(self.engine, run_id)
        assert record is not None
        return record

    def examined(self) -> int:
        """SRs the node's feedback stage has classified."""
        from sqlalchemy import func, select

        from node.db.schema import InboundDocument

        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(InboundDocument)).scalar_one())


# --- the radiologist -----------------------------------------------------------------------------------------

@dataclass
class Intent:
    """What the radiologist meant by one review, and what the report text was written to say."""

    study_instance_uid: str
    run_id: int
    phase: int
    sop_instance_uid: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    label: str = ""
    control_id: str = ""
    ack: tuple[str, str, str] | None = None


_NODULE = ("27925004", "SCT", "Nodule")


def _ours(record: dict[str, Any]) -> dict[tuple[str, tuple[float, ...]], tuple[Any, list[Any]]]:
    """(image, polyline) -> (Finding code, Finding Sites) of each region in the run's own SR."""
    import highdicom as hd
    import pydicom

    sr_path = next((o["path"] for o in record["outputs"] if o["kind"] == OutputKind.SR), None)
    if sr_path is None:
        return {}
    sr = pydicom.dcmread(sr_path)
    out = {}
    for container in sr.ContentSequence:
        for group in getattr(container, "ContentSequence", []):
            if group.ValueType != "CONTAINER":
                continue
            finding, sites, region = None, [], None
            for item in getattr(group, "ContentSequence", []):
                code = item.ConceptNameCodeSequence[0].CodeValue
                if item.ValueType == "CODE" and code == "121071":
                    finding = hd.sr.CodedConcept.from_dataset(item.ConceptCodeSequence[0])
                elif item.ValueType == "CODE" and code == "363698007":
                    sites.append(hd.sr.FindingSite(hd.sr.CodedConcept.from_dataset(item.ConceptCodeSequence[0])))
                elif item.ValueType == "SCOORD":
                    sop = str(item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                    region = (sop, tuple(np.round(np.asarray(item.GraphicData, dtype=float), 3)))
            if region is not None:
                out[region] = (finding, sites)
    return out


def _box(centre_px: np.ndarray, half_px: tuple[float, float]) -> tuple[float, float, float, float]:
    return (float(centre_px[0] - half_px[0]), float(centre_px[1] - half_px[1]),
            float(centre_px[0] + half_px[0]), float(centre_px[1] + half_px[1]))


def review_of(study: SiteStudy, record: dict[str, Any], rng: np.random.Generator
              ) -> tuple[list[Rectangle], dict[str, int]]:
    """The rectangles the radiologist leaves, and the verdict counts they mean."""
    from pydicom.sr.coding import Code

    from node.reports.coordinates import box_polyline

    planes, _ = study.geometry()
    targets = study.targets  # a finding on a mark that is no target is deleted like any false one
    ours = _ours(record)
    rectangles: list[Rectangle] = []
    counts = dict.fromkeys(("confirmed", "edited", "rejected", "missed"), 0)
    hit: set[int] = set()
    for finding in record["findings"]:
        hits = [k for k, lesion in enumerate(targets) if lesion.hit_by(finding["centre_mm"])]
        if not hits:
            counts["rejected"] += 1
            continue
        hit.update(hits)
        edit = rng.random() < EDIT_SHARE
        counts["edited" if edit else "confirmed"] += 1
        for s in finding["slices"]:
            x1, y1, x2, y2 = s["box_px"]
            grow = 4.0 if edit else 0.0
            polyline = box_polyline((x1 - grow, y1 - grow, x2 + grow, y2 + grow))
            codes = ours.get((s["sop_instance_uid"], tuple(np.round(box_polyline(tuple(s["box_px"])), 3).ravel())))
            finding_code, sites = codes if codes else (Code(*_NODULE), [])
            rectangles.append(Rectangle(s["sop_instance_uid"], polyline, finding_code or Code(*_NODULE), sites))
    for k, lesion in enumerate(targets):
        if k in hit:
            continue
        best = None
        for uid, plane in planes.items():
            xy, distance = plane.to_pixels(np.asarray([lesion.centre_mm]))
            if best is None or abs(distance[0]) < abs(best[2]):
                best = (uid, xy[0], float(distance[0]), plane)
        if best is None or abs(best[2]) > best[3].thickness_mm / 2 + lesion.diameter_mm / 2:
            continue  # outside the stack: nothing to draw it on
        uid, centre_px, _, plane = best
        dy, dx = plane.pixel_spacing_mm
        half = (lesion.diameter_mm / 2 / dx, lesion.diameter_mm / 2 / dy)
        rectangles.append(Rectangle(uid, box_polyline(_box(centre_px, half)), comment="nodule"))
        counts["missed"] += 1
    return rectangles, counts


_SIDES = {True: "left", False: "right"}


def _lobe(study: SiteStudy, lesion: Lesion) -> str:
    """A plausible lobe from where the lesion lies in the stack (LPS: +x is the patient's left)."""
    planes, _ = study.geometry()
    zs = sorted(float(p.position_mm[2]) for p in planes.values())
    share = (lesion.centre_mm[2] - zs[0]) / max(zs[-1] - zs[0], 1.0)  # 0 at the feet end, 1 at the head end
    left = lesion.centre_mm[0] > 0
    if share > 0.6:
        return f"{_SIDES[left]} upper lobe"
    if share > 0.4 and not left:
        return "right middle lobe"
    return f"{_SIDES[left]} lower lobe"


HISTORY = ("Clinical history: cough for six weeks.", "Indication: smoker, screening.",
           "Clinical history: weight loss.", "Reason for exam: follow-up.")
OTHER = ("No pleural effusion.", "Heart size is normal.", "No mediastinal lymphadenopathy.",
         "The airways are patent.", "No pericardial effusion.")
NEGATIVE = ("No pulmonary nodule.", "Lungs are clear, no suspicious nodules or masses.",
            "No pulmonary nodules or masses.", "No suspicious pulmonary nodule is seen.",
            "The lungs are clear without nodules.")


def _positive(study: SiteStudy, lesions: list[Lesion], rng: np.random.Generator) -> list[str]:
    largest = max(lesions, key=lambda x: x.diameter_mm)
    d, lobe = largest.diameter_mm, _lobe(study, largest)
    if d >= 30:
        first = str(rng.choice([f"Spiculated mass in the {lobe}, {d:.0f} mm.",
                                f"There is a {d:.0f} mm mass in the {lobe}.",
                                f"Large lobulated mass of the {lobe} measuring {d:.0f} mm."]))
    else:
        first = str(rng.choice([f"A {d:.0f} mm nodule in the {lobe}.",
                                f"There is a {d:.0f} mm solid nodule in the {lobe}.",
                                f"Noncalcified pulmonary nodule in the {lobe}, {d:.0f} mm.",
                                f"New {d:.0f} mm nodule in the {lobe}."]))
    lines = [first]
    others = [x for x in lesions if x is not largest]
    if others:
        largest_other = max(x.diameter_mm for x in others)
        lines.append(str(rng.choice([f"{len(others)} further nodule(s), up to {largest_other:.0f} mm.",
                                     f"Additional {others[0].diameter_mm:.0f} mm nodule in the "
                                     f"{_lobe(study, others[0])}."])))
    return lines


def _uncertain(study: SiteStudy, lesions: list[Lesion], rng: np.random.Generator) -> list[str]:
    lobe = _lobe(study, max(lesions, key=lambda x: x.diameter_mm))
    return [str(rng.choice([f"Possible nodule in the {lobe}; follow-up CT is recommended.",
                            f"Ill-defined density in the {lobe}, a nodule cannot be excluded.",
                            f"Questionable small nodule in the {lobe}."]))]


def report_text(study: SiteStudy, rng: np.random.Generator) -> tuple[list[str], str]:
    """The report's lines and the lung_nodule label they are written to say."""
    lesions = study.targets
    if not lesions:
        label, findings = "negative", [str(rng.choice(NEGATIVE))]
    elif rng.random() < UNCERTAIN_SHARE:
        label, findings = "uncertain", _uncertain(study, lesions, rng)
    else:
        label, findings = "positive", _positive(study, lesions, rng)
    lines = ["CT CHEST."]
    if rng.random() < 0.5:
        lines.append(str(rng.choice(HISTORY)))
    lines += ["Findings:", *findings, *rng.choice(OTHER, size=2, replace=False).tolist()]
    lines += ["Impression:", findings[0]]
    return lines, label


class Radiologist:
    """Reviews each finished run of a sent study: the review SR by C-STORE, then the report by MLLP."""

    def __init__(self, node: NodeProcess, runs: Runs, studies: dict[str, SiteStudy], out: Path, seed: int) -> None:
        self.node, self.runs, self.studies, self.out = node, runs, studies, out
        self.rng = np.random.default_rng(seed)
        self.intents: dict[str, Intent] = {}
        self.errors: list[str] = []
        self.on_review: Callable[[], None] = lambda: None

    def review(self, uid: str, run_id: int, status: str) -> None:
        study = self.studies[uid]
        intent = Intent(uid, run_id, study.phase)
        if status == "done":
            record = self.runs.record(run_id)
            rectangles, counts = review_of(study, record, self.rng)
            intent.counts = counts
            if rectangles:
                import pydicom

                _, paths = study.geometry()
                series = [pydicom.dcmread(paths[uid_], stop_before_pixels=True)
                          for uid_ in dict.fromkeys(r.sop_instance_uid for r in rectangles)]
                reader = "unknown^unknown" if self.rng.random() < 0.7 else "Reader^Ana"
                sr = ohif_review(series, rectangles, reader=reader)
                path = self.out / f"review-{run_id}.dcm"
                sr.save_as(path, enforce_file_format=True)
                storescu(self.node, [path], PACS_AE)
                intent.sop_instance_uid = str(sr.SOPInstanceUID)
        lines, intent.label = report_text(study, self.rng)
        intent.control_id = f"SITE{run_id:06d}"
        message = oru_r01(intent.control_id, uid, lines, patient_id=f"SITE-{run_id:06d}",
                          patient_name=f"SITE^PATIENT{run_id}", accession=f"ACC{run_id:07d}")
        intent.ack = send_oru(int(self.node.config["hl7"]["port"]), message)
        if intent.ack[:2] != ("AA", intent.control_id):
            self.errors.append(f"ORU of study {uid}: ACK {intent.ack}")
        self.intents[uid] = intent
        self.on_review()

    def follow(self, stop: threading.Event) -> None:
        """Review every finished run of a sent study until ``stop`` is set and none is left."""
        while True:
            finished = self.runs.finished()
            todo = [(uid, run) for uid, run in finished.items() if uid in self.studies and uid not in self.intents]
            for uid, (run_id, status, _) in todo:
                try:
                    self.review(uid, run_id, status)
                except Exception as exc:  # one study's trouble is reported, the site goes on
                    self.errors.append(f"review of study {uid} (run {run_id}): {type(exc).__name__}: {exc}")
                    self.intents[uid] = Intent(uid, run_id, self.studies[uid].phase)
            if not todo:
                if stop.is_set():
                    return
                time.sleep(0.5)


# --- the site ------------------------------------------------------------------------------------------------

def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(at: datetime | None) -> datetime | None:
    return None if at is None else (at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at)


def send_phase(node: NodeProcess, runs: Runs, studies: list[SiteStudy], progress: Callable[[], None]) -> None:
    """Send each study, keeping at most AHEAD not done; returns when every study of the phase has finished."""
    sent: list[str] = []
    for study in studies:
        while sum(1 for uid in sent if uid not in runs.finished()) >= AHEAD:
            time.sleep(0.3)
        storescu(node, study.files, "STORESCU")
        sent.append(study.study_instance_uid)
        progress()
    deadline = time.monotonic() + 900
    while any(uid not in runs.finished() for uid in sent):
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs not finished after 900 s:\n{node.log()[-3000:]}")
        time.sleep(0.3)


def _minute(label: str) -> datetime:
    return datetime.strptime(label, "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI: 4 + 3 studies, no minute alignment (~3 min)")
    parser.add_argument("--phase1", type=int, default=50, help="studies in phase 1")
    parser.add_argument("--phase2", type=int, default=30, help="studies in phase 2")
    parser.add_argument("--baseline", type=int, default=3, help="drift baseline minutes (ctnode monitor --baseline)")
    parser.add_argument("--negatives", type=float, default=0.34, help="share of studies without inserted lesions")
    parser.add_argument("--seed", type=int, default=7, help="the radiologist's choices")
    args = parser.parse_args()
    if args.quick:
        args.phase1, args.phase2, args.baseline = 4, 3, 1

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console(stderr=True)
    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        writing = progress.add_task("studies written or cached", total=args.phase1 + args.phase2)
        phases = {p: prepare_phase(p, n, args.negatives, lambda: progress.advance(writing))
                  for p, n in ((1, args.phase1), (2, args.phase2))}
    by_uid = {s.study_instance_uid: s for p in phases.values() for s in p}
    assert len(by_uid) == args.phase1 + args.phase2, "every study is a new study"

    with tempfile.TemporaryDirectory(prefix="ctnode-site-") as tmp:
        root = Path(tmp)
        node = start_node(root)
        try:
            runs = Runs(node)
            radiologist = Radiologist(node, runs, by_uid, root, args.seed)
            stop = threading.Event()
            spans: dict[int, tuple[datetime, datetime]] = {}
            with Progress(*columns, console=console) as progress:
                reviewed = progress.add_task("studies reviewed and reported", total=len(by_uid))
                radiologist.on_review = lambda: progress.advance(reviewed)
                follower = threading.Thread(target=radiologist.follow, args=(stop,), name="radiologist")
                follower.start()
                try:
                    for phase, studies in phases.items():
                        if phase > 1 and not args.quick:  # phase 2's first minute holds no phase 1 run
                            now = _utc_now()
                            boundary = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
                            time.sleep((boundary - now).total_seconds() + 0.5)
                        begin = _utc_now()
                        sending = progress.add_task(f"phase {phase}: studies sent", total=len(studies))
                        send_phase(node, runs, studies, lambda t=sending: progress.advance(t))
                        ends = [_aware(runs.finished()[s.study_instance_uid][2]) for s in studies]
                        spans[phase] = (begin, max(e for e in ends if e is not None))
                finally:
                    stop.set()
                    follower.join()
                sent_srs = {i.sop_instance_uid for i in radiologist.intents.values() if i.sop_instance_uid}
                deadline = time.monotonic() + 300
                while runs.examined() < len(sent_srs) and time.monotonic() < deadline:
                    time.sleep(0.5)
            figures = site_figures(node, radiologist, spans, args.baseline, console)
        finally:
            node.stop()

    elapsed = time.monotonic() - started
    table = Table("phase", "mix", "studies", "from", "to (last run done)", title="simulated site")
    for phase, (begin, end) in spans.items():
        table.add_row(str(phase), " + ".join(dict.fromkeys(MIXES[phase])), str(len(phases[phase])), f"{begin:%H:%M:%S}",
                      f"{end:%H:%M:%S}")
    console.print(table)
    for error in radiologist.errors:
        console.print(f"[red]radiologist: {error}[/red]")
    console.print(f"took {elapsed / 60:.1f} min")
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


def site_figures(node: NodeProcess, radiologist: Radiologist, spans: dict[int, tuple[datetime, datetime]],
                 baseline: int, console: Any) -> dict[str, Any]:
    """The figures of the last line, each from the node's own commands, with the mismatches printed."""
    intents = radiologist.intents
    studies = cli_json(node, "studies", "list")
    received = [s for s in studies if s.get("study_instance_uid") in radiologist.studies]
    console.print(f"studies received {len(received)} of {len(radiologist.studies)} sent; runs done "
                  f"{sum(1 for i in intents.values() if i.counts)}; ORUs acknowledged AA with their MSA-2: "
                  f"{sum(1 for i in intents.values() if i.ack and i.ack[:2] == ('AA', i.control_id))} "
                  f"of {len(intents)}")

    feedback = {f["sop_instance_uid"]: f for f in cli_json(node, "feedback", "list", "--limit", "100000")}
    sent = [i for i in intents.values() if i.sop_instance_uid]
    matched = 0
    for intent in sent:
        got = feedback.get(intent.sop_instance_uid)
        want = {k: intent.counts[k] for k in ("confirmed", "edited", "rejected", "missed")}
        have = {k: got[k] for k in want} if got else None
        if have == want and got["run_id"] == intent.run_id:
            matched += 1
        else:
            console.print(f"[yellow]feedback mismatch[/yellow] run {intent.run_id}: meant {want}, node recorded "
                          f"{have if have is not None else 'nothing'}")

    reports = cli_json(node, "reports", "list", "--limit", "100000")
    by_control = {r.get("control_id"): r for r in reports}
    labels = correct = 0
    for intent in intents.values():
        stored = (by_control.get(intent.control_id) or {}).get("labels", {}).get(LUNG_NODULE)
        labels += stored is not None
        if stored == intent.label:
            correct += 1
        elif intent.control_id:
            console.print(f"[yellow]report label[/yellow] {intent.control_id}: written {intent.label}, "
                          f"stored {stored}")

    since = min(b for b, _ in spans.values()).replace(second=0, microsecond=0)
    until = _utc_now().replace(microsecond=0) + timedelta(seconds=1)
    window = ("--since", f"{since:%Y-%m-%dT%H:%M:%S}", "--until", f"{until:%Y-%m-%dT%H:%M:%S}")
    whole = cli_json(node, "monitor", "--period", "all", *window)
    lesion = next((f["lesion_level"] for f in whole["figures"] if f.get("lesion_level")), None)
    cpm = lesion["cpm"]["value"] if lesion else float("nan")
    drift = cli_json(node, "monitor", "--period", "minute", "--baseline", str(baseline), *window)
    fired = {1: 0, 2: 0}
    phase2_start = spans[2][0].replace(second=0, microsecond=0) if 2 in spans else until
    for alarm in drift["drift_alarms"]:
        phase = 2 if _minute(alarm["period"]) >= phase2_start else 1
        fired[phase] += 1
        console.print(f"drift alarm, phase {phase}: {alarm['metric']} in {alarm['period']}: {alarm['value']} "
                      f"against {alarm['baseline']} (z {alarm['z']}, n {alarm['n']}; {', '.join(alarm['rules'])})")
    per_minute = [(f["period"], f["studies"]) for f in drift["figures"]]
    console.print("studies per minute: " + ", ".join(f"{p[-5:]} {n}" for p, n in per_minute))
    return {"studies": len(received), "feedback_sr": len(sent),
            "matched": f"{matched / len(sent):.2f}" if sent else "nan",
            "report_labels": labels, "extractor_accuracy": f"{correct / len(intents):.2f}" if intents else "nan",
            "site_cpm": f"{cpm:.3f}", "drift_alarm_phase1": int(fired[1] > 0), "drift_alarm_phase2": int(fired[2] > 0)}


if __name__ == "__main__":
    main()
