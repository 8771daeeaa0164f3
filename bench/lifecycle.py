"""A model's life at a simulated site: live model, readers' reviews, a candidate fine-tuned on the site, shadow,
comparison, promotion, rollback, all through a real node.

The site (bench/site.py's machinery: `ctnode serve` on SQLite, DCMTK's storescu, the scripted radiologist returning
OHIF-style review SRs and ORU^R01 reports): labelled synthetic chest studies over the two LIDC-IDRI series of
../shared/ct (GE LightSpeed Plus 2.5 mm and GE LightSpeed16 1.25 mm), which the shipped chest model saw little of
(it learnt on the Philips Lung-PET-CT-Dx series; lidc_idri_0002 only chose its threshold). Each synthetic study has
its own Patient ID (SYN-<hash>), so the patient split is a study split here, and studies over one background share
its anatomy (the held-out studies are new lesions in scans the candidate has seen other lesions in).

1. Phase A (live model alone): ``--site-studies`` studies through the node's route to the shipped chest model; the
   radiologist reviews every run.
2. `ctnode train -c site.yaml` (``site: {config: the node's YAML}``): the node's reviewed studies, split by
   patient (train / validation / test, seeded), the shipped card fine-tuned on the train part (its threshold on the
   validation part, its card figures on the test part); timed. The candidate's operating point is the lowest
   threshold with at most ``--fp-per-scan`` 8 false positives per validation scan (the training default is 1): the
   shipped model runs at about 10 FP/scan here (its 10-finding cap; the LIDC backgrounds are not what it learnt
   on), and a node records a run's findings down to its card's threshold only, so a candidate at 1 FP/scan would
   be compared at an operating point far from the live one's, and its FROC (hence its CPM) would stop at 1 FP/scan.
3. Phase B (shadow): the node restarts with the candidate as a shadow of the route ``chest`` (a route's shadows
   are configuration) and the bench site's ``promotion`` rule (below); ``--shadow-studies`` new studies arrive, the
   live run is reviewed as before (the shadow runs are never delivered). These studies arrived after training,
   never trained on: the held-out studies of the comparison.
4. Comparison: ``ctnode models compare chest CANDIDATE --route chest --since PHASE_B --json``, as a site runs it:
   on phase B's studies both read, the reviews' lesions as the truth of both, CPM each and the paired CPM
   difference with its paired bootstrap 95% interval over studies (2000 rounds), sensitivity and FP/scan at each
   card's operating point; kept in the node's database. Shadow cost: the median live time to result (last image
   -> run finished, bench/shadow.py's measure) in phase B minus phase A.
5. Promotion and rollback through the CLI while the node keeps running (its pid is checked): ``ctnode models
   promote CANDIDATE --route chest --reason ...`` on that comparison, one new study whose live run must be the
   candidate's; ``ctnode models rollback --route chest``, one new study whose live run must be the shipped
   model's. The workers pick the route up between runs; no restart.

The bench site's promotion rule, set explicitly in its node configuration: the product's margins (non-inferior
lesion sensitivity at each card's operating point, paired 95% CI low end >= -0.05; FP/scan CI high end <= +0.5;
no CPM gain required) with ``min_studies`` the product's 20, or every held-out study in a run with fewer than 20
(``--quick``: 3). A candidate that does not meet it is refused and the bench prints promoted=0 (and rolled_back=0:
there is nothing to roll back).

Last line: ``site_studies=N cpm_live=X cpm_candidate=Y paired_delta=D ci_low=L ci_high=H shadow_delay_live_s=S
promoted=1 rolled_back=1``. ``--quick``: 6 + 3 studies, 10 iterations (figures say nothing; ~4 min estimated
on an idle 2-core machine).

Measured on the shared 2-core development machine while other engineers' benches and tests ran (load 8-10; a live
run took 60-140 s instead of ~7 s, a training iteration 13.6 s instead of ~1.2 s): ``--quick`` took 25.3 min
(phase A 554 s, ctnode train 499 s, phase B 221 s, comparison 92 s, promotion and rollback 95 s) and printed
``site_studies=9 cpm_live=0.071 cpm_candidate=0.071 paired_delta=0.000 ci_low=0.000 ci_high=0.000
shadow_delay_live_s=-37.29 promoted=1 rolled_back=1`` (3 held-out studies, 10 iterations: no difference expected;
the negative delay is the load changing between phases, not a shadow speeding anything up). A reduced run
(``--site-studies 12 --shadow-studies 8 --iterations 80 --pool 240``, load ~4.5: 464 ms/iteration) took 19.6 min
(phase A 323 s, train 317 s, phase B 295 s, comparison 189 s, promotion and rollback 32 s): ``site_studies=20
cpm_live=0.190 cpm_candidate=0.238 paired_delta=0.048 ci_low=-0.100 ci_high=0.095 shadow_delay_live_s=-21.60
promoted=1 rolled_back=1`` (7 held-out studies, 12 lesions: the target ci_low > 0 is missed at this size). The full
run (48 + 24 studies, 500 iterations) was not measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.site import (  # noqa: E402
    CACHE,
    Radiologist,
    Runs,
    SiteStudy,
    _spread,
    cli_json,
    send_phase,
    start_node,
)
from tests.support import NodeProcess, ct_data  # noqa: E402

BACKGROUNDS = ("lidc_idri_0001", "lidc_idri_0002")
SEED = 61000
CANDIDATE = "ctnode-chest-site"
ROUTE = "chest"


def prepare(count: int, negative_share: float, offset: int) -> list[SiteStudy]:
    """``count`` studies alternating over BACKGROUNDS (``offset`` picks seeds apart from other phases), cached."""
    import pydicom

    from detector.synth.sets import write_set

    columns: dict[str, list[Path]] = {}
    cycle = [BACKGROUNDS[k % len(BACKGROUNDS)] for k in range(count)]
    for k, name in enumerate(dict.fromkeys(cycle)):
        n = cycle.count(name)
        negatives, seed = int(round(n * negative_share)), SEED + 10000 * offset + 1000 * k
        positives = write_set(ct_data() / name, CACHE / "lesions", "chest", n - negatives, 2, 0, seed)
        controls = write_set(ct_data() / name, CACHE / "none", "chest", 0, 2, negatives, seed)
        columns[name] = _spread(positives, controls)
    studies = []
    for name in cycle:
        folder = columns[name].pop(0)
        summary = json.loads((folder / "labels" / "lesions.json").read_text())
        files = sorted(folder.glob("CT*.dcm"))
        assert str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID) == \
            summary["study_instance_uid"], folder
        studies.append(SiteStudy(offset + 1, folder, name, summary["study_instance_uid"],
                                 summary["series_instance_uid"], files, len(summary["lesions"])))
    return studies


class LiveRuns(Runs):
    """The node's live runs only: the radiologist reviews what the clinic would see, never a shadow run."""

    def finished(self) -> dict[str, tuple[int, str, datetime | None]]:
        from sqlalchemy import select

        from node.db.schema import Run

        with self.engine.connect() as conn:
            rows = conn.execute(select(Run.id, Run.study_instance_uid, Run.status, Run.finished_at)
                                .where(Run.status.in_(("done", "failed", "skipped")), Run.mode != "shadow")
                                .order_by(Run.id)).all()
        return {r.study_instance_uid: (r.id, r.status, r.finished_at) for r in rows}


def live_latencies(runs: Runs, uids: set[str]) -> list[float]:
    from sqlalchemy import select

    from node.db.schema import Run

    with runs.engine.connect() as conn:
        rows = conn.execute(select(Run.study_instance_uid, Run.last_instance_at, Run.finished_at)
                            .where(Run.mode == "live", Run.status == "done")).all()
    return [(r.finished_at - r.last_instance_at).total_seconds() for r in rows
            if r.study_instance_uid in uids and r.last_instance_at]


def site_phase(node: NodeProcess, runs: Runs, studies: list[SiteStudy], out: Path, seed: int, console: Any) -> None:
    """Send ``studies``; the radiologist reviews every live run; returns when the node has examined every SR."""
    by_uid = {s.study_instance_uid: s for s in studies}
    examined_before = runs.examined()
    radiologist = Radiologist(node, runs, by_uid, out, seed)
    stop = threading.Event()
    follower = threading.Thread(target=radiologist.follow, args=(stop,), name="radiologist")
    follower.start()
    try:
        send_phase(node, runs, studies, lambda: None)
    finally:
        stop.set()
        follower.join()
    sent = {i.sop_instance_uid for i in radiologist.intents.values() if i.sop_instance_uid}
    deadline = time.monotonic() + 300
    while runs.examined() < examined_before + len(sent) and time.monotonic() < deadline:
        time.sleep(0.5)
    for error in radiologist.errors:
        console.print(f"[red]radiologist: {error}[/red]")


def restart(node: NodeProcess, route: dict[str, Any]) -> None:
    node.stop()
    node.config["pipeline"]["routes"] = [route]
    node.start()


def ctnode(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """A ctnode command against the running node's configuration, as the site's operator types it."""
    return subprocess.run([sys.executable, "-m", "node", *args, "--config", str(node.config_file)],
                          capture_output=True, text=True, cwd=REPO, timeout=900, check=False)


def promotion_rule(shadow_studies: int) -> dict[str, Any]:
    """The bench site's `promotion` section: the product's margins (non-inferior sensitivity at each card's
    operating point within 0.05, FP/scan rising by at most 0.5 per scan, both on the paired CIs), with
    ``min_studies`` the product's 20 or, in a smaller run, every held-out study (the site has no more)."""
    return {"min_studies": min(20, shadow_studies), "sensitivity_margin": 0.05, "max_fp_per_scan_increase": 0.5,
            "require_cpm_gain": False}


def live_model_of(runs: Runs, uid: str) -> str | None:
    from sqlalchemy import select

    from node.db.schema import Run

    with runs.engine.connect() as conn:
        return conn.execute(select(Run.model_name).where(Run.study_instance_uid == uid, Run.mode == "live",
                                                         Run.status == "done").order_by(Run.id.desc())).scalar()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI: 6 + 3 studies, 10 iterations (~3 min)")
    parser.add_argument("--site-studies", type=int, default=48, help="phase A: studies the live model reads")
    parser.add_argument("--shadow-studies", type=int, default=24, help="phase B: new studies, live + shadow")
    parser.add_argument("--iterations", type=int, default=500, help="fine-tuning iterations")
    parser.add_argument("--budget-s", type=float, default=1200.0, help="fine-tuning wall-clock budget")
    parser.add_argument("--pool", type=int, default=600, help="fine-tuning samples")
    parser.add_argument("--fp-per-scan", type=float, default=8.0,
                        help="the candidate's operating point on the validation studies (FP/scan)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training and evaluation")
    parser.add_argument("--negatives", type=float, default=0.25, help="share of studies without inserted lesions")
    parser.add_argument("--seed", type=int, default=11, help="the radiologist's choices")
    args = parser.parse_args()
    if args.quick:
        args.site_studies, args.shadow_studies, args.iterations, args.pool = 6, 3, 10, 40

    from rich.console import Console

    from detector.registry import load_card

    console = Console(stderr=True)
    started = time.monotonic()
    phases = {"A": prepare(args.site_studies, args.negatives, 0), "B": prepare(args.shadow_studies, args.negatives, 1),
              "C": prepare(2, 0.0, 2)}
    console.print(f"studies written or cached: {time.monotonic() - started:.0f} s")
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ctnode-lifecycle-") as tmp:
        root = Path(tmp)
        node = start_node(root)
        try:
            runs = LiveRuns(node)
            tick = time.monotonic()
            site_phase(node, runs, phases["A"], root, args.seed, console)
            timings["phase_a_s"] = time.monotonic() - tick

            config = {"name": CANDIDATE, "version": "0.2.0-site.1", "target": "chest",
                      "data": {"pool": args.pool, "negatives": 0.25, "seed": 0},
                      "evaluation": {"fp_per_scan": args.fp_per_scan},
                      "schedule": {"iterations": args.iterations, "budget_s": args.budget_s, "batch": 8,
                                   "crop_px": 192, "lr": 2e-4, "threads": args.threads, "checkpoint_every_s": 600},
                      "site": {"config": str(node.config_file), "fractions": [0.7, 0.15, 0.15], "split_seed": 0}}
            (root / "site.yaml").write_text(yaml.safe_dump(config))
            tick = time.monotonic()
            trained = subprocess.run([sys.executable, "-m", "node", "train", "-c", str(root / "site.yaml"),
                                      "-o", str(root / "candidate")], capture_output=True, text=True, cwd=REPO,
                                     check=False)
            timings["train_s"] = time.monotonic() - tick
            if trained.returncode != 0:
                raise RuntimeError(f"ctnode train failed ({trained.returncode}): {trained.stderr[-3000:]}")
            console.print(trained.stdout.strip(), markup=False)
            for line in trained.stderr.splitlines():
                if line.startswith(("site ", "operating threshold", "no validation", "loss", "iteration")) or \
                        " iterations (" in line:
                    console.print(line, markup=False)
            card_file = root / "candidate" / f"{CANDIDATE}.json"
            card = load_card(card_file)
            assert card.lineage is not None
            trained_uids = {s.study_instance_uid for s in card.training.studies} if card.training else set()
            assert not set(card.lineage.role("test")) & trained_uids, "the test split was never trained on"
            console.print(f"candidate {card.name} {card.version}: parent {card.lineage.parent_name} "
                          f"{card.lineage.parent_version}, site data {card.lineage.site_data_sha256[:12]}, split "
                          + ", ".join(f"{r} {len(u)}" for r, u in card.lineage.split))

            # the candidate enters as a shadow of the route (a route's shadows are configuration); the site's
            # promotion rule is set with it
            node.config["promotion"] = promotion_rule(args.shadow_studies)
            restart(node, {"model": "chest", "name": ROUTE, "shadows": [str(card_file)]})
            shadow_start = datetime.now(timezone.utc).replace(microsecond=0)
            tick = time.monotonic()
            site_phase(node, runs, phases["B"], root, args.seed + 1, console)
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:  # the last shadow runs finish after the live ones
                from sqlalchemy import func, select

                from node.db.schema import Run

                with runs.engine.connect() as conn:
                    pending = conn.scalar(select(func.count()).select_from(Run).where(
                        Run.mode == "shadow", Run.finished_at.is_(None)))
                if not pending:
                    break
                time.sleep(1.0)
            timings["phase_b_s"] = time.monotonic() - tick
            shadow_runs = [r for r in cli_json(node, "runs", "list", "--limit", "100000")
                           if r.get("mode") == "shadow" and r.get("status") == "done"]

            alone = live_latencies(runs, {s.study_instance_uid for s in phases["A"]})
            with_shadow = live_latencies(runs, {s.study_instance_uid for s in phases["B"]})
            delay = statistics.median(with_shadow) - statistics.median(alone)
            console.print(f"live time to result, median: alone {statistics.median(alone):.2f} s "
                          f"({len(alone)} runs), with the shadow {statistics.median(with_shadow):.2f} s "
                          f"({len(with_shadow)} runs; {len(shadow_runs)} shadow runs done): ratio "
                          f"{statistics.median(with_shadow) / statistics.median(alone):.3f}")

            # the comparison, promotion and rollback as the site runs them: ctnode models, the node left running
            tick = time.monotonic()
            serving = node.process.pid if node.process else None
            compared = ctnode(node, "models", "compare", "chest", str(card_file), "--route", ROUTE, "--since",
                              f"{shadow_start:%Y-%m-%dT%H:%M:%S}", "--bootstrap", "2000", "--json")
            if compared.returncode != 0:
                raise RuntimeError(f"ctnode models compare failed ({compared.returncode}): {compared.stderr[-3000:]}"
                                   f"{compared.stdout[-3000:]}")
            report = json.loads(compared.stdout)
            lesions = report["lesion_level"]
            if lesions is None:
                raise RuntimeError(f"comparison {report['id']}: no reviewed study read by both models")
            figures = {"cpm_live": lesions["live"]["cpm"]["value"],
                       "cpm_candidate": lesions["candidate"]["cpm"]["value"],
                       "paired_delta": lesions["difference"]["cpm"]["value"],
                       "ci_low": lesions["difference"]["cpm"]["ci95"][0],
                       "ci_high": lesions["difference"]["cpm"]["ci95"][1]}
            timings["compare_s"] = time.monotonic() - tick
            console.print(f"ctnode models compare: comparison {report['id']}, {report['studies']} studies read by "
                          f"both ({report['reviewed_studies']} reviewed, {lesions['lesions']} lesions); report "
                          f"{', '.join(report['report'])}")
            for key in ("sensitivity", "fp_per_scan"):
                d = lesions["difference"][key]
                console.print(f"  {key}: live {lesions['live'][key]['value']} (threshold "
                              f"{lesions['live']['threshold']}), candidate {lesions['candidate'][key]['value']} "
                              f"(threshold {lesions['candidate']['threshold']}), difference {d['value']} "
                              f"(95% CI {d['ci95']})")
            times = report["time_per_study"]
            console.print(f"  inference per study, median: live {times['live']['median_s']} s, candidate "
                          f"{times['candidate']['median_s']} s")

            tick = time.monotonic()
            promote_study, rollback_study = phases["C"]
            decided = ctnode(node, "models", "promote", str(card_file), "--route", ROUTE, "--by", "bench",
                             "--reason", f"site trial: comparison {report['id']}")
            console.print((decided.stdout + decided.stderr).strip(), markup=False)
            site_phase(node, runs, [promote_study], root, args.seed + 2, console)
            promoted = decided.returncode == 0 and \
                live_model_of(runs, promote_study.study_instance_uid) == CANDIDATE
            undone = ctnode(node, "models", "rollback", "--route", ROUTE, "--by", "bench",
                            "--reason", "bench: the previous model back")
            console.print((undone.stdout + undone.stderr).strip(), markup=False)
            site_phase(node, runs, [rollback_study], root, args.seed + 3, console)
            rolled_back = undone.returncode == 0 and \
                live_model_of(runs, rollback_study.study_instance_uid) == "ctnode-chest"
            timings["promote_rollback_s"] = time.monotonic() - tick
            assert node.process is not None and node.process.pid == serving and node.process.poll() is None, \
                "the node ran on through the comparison, promotion and rollback"
            [route] = cli_json(node, "models", "list")
            console.print(f"ctnode models list: route {route['route']}: "
                          + ", ".join(f"{m['role']} {m['model']}" for m in route["models"]) + "; changes "
                          + ", ".join(c["change"] for c in route["changes"]))
        finally:
            node.stop()
    timings["total_s"] = time.monotonic() - started
    console.print("durations: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    def num(value: float | None) -> str:
        return "nan" if value is None else f"{value:.3f}"

    print(f"site_studies={len(phases['A']) + len(phases['B'])} cpm_live={num(figures['cpm_live'])} "
          f"cpm_candidate={num(figures['cpm_candidate'])} paired_delta={num(figures['paired_delta'])} "
          f"ci_low={num(figures['ci_low'])} ci_high={num(figures['ci_high'])} shadow_delay_live_s={delay:.2f} "
          f"promoted={int(promoted)} rolled_back={int(rolled_back)}")

if __name__ == "__main__":
    main()
