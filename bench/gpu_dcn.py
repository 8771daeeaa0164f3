"""The Python steps of bench/gpu_check.sh: deformable conv against torchvision, a short fine-tune, the node end to end.

Subcommands, each printing its table and, last, one line ``FIGURES {json}`` that gpu_check.sh collects:

  device     the device's name, torch and CUDA versions, compute capability
  dcn        ctnode's deform_conv2d against ``torchvision.ops.deform_conv2d`` on the detector's three 3x3 layer
             shapes (bench/ops.py's SHAPES): forward output and every gradient (input, offset, mask, weight, bias)
             as max abs differences, and the time ratios ours / torchvision of forward and forward+backward (medians
             of interleaved rounds after warm-up, CUDA events on CUDA). Where torchvision does not import (the CPU
             build of torch here) the counterpart is ctnode's grid_sample reference, and the figures say so.
  finetune   ITERATIONS iterations of the shipped chest model (its card's weights) on synthetic lesions inserted
             into the chest series, through detector.train.loop.train (AMP on CUDA, as `ctnode train` runs)
  e2e        the node's whole path without Orthanc: `python -m node serve` (SQLite, one worker) receives the chest
             series from a pynetdicom C-STORE SCU and sends its SR back to a pynetdicom C-STORE SCP standing in for
             the PACS; stages from the run's audit record, as bench/e2e.py reports them
  summary    merges the FIGURES lines collected in a file into gpu_check.sh's one line

``--tiny`` shrinks every size so that the whole script is checked on a CPU in minutes (`gpu_check.sh --dry-run`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch

CHEST = "chest_lung_pet_ct_dx_A0001"
FIRST_KEYS = ("gpu", "cuda_op_tests", "dcn_max_abs_diff_fwd", "dcn_max_abs_diff_bwd", "dcn_fwd_vs_torchvision",
              "dcn_fwdbwd_vs_torchvision", "dcn_fwd_vs_reference", "dcn_fwdbwd_vs_reference", "detect_s_per_slice",
              "detect_dcn_vs_plain", "detect_cli_s", "e2e_s", "e2e_inference_s", "finetune_it_per_s", "total_s")


def _bench_module(name: str) -> ModuleType:
    """bench/NAME.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _figures(values: dict[str, Any]) -> None:
    print("FIGURES " + json.dumps(values), flush=True)


def _data_root() -> Path:
    return Path(os.environ.get("CTNODE_TEST_DATA", REPO.parent / "shared" / "ct"))


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_dcn: --device cuda but torch sees no CUDA device")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------------- device


def cmd_device(args: argparse.Namespace) -> None:
    device = _device(args.device)
    values: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda or "none"}
    if device.type == "cuda":
        values["gpu"] = torch.cuda.get_device_name().replace(" ", "_")
        major, minor = torch.cuda.get_device_capability()
        values["compute_capability"] = f"{major}.{minor}"
    else:
        values["gpu"] = f"none(cpu,{torch.get_num_threads()}threads)"
    print(" ".join(f"{k}={v}" for k, v in values.items()))
    _figures(values)


# ---------------------------------------------------------------------------------------------------- dcn


def _counterpart() -> tuple[str, Callable[..., torch.Tensor]]:
    """torchvision's deform_conv2d (ours' argument order), else ctnode's pure-PyTorch reference."""
    try:
        from torchvision.ops import deform_conv2d as tv_deform_conv2d
    except (ImportError, RuntimeError, OSError, AttributeError) as exc:  # torchvision built for another torch
        from detector.ops import _reference as reference

        print(f"torchvision does not import here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
              "comparing with ctnode's grid_sample reference instead")
        return "reference", lambda x, offset, weight, bias, mask: reference.deform_conv2d(
            x, offset, weight, bias, mask, padding=1)

    # Same layouts as ours: offset [N, 2 * G * kh * kw, Ho, Wo] as (group, tap, (dy, dx)), mask [N, G * kh * kw, ...].
    return "torchvision", lambda x, offset, weight, bias, mask: tv_deform_conv2d(
        x, offset, weight, bias, padding=(1, 1), mask=mask)


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Seconds one call takes: CUDA events around it on CUDA, perf_counter on the CPU."""
    if device.type == "cuda":
        def cuda_time(fn: Callable[[], object]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return cuda_time

    def cpu_time(fn: Callable[[], object]) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    return cpu_time


def median_times(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                 rounds: int) -> dict[str, float]:
    """Median seconds of each function over ``rounds`` interleaved rounds, after ``warmup`` calls of each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    timer = _timer(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timer(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def _scale(t: torch.Tensor) -> float:
    return float(t.detach().double().abs().max()) if t.numel() else 0.0


def tiny_shapes(shapes: Sequence[tuple[int, int, int, int, int]]) -> list[tuple[int, int, int, int, int]]:
    """The same layers at a sixteenth of the channels and an eighth of the side (a CPU check of the code path)."""
    return [(1, max(c // 16, 2), max(h // 8, 4), max(w // 8, 4), max(o // 16, 2)) for _, c, h, w, o in shapes]


def compare_shape(shape: tuple[int, int, int, int, int], device: torch.device, against: Callable[..., torch.Tensor],
                  warmup: int, rounds: int) -> dict[str, float]:
    """Values and speed of ours against ``against`` on one layer shape (bench/ops.py's operands)."""
    ops = _bench_module("ops")
    case = ops.Case.make(shape, str(device))
    names = ("input", "offset", "mask", "weight", "bias")

    def ours(c: Any) -> torch.Tensor:
        return ops.ours_fwd(c)

    def theirs(c: Any) -> torch.Tensor:
        return against(c.input, c.offset, c.weight, c.bias, c.mask)

    leaves = case.leaves()
    out_ours, out_theirs = ours(leaves), theirs(leaves)
    grad_out = torch.randn(out_ours.shape, generator=torch.Generator().manual_seed(1)).to(device)
    inputs = [getattr(leaves, n) for n in names]
    grads_ours = torch.autograd.grad(out_ours, inputs, grad_out)
    grads_theirs = torch.autograd.grad(out_theirs, inputs, grad_out)
    bwd = {n: _max_abs(a, b) for n, a, b in zip(names, grads_ours, grads_theirs)}
    rel = [_max_abs(out_ours, out_theirs) / max(_scale(out_theirs), 1e-30)]
    rel += [bwd[n] / max(_scale(b), 1e-30) for n, b in zip(names, grads_theirs)]

    with torch.no_grad():
        forward = median_times({"ours": lambda: ours(case), "theirs": lambda: theirs(case),
                                "conv": lambda: ops.conv_fwd(case)}, device, warmup, rounds)
    grad_leaves = case.leaves()
    grad_inputs = [getattr(grad_leaves, n) for n in names]

    def backward(fn: Callable[[Any], torch.Tensor]) -> Callable[[], object]:
        return lambda: torch.autograd.grad(fn(grad_leaves), grad_inputs, grad_out)

    both = median_times({"ours": backward(ours), "theirs": backward(theirs)}, device, warmup, rounds)
    return {
        "fwd_diff": _max_abs(out_ours, out_theirs), "bwd_diff": max(bwd.values()), "max_rel_diff": max(rel),
        **{f"bwd_diff_{n}": v for n, v in bwd.items()},
        "ours_fwd_ms": forward["ours"] * 1e3, "theirs_fwd_ms": forward["theirs"] * 1e3,
        "conv_fwd_ms": forward["conv"] * 1e3, "ours_fwdbwd_ms": both["ours"] * 1e3,
        "theirs_fwdbwd_ms": both["theirs"] * 1e3,
    }


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def cmd_dcn(args: argparse.Namespace) -> None:
    device = _device(args.device)
    shapes = _bench_module("ops").SHAPES
    if args.tiny:
        shapes = tiny_shapes(shapes)
    against_name, against = _counterpart()
    torch.backends.cudnn.benchmark = True
    print(f"ctnode deform_conv2d against {against_name} on {device} (float32, 3x3, padding 1, modulated); "
          f"medians of {args.rounds} interleaved rounds after {args.warmup} warm-up calls")
    print("| N x C x H x W -> O | fwd max abs diff | bwd max abs diff (input, offset, mask, weight, bias) "
          f"| max rel diff | ours fwd ms | {against_name} fwd ms | ours / {against_name} fwd "
          f"| ours / {against_name} fwd+bwd | ours fwd / conv2d fwd |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for shape in shapes:
        r = compare_shape(shape, device, against, args.warmup, args.rounds)
        rows.append(r)
        n, c, h, w, o = shape
        grads = ", ".join(f"{r[f'bwd_diff_{k}']:.1e}" for k in ("input", "offset", "mask", "weight", "bias"))
        print(f"| {n}x{c}x{h}x{w} -> {o} | {r['fwd_diff']:.2e} | {r['bwd_diff']:.2e} ({grads}) "
              f"| {r['max_rel_diff']:.1e} | {r['ours_fwd_ms']:.3f} | {r['theirs_fwd_ms']:.3f} "
              f"| {r['ours_fwd_ms'] / r['theirs_fwd_ms']:.2f} | {r['ours_fwdbwd_ms'] / r['theirs_fwdbwd_ms']:.2f} "
              f"| {r['ours_fwd_ms'] / r['conv_fwd_ms']:.2f} |", flush=True)
    max_rel = max(r["max_rel_diff"] for r in rows)
    agree = max_rel <= args.rel_tolerance
    values = {
        "dcn_against": against_name,
        "dcn_max_abs_diff_fwd": f"{max(r['fwd_diff'] for r in rows):.2e}",
        "dcn_max_abs_diff_bwd": f"{max(r['bwd_diff'] for r in rows):.2e}",
        "dcn_max_rel_diff": f"{max_rel:.1e}",
        "dcn_values": "agree" if agree else "DIFFER",
        f"dcn_fwd_vs_{against_name}": round(_geomean([r["ours_fwd_ms"] / r["theirs_fwd_ms"] for r in rows]), 2),
        f"dcn_fwdbwd_vs_{against_name}": round(
            _geomean([r["ours_fwdbwd_ms"] / r["theirs_fwdbwd_ms"] for r in rows]), 2),
    }
    print(f"ratios: geometric means over the {len(rows)} shapes (above 1: ours slower); values "
          f"{values['dcn_values']} (largest difference relative to the largest magnitude {max_rel:.1e}, tolerance "
          f"{args.rel_tolerance:g})")
    _figures(values)
    if not agree:
        raise SystemExit(f"gpu_dcn: ours and {against_name} differ by {max_rel:.1e} (relative) > {args.rel_tolerance:g}")


# ---------------------------------------------------------------------------------------------------- finetune


def cmd_finetune(args: argparse.Namespace) -> None:
    from detector.data import StudyEntry
    from detector.infer import load_model
    from detector.train.loop import TrainSettings, train
    from detector.train.pool import read_backgrounds, sample_pool
    from detector.train.targets import TARGETS

    _device(args.device)
    started = time.perf_counter()
    loaded = load_model("chest")  # the shipped card; its weights are sha256-checked
    spec = TARGETS["chest"]
    study = StudyEntry(id="chest-a0001", path=_data_root() / CHEST, patient="Lung_Dx-A0001", role="train",
                       body_part="CHEST")
    backgrounds = read_backgrounds([study])
    pool = sample_pool(spec, backgrounds, args.pool, negatives=0.25, seed=args.seed)
    pool_s = time.perf_counter() - started
    settings = TrainSettings(iterations=args.iterations, budget_s=args.budget_s, batch=args.batch,
                             crop_px=args.crop_px, lr=args.lr, seed=args.seed, checkpoint_every_s=1e9,
                             report_every=max(args.iterations // 4, 1))
    cuda = torch.cuda.is_available()  # train() runs on CUDA under AMP whenever torch sees a device
    print(f"fine-tuning {loaded.card.name} {loaded.card.version} ({sum(p.numel() for p in loaded.network.parameters())}"
          f" parameters) on {'CUDA with AMP' if cuda else 'the CPU'}: {args.iterations} iterations, batch "
          f"{args.batch}, {args.crop_px} px crops of a {len(pool)}-sample pool ({pool_s:.1f} s to read and render)",
          flush=True)
    trained = time.perf_counter()
    log = train(loaded.network, pool, loaded.card.input_spec, settings)
    train_s = time.perf_counter() - trained
    done = len(log.seconds)
    skip = min(args.skip, max(done - 1, 0))  # the first iterations pay for cuDNN's algorithm search
    steady = (done - skip) / max(sum(log.seconds[skip:]), 1e-9)
    losses = [c + b for c, b in zip(log.cls, log.box)]
    first, last = losses[: max(done // 10, 1)], losses[-max(done // 10, 1):]
    finite = all(math.isfinite(v) for v in losses)
    print(f"{done} iterations in {train_s:.1f} s: {steady:.2f} it/s after the first {skip}, "
          f"{done / train_s:.2f} it/s overall; loss {statistics.mean(first):.4f} (first tenth) -> "
          f"{statistics.mean(last):.4f} (last tenth)")
    _figures({"finetune_it_per_s": round(steady, 2), "finetune_iterations": done, "finetune_amp": int(cuda),
              "finetune_train_s": round(train_s, 1), "finetune_pool_s": round(pool_s, 1),
              "finetune_loss_first": round(statistics.mean(first), 4),
              "finetune_loss_last": round(statistics.mean(last), 4)})
    if done < args.iterations or not finite:
        raise SystemExit(f"gpu_dcn: fine-tune ran {done} of {args.iterations} iterations, losses "
                         f"{'finite' if finite else 'NOT finite'}")


# ---------------------------------------------------------------------------------------------------- e2e


class _Pacs:
    """A pynetdicom C-STORE SCP (AE PACS) on a free port that notes when each SR arrives, per study."""

    def __init__(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        from tests.support import free_port

        self.port = free_port()
        self.srs: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        self.ae = AE(ae_title="PACS")
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: Any) -> int:
        ds = event.dataset
        if ds.get("Modality") == "SR":
            with self.lock:
                self.srs.setdefault(str(ds.StudyInstanceUID), []).append(time.monotonic())
        return 0x0000

    def wait_for_sr(self, study_instance_uid: str, timeout_s: float, alive: Callable[[], str | None]) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if self.srs.get(study_instance_uid):
                    return self.srs[study_instance_uid][0]
            problem = alive()
            if problem:
                raise SystemExit(f"gpu_dcn: the node stopped: {problem}")
            time.sleep(0.05)
        raise SystemExit(f"gpu_dcn: no SR for study {study_instance_uid} within {timeout_s:.0f} s")

    def stop(self) -> None:
        self.server.shutdown()


def _send(files: Sequence[Path], port: int) -> float:
    """C-STORE every file to the node (AE CTNODE) over one association as AE PACS; the release's time."""
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="PACS")
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid, sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets}))
    assoc = ae.associate("127.0.0.1", port, ae_title="CTNODE")
    if not assoc.is_established:
        raise SystemExit("gpu_dcn: the node refused the association")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if status is None or status.Status != 0x0000:
                raise SystemExit(f"gpu_dcn: C-STORE of {ds.SOPInstanceUID} answered {status}")
    finally:
        assoc.release()
    return time.monotonic()


def cmd_e2e(args: argparse.Namespace) -> None:
    from tests.integration.loop import write_study
    from tests.support import NodeProcess, free_port

    _device(args.device)
    os.environ.setdefault("CTNODE_TEST_DATA", str(_data_root()))
    stages_of = _bench_module("e2e")._stages  # the stages exactly as bench/e2e.py reads them
    measured: list[dict[str, float]] = []
    walls: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ctnode-gpu-e2e-") as tmp:
        root = Path(tmp)
        pacs = _Pacs()
        node = NodeProcess(root / "node", "", port=free_port(), allowed=[{"ae_title": "PACS", "host": "127.0.0.1"}],
                           sections={
                               "delivery": {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                              "port": pacs.port}],
                                            "reply_to": {"PACS": "pacs"}, "poll_interval_s": 0.2,
                                            "backoff_initial_s": 1, "backoff_max_s": 5},
                               "pipeline": {"workers": 1, "quiet_s": 5, "poll_interval_s": 0.2},
                               "metrics": {"port": free_port()},
                               "logging": {"format": "json", "level": "INFO"},  # NodeProcess waits for "listening" (INFO)
                           })
        node.start()

        def alive() -> str | None:
            assert node.process is not None
            return None if node.process.poll() is None else f"exit {node.process.returncode}: {node.log()[-2000:]}"

        try:
            for repeat in range(args.repeats + 1):  # round 0 warms the worker up (model load, CUDA context)
                study = write_study(CHEST, root / f"chest-{repeat}", f"gpu-e2e-{repeat}",
                                    slices=slice(None, args.slices))
                released = _send(study.files, node.port)
                arrived = pacs.wait_for_sr(study.study_instance_uid, args.timeout_s, alive)
                runs = json.loads(node.cli("runs", "list", "--study", study.study_instance_uid, "--json").stdout)
                record = json.loads(node.cli("runs", "show", str(runs[0]["id"]), "--json").stdout)
                stages = stages_of(record)
                print(f"round {repeat}{' (warm-up)' if repeat == 0 else ''}: {len(study.files)} slices, release -> "
                      f"SR {arrived - released:.2f} s; " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()),
                      flush=True)
                if repeat > 0:
                    measured.append(stages)
                    walls.append(arrived - released)
        finally:
            node.stop()
            pacs.stop()
    medians = {k: statistics.median(m[k] for m in measured) for k in measured[0]}
    print(f"median of {len(measured)}: " + ", ".join(f"{k} {v:.2f} s" for k, v in medians.items()))
    _figures({"e2e_s": round(medians["total"], 2), "e2e_inference_s": round(medians["inference"], 2),
              "e2e_quiet_s": round(medians["quiet"], 2), "e2e_release_to_sr_s": round(statistics.median(walls), 2),
              "e2e_pacs": "pynetdicom"})


# ---------------------------------------------------------------------------------------------------- summary


def cmd_summary(args: argparse.Namespace) -> None:
    merged: dict[str, Any] = {}
    for line in Path(args.figures).read_text(encoding="utf-8").splitlines():
        if line.strip():
            merged.update(json.loads(line))
    keys = [k for k in FIRST_KEYS if k in merged] + sorted(k for k in merged if k not in FIRST_KEYS)
    print(" ".join(f"{k}={str(merged[k]).replace(' ', '_')}" for k in keys))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, fn: Callable[[argparse.Namespace], None]) -> argparse.ArgumentParser:
        p = sub.add_parser(name)
        p.set_defaults(fn=fn)
        if name != "summary":
            p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
            p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU dry run of the code path)")
        return p

    command("device", cmd_device)
    p = command("dcn", cmd_dcn)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--rel-tolerance", type=float, default=1e-3,
                   help="largest difference allowed, relative to the largest magnitude of each tensor (float32)")
    p = command("finetune", cmd_finetune)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop-px", type=int, default=192)
    p.add_argument("--pool", type=int, default=96, help="samples rendered from the chest series")
    p.add_argument("--lr", type=float, default=1e-4, help="a tenth of training's: the weights are trained already")
    p.add_argument("--budget-s", type=float, default=150.0)
    p.add_argument("--skip", type=int, default=10, help="first iterations left out of the it/s figure")
    p.add_argument("--seed", type=int, default=0)
    p = command("e2e", cmd_e2e)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--slices", type=int, default=None, help="send only the first N slices (default: all 64)")
    p.add_argument("--timeout-s", type=float, default=120.0)
    p = command("summary", cmd_summary)
    p.add_argument("figures", help="file of JSON objects, one a line")
    args = parser.parse_args(argv)
    if getattr(args, "tiny", False) and args.command == "dcn":
        args.warmup, args.rounds = 1, 3
    if getattr(args, "tiny", False) and args.command == "finetune":
        args.iterations, args.batch, args.crop_px, args.pool, args.skip = 4, 2, 64, 3, 1
    if getattr(args, "tiny", False) and args.command == "e2e":
        args.repeats = 1
    args.fn(args)


if __name__ == "__main__":
    main()
