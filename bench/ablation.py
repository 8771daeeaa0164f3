"""The seed's ablation: train every arm of detector/train/configs/ablation on one split and budget, then tabulate.

Each arm is one `ctnode train` config that differs from the others only in ``architecture`` (plain backbone,
+FPN, +FPN+DCN, and +FPN+DCN with cross-entropy instead of focal loss). ``--parallel N`` trains N arms at
once (one CPU thread each); ``--summarise-only`` reads finished runs. Writes the markdown table and the FROC
plot of every arm's test evaluation (``--docs``, default docs/evaluation/), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from detector.evaluate import FrocLine, plot_froc

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "detector" / "train" / "configs" / "ablation"
ARMS = ("plain", "fpn", "fpn-dcn", "fpn-dcn-ce")
LABELS = {"plain": "plain backbone, focal", "fpn": "+FPN, focal", "fpn-dcn": "+FPN +DCN, focal",
          "fpn-dcn-ce": "+FPN +DCN, cross-entropy"}
console = Console()


def train_arm(arm: str, out: Path) -> int:
    """One arm's `ctnode train` (its log beside its output folder); the exit status."""
    out.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{arm}.log").open("w") as log:
        command = [sys.executable, "-m", "node", "train", "-c", str(CONFIGS / f"chest-{arm}.yaml"), "-o", str(out),
                   "--no-resume"]
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode


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


def seconds_per_slice(root: Path, study: Path) -> dict[str, float]:
    """Each trained arm's inference time per slice on one series, measured side by side now (best of 2 after a
    warm-up), so that the arms compare under the same load."""
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
        for _ in range(2):
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
    args = parser.parse_args()
    if args.paired:
        for line in paired(args.out):
            console.print(line)
        return
    if args.reevaluate:
        for arm in ARMS:
            reevaluate_arm(arm, args.out / arm)
    elif not args.summarise_only:
        with ThreadPoolExecutor(args.parallel) as pool:
            codes = dict(zip(ARMS, pool.map(lambda arm: train_arm(arm, args.out / arm), ARMS), strict=True))
        console.print(f"exit statuses: {codes}")
    timing = seconds_per_slice(args.out, args.timing_series) if args.timing_series.exists() else {}
    console.print(summarise(args.out, args.docs, timing))


if __name__ == "__main__":
    main()
