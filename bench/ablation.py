"""The seed's ablation: train every arm of detector/train/configs/ablation on one split and budget, then tabulate.

Each arm is one `ctnode train` config that differs from the others only in ``architecture`` (plain backbone,
+FPN, +FPN+DCN, and +FPN+DCN with cross-entropy instead of focal loss). ``--parallel N`` trains N arms at
once (one CPU thread each); ``--summarise-only`` reads finished runs. Writes the markdown table and the FROC
plot of every arm's test evaluation (``--docs``, default docs/evaluation/), prints the table, and ends with
``plain_cpm=.. fpn_cpm=.. fpn_dcn_cpm=.. fpn_dcn_ce_cpm=..`` (nan for an arm not run or without a CPM).

``--quick`` (CI) runs the same steps on small inputs, in a temporary folder: every arm trains a few iterations on
small crops from a 16-slice background, chooses its threshold on an 8-slice validation study and one synthetic
study over it, is measured on an 8-slice test study and one over it, and is timed once; its figures say only that
the steps run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from detector.evaluate import FrocLine, plot_froc

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "detector" / "train" / "configs" / "ablation"
ARMS = ("plain", "fpn", "fpn-dcn", "fpn-dcn-ce")
LABELS = {"plain": "plain backbone, focal", "fpn": "+FPN, focal", "fpn-dcn": "+FPN +DCN, focal",
          "fpn-dcn-ce": "+FPN +DCN, cross-entropy"}
QUICK_STUDIES = (("chest-a0001", "chest_lung_pet_ct_dx_A0001", "train", 16),
                 ("lidc-0001", "lidc_idri_0001", "validation", 8), ("lidc-0002", "lidc_idri_0002", "test", 8))
"""(manifest id, folder under the CT data, role, slices copied from the middle of its series) of ``--quick``."""
QUICK_SCHEDULE = {"iterations": 3, "budget_s": 60, "batch": 2, "crop_px": 64, "checkpoint_every_s": 0}
console = Console()


def train_arm(arm: str, out: Path, configs: Path = CONFIGS, cwd: Path = REPO) -> int:
    """One arm's `ctnode train` (its log beside its output folder); the exit status."""
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{arm}.log").open("w") as log:
        command = [sys.executable, "-m", "node", "train", "-c", str(configs / f"chest-{arm}.yaml"), "-o", str(out),
                   "--no-resume"]
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd).returncode


def train_arms(root: Path, parallel: int, configs: Path = CONFIGS, cwd: Path = REPO) -> dict[str, int]:
    """Every arm's `ctnode train` into ``root/<arm>``, ``parallel`` at once; the exit statuses."""
    with ThreadPoolExecutor(parallel) as pool:
        return dict(zip(ARMS, pool.map(lambda arm: train_arm(arm, root / arm, configs, cwd), ARMS), strict=True))


def _middle_slices(series: Path, out: Path, count: int) -> None:
    """Copies the ``count`` middle slices (along the patient z axis) of the one series under ``series`` to ``out``."""
    import pydicom

    files = sorted(series.rglob("*.dcm"), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                                             .ImagePositionPatient[2]))
    start = (len(files) - count) // 2
    out.mkdir(parents=True)
    for path in files[start:start + count]:
        shutil.copy(path, out / path.name)


def quick_configs(ct: Path, work: Path) -> Path:
    """``--quick``'s inputs under ``work``: slices of the CT studies, a manifest with one synthetic study over each
    held-out one, and every arm's config with the quick schedule. Returns the configs' folder."""
    studies, synthetic = [], []
    for n, (sid, folder, role, count) in enumerate(QUICK_STUDIES):
        _middle_slices(ct / folder, work / "ct" / sid, count)
        studies.append({"id": sid, "path": sid, "patient": sid, "role": role, "body_part": "CHEST"})
        if role != "train":
            synthetic.append({"background": sid, "target": "chest", "studies": 1, "negatives": 0, "lesions": 1,
                              "seed": 100 * (n + 1)})
    manifest = work / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"name": "ablation-quick", "root": str(work / "ct"), "studies": studies,
                                        "synthetic": synthetic}))
    configs = work / "configs"
    configs.mkdir()
    for arm in ARMS:
        config = yaml.safe_load((CONFIGS / f"chest-{arm}.yaml").read_text())
        config["data"] = {**config["data"], "manifest": str(manifest), "backgrounds": ["chest-a0001"], "pool": 8}
        config["schedule"] = {**config["schedule"], **QUICK_SCHEDULE}
        (configs / f"chest-{arm}.yaml").write_text(yaml.safe_dump(config))
    return configs


def reevaluate_arm(arm: str, out: Path) -> None:
    """Choose the arm's threshold on its validation studies and measure its test studies again with the code as it
    is now (the arms of one table must share the evaluator); the card and the reports are rewritten."""
    from detector.data import load_manifest
    from detector.infer import load_model
    from detector.registry import save_card
    from detector.train.config import load_train_config
    from detector.train.run import evaluated_card, select_studies

    path = CONFIGS / f"chest-{arm}.yaml"
    config = load_train_config(path)
    manifest = load_manifest(config.data.manifest)
    studies = select_studies(config, manifest, path)
    card_file = out / f"{config.name}.json"
    loaded = load_model(card_file)
    card = evaluated_card(config, manifest.name, studies, loaded, out / "evaluation")
    save_card(replace(card, evaluation=(*card.evaluation, *(e for e in loaded.card.evaluation
                                                          if e.dataset == "synthetic training pool"))), card_file)


PAIRS = (("plain", "fpn"), ("fpn", "fpn-dcn"), ("fpn-dcn-ce", "fpn-dcn"))
"""(without, with) the part each seed claim is about: FPN, DCN, focal loss (against cross-entropy)."""


def paired(root: Path, rounds: int = 2000) -> list[str]:
    """CPM differences of the claims' pairs on the same test studies, with paired bootstrap 95% intervals (both arms
    resampled with the same study weights), so that the spread shared by the two arms cancels."""
    import numpy as np

    from detector.data import load_manifest
    from detector.evaluate import EvaluationOptions, evaluate_studies
    from detector.infer import load_model
    from detector.train.config import load_train_config
    from detector.train.run import select_studies

    path = CONFIGS / f"chest-{ARMS[0]}.yaml"
    config = load_train_config(path)
    test = select_studies(config, load_manifest(config.data.manifest), path).test
    frocs = {}
    for arm in ARMS:
        card = next(c for c in sorted((root / arm).glob("*.json")) if c.name != "training.json")
        report = evaluate_studies(load_model(card), test, options=EvaluationOptions(bootstrap_rounds=10))
        frocs[arm] = report.froc
    ids = {arm: [c.study for c in froc.curves] for arm, froc in frocs.items()}
    assert all(v == ids[ARMS[0]] for v in ids.values()), "the arms were not measured on the same studies"
    weights = frocs[ARMS[0]].study_weights(rounds)
    lines = []
    for without, with_ in PAIRS:
        samples = frocs[with_].cpm_of(weights) - frocs[without].cpm_of(weights)
        samples = samples[~np.isnan(samples)]
        low, high = np.percentile(samples, [2.5, 97.5])
        lines.append(f"{LABELS[with_]} minus {LABELS[without]}: CPM {frocs[with_].cpm() - frocs[without].cpm():+.3f} "
                     f"(paired 95% CI {low:+.3f} to {high:+.3f}; better in {np.mean(samples > 0):.0%} of rounds)")
    return lines


def _interval(metric: dict[str, Any]) -> str:
    value, ci = metric["value"], metric["ci95"]
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")


def seconds_per_slice(root: Path, study: Path, repeats: int = 2) -> dict[str, float]:
    """Each trained arm's inference time per slice on one series, measured side by side now (best of ``repeats``
    after a warm-up), so that the arms compare under the same load."""
    import time

    from detector.infer import load_model, slice_detections
    from detector.io import read_ct_volume

    volume = read_ct_volume(study)[0]
    out = {}
    for arm in ARMS:
        cards = sorted((root / arm).glob("*.json"))
        if not cards or cards[0].name == "training.json":
            continue
        model = load_model(next(c for c in cards if c.name != "training.json"))
        slice_detections(volume, model)
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            slice_detections(volume, model)
            runs.append(time.perf_counter() - started)
        out[arm] = min(runs) / volume.geometry.shape[0]
    return out


def summarise(root: Path, docs: Path, timing: dict[str, float]) -> str:
    """The markdown table of the arms' test figures and ``docs/froc-ablation.png``."""
    rows = ["| arm | CPM (95% CI) | sensitivity at op. point | FP/scan at op. point | sens. @1 FP/scan | "
            "sens. @2 FP/scan | threshold | s/slice (inference, side by side) | ms/iteration (training) | iterations |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    lines = []
    for arm in ARMS:
        folder = root / arm
        report_file = folder / "evaluation" / "test" / "report.json"
        if not report_file.exists():
            rows.append(f"| {LABELS[arm]} | not run | | | | | | | | |")
            continue
        report = json.loads(report_file.read_text())
        training = json.loads((folder / "training.json").read_text())
        m = report["metrics"]
        rows.append(
            f"| {LABELS[arm]} | {_interval(m['cpm'])} | {_interval(m['sensitivity'])} | {_interval(m['fp_per_scan'])} "
            f"| {_interval(m['sensitivity@1fp'])} | {_interval(m['sensitivity@2fp'])} "
            f"| {report['model']['operating_threshold']:.2f} | {timing.get(arm, float('nan')):.4f} "
            f"| {1000 * training['seconds_per_iteration_median']:.0f} | {training['iterations']} |")
        lines.append(FrocLine.of(LABELS[arm], report))
    docs.mkdir(parents=True, exist_ok=True)
    if lines:
        plot_froc(lines, docs / "froc-ablation.png", "Ablation, chest test studies (dots: operating points)")
    table = "\n".join(rows)
    (docs / "ablation.md").write_text(table + "\n")
    return table


def figures(root: Path) -> str:
    """The last line: every arm's test CPM (nan for an arm not run or without one)."""
    values = []
    for arm in ARMS:
        report_file = root / arm / "evaluation" / "test" / "report.json"
        cpm = json.loads(report_file.read_text())["metrics"]["cpm"]["value"] if report_file.exists() else None
        values.append(f"{arm.replace('-', '_')}_cpm={math.nan if cpm is None else cpm:.3f}")
    return " ".join(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "var" / "ablation", help="one folder per arm")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "evaluation")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--timing-series", type=Path, default=REPO.parent / "shared" / "ct" / "lidc_idri_0001",
                        help="the series every arm's inference is timed on, side by side")
    parser.add_argument("--summarise-only", action="store_true")
    parser.add_argument("--paired", action="store_true",
                        help="no training: paired bootstrap of the CPM differences each claim is about")
    parser.add_argument("--reevaluate", action="store_true",
                        help="no training: choose every trained arm's threshold and measure it again with this code")
    parser.add_argument("--quick", action="store_true",
                        help="CI: every step on small inputs in a temporary folder (a few iterations per arm)")
    args = parser.parse_args()
    if args.quick:
        quick(Path(os.environ.get("CTNODE_TEST_DATA", REPO.parent / "shared" / "ct")), args.parallel)
        return
    if args.paired:
        for line in paired(args.out):
            console.print(line)
        return
    if args.reevaluate:
        for arm in ARMS:
            reevaluate_arm(arm, args.out / arm)
    elif not args.summarise_only:
        codes = train_arms(args.out, args.parallel)
        console.print(f"exit statuses: {codes}")
    timing = seconds_per_slice(args.out, args.timing_series) if args.timing_series.exists() else {}
    console.print(summarise(args.out, args.docs, timing))
    print(figures(args.out))


def quick(ct: Path, parallel: int) -> None:
    """``--quick``: train, summarise and time every arm on small inputs; a failed arm stops it with its log."""
    with tempfile.TemporaryDirectory(prefix="ctnode-ablation-") as folder:
        work = Path(folder)
        configs = quick_configs(ct, work)
        root = work / "runs"
        codes = train_arms(root, parallel, configs, work)
        failed = [arm for arm, code in codes.items() if code != 0]
        if failed:
            for arm in failed:
                sys.stderr.write((root / f"{arm}.log").read_text()[-3000:])
            raise SystemExit(f"ablation --quick: training failed for {failed} (exit statuses {codes})")
        timing = seconds_per_slice(root, work / "ct" / QUICK_STUDIES[-1][0], repeats=1)
        console.print(summarise(root, work / "docs", timing))
        print(figures(root))


if __name__ == "__main__":
    main()
