"""One lesion, one finding: large and irregular synthetic lesions (20-60 mm) through the shipped models, findings
per detected lesion with the fragments of one lesion joined (``merge_findings``) and without (the chains as
linked across slices, as before), from the same per-slice detections.

Each study: a real background (head: head_phantom_philips_study and head_ge_patient; chest:
chest_lung_pet_ct_dx_A0001) with one `ctnode synth` lesion (placed by the synthesiser's rules, its largest
diameter drawn in [20, 60] mm, irregular outline) read by the model of its target. A finding belongs to the
lesion when its centre lies within the lesion's largest radius + 5 mm of the lesion's centre; the others are
false findings. Last line:

    lesions=N sensitivity_before=S0 sensitivity_after=S1 per_lesion_before=F0 per_lesion_after=F1 fp_before=P0 fp_after=P1

``per_lesion``: findings per detected lesion (target <= 1.1 after); ``fp``: false findings per study.
``--quick``: 2 head studies.

Measured 2026-12-07 on this 2-core machine (16 head + 8 chest studies, 6.6 min): ``lesions=24
sensitivity_before=0.917 sensitivity_after=0.917 per_lesion_before=1.77 per_lesion_after=1.00 fp_before=6.75
fp_after=5.92`` (target <= 1.1 findings per lesion: met, no sensitivity lost, fewer false findings).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import require_ct  # noqa: E402

BACKGROUNDS = {"head": ("head_phantom_philips_study", "head_ge_patient"), "chest": ("chest_lung_pet_ct_dx_A0001",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", type=int, default=16, help="head studies")
    parser.add_argument("--chest", type=int, default=8, help="chest studies")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.head, args.chest = 2, 0

    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from detector.infer import load_model
    from detector.infer.inference import CANDIDATE_FRACTION, InferenceOptions, findings_at, region, slice_detections
    from detector.io import read_ct_volume
    from detector.postprocess import link_slices, to_finding
    from detector.synth import insert_lesions, random_lesion

    console = Console(stderr=True)
    plan = [("head", BACKGROUNDS["head"][n % 2], n) for n in range(args.head)]
    plan += [("chest", BACKGROUNDS["chest"][0], n) for n in range(args.chest)]
    models = {target: load_model(target) for target in {t for t, _, _ in plan}}
    volumes = {folder: read_ct_volume(require_ct(folder))[0] for _, folder, _ in plan}
    rows = []
    for target, folder, seed in track(plan, description="studies", console=console):
        model, background = models[target], volumes[folder]
        rng = np.random.default_rng(1000 + seed)
        lesion = random_lesion(target, background, rng)
        assert lesion is not None, f"no room for a lesion in {folder}"
        diameter = float(rng.uniform(20.0, 60.0))
        scale = diameter / lesion.diameter_mm
        lesion = replace(lesion, radii_mm=tuple(r * scale for r in lesion.radii_mm), shape="irregular")
        volume, _ = insert_lesions(background, [lesion])
        mask = region(volume, model)
        detections = slice_detections(volume, model, InferenceOptions(threads=None))
        threshold = model.card.operating_threshold
        after = findings_at(detections, volume, model, mask=mask)
        candidates = [d for d in detections if d.score >= threshold * CANDIDATE_FRACTION]
        before = [to_finding(c, volume.geometry, model.card.classes[c[0].label])
                  for c in link_slices(candidates, volume.geometry) if max(d.score for d in c) >= threshold]
        if mask is not None and before:
            inside = mask.contains(volume.geometry.patient_to_voxel([f.centre_mm for f in before]))
            before = [f for f, keep in zip(before, inside, strict=True) if keep]
        reach = max(lesion.radii_mm) + 5.0
        counts = []
        for found in (before, after):
            on = sum(float(np.linalg.norm(np.subtract(f.centre_mm, lesion.centre_mm))) <= reach for f in found)
            counts.append((on, len(found) - on))
        rows.append((target, folder, diameter, counts))

    table = Table("target", "background", "diameter mm", "on lesion before", "after", "false before", "after",
                  title="findings per large lesion, fragments joined (after) or not (before)")
    for target, folder, diameter, ((b_on, b_fp), (a_on, a_fp)) in rows:
        table.add_row(target, folder, f"{diameter:.0f}", str(b_on), str(a_on), str(b_fp), str(a_fp))
    console.print(table)

    def figures(k: int) -> tuple[float, float, float]:
        detected = [r[3][k][0] for r in rows if r[3][k][0] > 0]
        return (len(detected) / len(rows), float(np.mean(detected)) if detected else float("nan"),
                float(np.mean([r[3][k][1] for r in rows])))

    (s0, p0, f0), (s1, p1, f1) = figures(0), figures(1)
    print(f"lesions={len(rows)} sensitivity_before={s0:.3f} sensitivity_after={s1:.3f} per_lesion_before={p0:.2f} "
          f"per_lesion_after={p1:.2f} fp_before={f0:.2f} fp_after={f1:.2f}")


if __name__ == "__main__":
    main()
