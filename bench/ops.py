"""Benchmark of ctnode's deformable convolution against dense conv2d and the grid_sample reference.

Every number is a ratio of timings taken in the same run, interleaved round
by round (the best of the rounds for each), so a loaded machine slows all
sides alike. Prints a table per device, then for the 2x64x128x128 3x3
64-out shape on CPU the line
``fwd_vs_conv=R1 fwdbwd_vs_conv=R2 speedup_vs_reference=R3`` where R1 is our
forward over conv2d's forward, R2 our forward+backward over conv2d's
forward+backward, and R3 the reference's forward over ours.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from detector.ops import _reference as reference
from detector.ops import deform_conv2d

# (batch, channels in, height, width, channels out) of the detector's 3x3 layers.
SHAPES = [(2, 64, 128, 128, 64), (4, 128, 64, 64, 128), (2, 256, 64, 64, 256)]
HEADLINE = SHAPES[0]


@dataclass
class Case:
    """Operands of one 3x3, padding 1, modulated deformable conv and its dense twin."""

    input: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    offset: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def make(cls, shape: tuple[int, int, int, int, int], device: str) -> Case:
        n, c, h, w, o = shape
        gen = torch.Generator().manual_seed(0)
        rand = lambda *s: torch.randn(*s, generator=gen).to(device)  # noqa: E731
        return cls(
            rand(n, c, h, w),
            rand(o, c, 3, 3) * 0.05,
            rand(o),
            rand(n, 18, h, w) * 2,
            torch.rand(n, 9, h, w, generator=gen).to(device),
        )

    def leaves(self) -> Case:
        return Case(*(t.detach().clone().requires_grad_() for t in vars(self).values()))


def conv_fwd(c: Case) -> torch.Tensor:
    return F.conv2d(c.input, c.weight, c.bias, padding=1)


def ours_fwd(c: Case) -> torch.Tensor:
    return deform_conv2d(c.input, c.offset, c.weight, c.bias, c.mask, padding=1)


def reference_fwd(c: Case) -> torch.Tensor:
    return reference.deform_conv2d(c.input, c.offset, c.weight, c.bias, c.mask, padding=1)


def with_backward(forward: Callable[[Case], torch.Tensor]) -> Callable[[Case], torch.Tensor]:
    def run(c: Case) -> torch.Tensor:
        out = forward(c)
        out.backward(torch.ones_like(out))
        return out

    return run


def best_times(fns: dict[str, Callable[[], object]], rounds: int, sync: Callable[[], None]) -> dict[str, float]:
    """Best wall time of each function over interleaved rounds, after one warm-up call each."""
    best = {name: float("inf") for name in fns}
    for name, fn in fns.items():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def measure(shape: tuple[int, int, int, int, int], device: str, rounds: int) -> dict[str, float]:
    case = Case.make(shape, device)
    grads = case.leaves()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        forward = best_times(
            {"conv": lambda: conv_fwd(case), "ours": lambda: ours_fwd(case), "reference": lambda: reference_fwd(case)},
            rounds,
            sync,
        )
    both = best_times(
        {"conv": lambda: with_backward(conv_fwd)(grads), "ours": lambda: with_backward(ours_fwd)(grads)}, rounds, sync
    )
    return {
        "conv_ms": forward["conv"] * 1e3,
        "fwd_vs_conv": forward["ours"] / forward["conv"],
        "fwdbwd_vs_conv": both["ours"] / both["conv"],
        "fwdbwd_vs_conv_fwd": both["ours"] / forward["conv"],
        "reference_vs_conv": forward["reference"] / forward["conv"],
        "speedup_vs_reference": forward["reference"] / forward["ours"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per timing (best is kept)")
    parser.add_argument("--quick", action="store_true", help="one round of the headline shape on CPU (CI)")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.quick else [])
    headline: dict[str, float] = {}
    for device in devices:
        threads = f"{torch.get_num_threads()} threads" if device == "cpu" else torch.cuda.get_device_name()
        print(f"\n{device} ({threads}, torch {torch.__version__}); ratios of best-of-{args.rounds} times")
        print(
            "| N x C x H x W -> O (3x3) | conv2d fwd ms | ours fwd / conv fwd | ours fwd+bwd / conv fwd+bwd "
            "| ours fwd+bwd / conv fwd | reference fwd / conv fwd | ours vs reference (fwd speedup) |"
        )
        print("|---|---|---|---|---|---|---|")
        for shape in [HEADLINE] if args.quick else SHAPES:
            r = measure(shape, device, args.rounds)
            n, c, h, w, o = shape
            print(
                f"| {n}x{c}x{h}x{w} -> {o} | {r['conv_ms']:.1f} | {r['fwd_vs_conv']:.2f} | {r['fwdbwd_vs_conv']:.2f} "
                f"| {r['fwdbwd_vs_conv_fwd']:.2f} | {r['reference_vs_conv']:.2f} | {r['speedup_vs_reference']:.2f} |",
                flush=True,
            )
            if device == "cpu" and shape == HEADLINE:
                headline = r
    print(
        f"fwd_vs_conv={headline['fwd_vs_conv']:.2f} fwdbwd_vs_conv={headline['fwdbwd_vs_conv']:.2f} "
        f"speedup_vs_reference={headline['speedup_vs_reference']:.2f}"
    )


if __name__ == "__main__":
    main()
