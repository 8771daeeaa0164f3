"""Whole-series detection speed and memory on the real head and chest CT, DCN model against its plain-conv twin.

Each measurement runs in its own process (so peak RSS is that run's own); the DCN and plain runs
alternate, and the best of ``--repeats`` is kept. The second stage's share of a two-stage model's time is
timed within the same run. Prints a table, then for the head series on CPU
``s_per_slice=S peak_rss_gb=G dcn_vs_plain=R`` and for the chest series ``chest_s_per_slice=S
chest_second_stage_share=F``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from detector.infer import (
    InferenceOptions,
    LoadedModel,
    detect_volume,
    findings_at,
    load_model,
    scored_findings,
    slice_detections,
)
from detector.infer.inference import capped, region
from detector.io import read_ct_volume
from detector.models import RetinaNet

REPO = Path(__file__).resolve().parents[1]
SERIES = {"head": "head_phantom_philips_study", "chest": "chest_lung_pet_ct_dx_A0001"}


def _data_root() -> Path:
    return Path(os.environ.get("CTNODE_TEST_DATA", REPO.parent / "shared" / "ct"))


def _child(target: str, variant: str, device: str, card: str) -> None:
    """One measurement: load the series and model, time detect_volume, print JSON with peak RSS."""
    volume, _ = read_ct_volume(_data_root() / SERIES[target])
    model = load_model(card)
    if variant == "plain":
        network = RetinaNet(replace(model.network.config, dcn_stages=()))
        state = {k: v for k, v in model.network.state_dict().items() if "offset_predictor" not in k}
        network.load_state_dict(state, strict=True)
        model = LoadedModel(model.card, network.eval(), model.refiner)
    options = InferenceOptions(device=torch.device(device))
    detect_volume(volume, model, options)  # warm-up: first-call allocations and kernel selection
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    mask = region(volume, model)  # detect_volume, step by step to time the second stage
    detections = slice_detections(volume, model, options)
    if device == "cuda":
        torch.cuda.synchronize()
    first_stage = time.perf_counter()
    scored = scored_findings(detections, volume, model, options.device, mask)
    if device == "cuda":
        torch.cuda.synchronize()
    second_stage = time.perf_counter() - first_stage
    findings, _ = capped(findings_at(detections, volume, model, scored=scored, mask=mask), model.card.max_findings)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"slices": volume.geometry.shape[0], "seconds": seconds, "peak_rss_gb": peak_kb / 2**20,
                      "findings": len(findings), "threads": torch.get_num_threads(),
                      "second_stage_s": second_stage if scored is not None else 0.0}))


def _middle_slices(count: int) -> Path:
    """A data folder (removed at exit) with the middle ``count`` slices of each series, as symbolic links."""
    import atexit
    import shutil
    import tempfile

    import pydicom
    from pydicom.misc import is_dicom

    root = Path(tempfile.mkdtemp(prefix="ctnode-detect-quick-"))
    atexit.register(shutil.rmtree, root, True)
    for series in SERIES.values():
        by_series: dict[str, list[tuple[float, Path]]] = {}
        for path in (_data_root() / series).rglob("*"):
            if path.is_file() and path.name != "DIRFILE" and is_dicom(path):
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                if "ImagePositionPatient" in ds:
                    by_series.setdefault(ds.SeriesInstanceUID, []).append((float(ds.ImagePositionPatient[2]), path))
        slices = sorted(max(by_series.values(), key=len))  # the series the detector reads: the largest
        (root / series).mkdir()
        start = max(0, (len(slices) - count) // 2)
        for number, (_, path) in enumerate(slices[start:start + count]):
            (root / series / f"{number:04d}.dcm").symlink_to(path)
    return root


def _measure(target: str, variant: str, device: str, card: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", target, variant, device, card],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=4, metavar=("TARGET", "VARIANT", "DEVICE", "CARD"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chest", default="chest", help="the chest model's card (e.g. a two-stage one)")
    parser.add_argument("--quick", action="store_true", help="one repeat on CPU (CI)")
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    if args.quick:
        args.repeats = 1
        os.environ["CTNODE_TEST_DATA"] = str(_middle_slices(24))  # read by the children
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.quick else [])
    jobs = [(t, d, v) for t in SERIES for d in devices for _ in range(args.repeats) for v in ("dcn", "plain")]
    best: dict[tuple[str, str, str], dict[str, float]] = {}
    for target, device, variant in track(jobs, description="benchmark runs"):
        result = _measure(target, variant, device, args.chest if target == "chest" else target)
        key = (target, device, variant)
        if key not in best or result["seconds"] < best[key]["seconds"]:
            best[key] = result
    table = Table(title="whole-series detection (io excluded; preprocess + network + postprocess)")
    for column in ("series", "device", "slices", "s/slice DCN", "s/slice plain", "DCN / plain", "second stage",
                   "peak RSS GB"):
        table.add_column(column)
    for target in SERIES:
        for device in devices:
            dcn, plain = best[(target, device, "dcn")], best[(target, device, "plain")]
            table.add_row(
                SERIES[target], f"{device} ({int(dcn['threads'])} threads)" if device == "cpu" else device,
                str(int(dcn["slices"])), f"{dcn['seconds'] / dcn['slices']:.4f}",
                f"{plain['seconds'] / plain['slices']:.4f}", f"{dcn['seconds'] / plain['seconds']:.2f}",
                f"{dcn['second_stage_s'] / dcn['seconds']:.0%}" if dcn["second_stage_s"] else "none",
                f"{dcn['peak_rss_gb']:.2f}",
            )
    Console().print(table)
    dcn, plain = best[("head", "cpu", "dcn")], best[("head", "cpu", "plain")]
    chest = best[("chest", "cpu", "dcn")]
    print(f"s_per_slice={dcn['seconds'] / dcn['slices']:.4f} peak_rss_gb={dcn['peak_rss_gb']:.2f} "
          f"dcn_vs_plain={dcn['seconds'] / plain['seconds']:.2f} "
          f"chest_s_per_slice={chest['seconds'] / chest['slices']:.4f} "
          f"chest_second_stage_share={chest['second_stage_s'] / chest['seconds']:.2f}")


if __name__ == "__main__":
    main()
