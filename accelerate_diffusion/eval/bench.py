"""Paired benchmark of one pipeline: baseline vs accelerated, in one process, same seeds.

Wall time drifts on a busy machine, so baseline and accelerated runs alternate (and
alternate which goes first) and the median of the repeats is reported. MACs are
counted on the denoiser only and do not depend on the machine.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..api import accelerate
from .fidelity import psnr, ssim
from ..macs import format_macs


@dataclass
class BenchResult:
    label: str
    preset: str
    baseline_s: list[float] = field(default_factory=list)
    accelerated_s: list[float] = field(default_factory=list)
    baseline_macs: int = 0
    accelerated_macs: int = 0
    psnr: float = float("nan")
    ssim: float = float("nan")
    report: str = ""
    baseline_output: torch.Tensor | None = field(default=None, repr=False)
    accelerated_output: torch.Tensor | None = field(default=None, repr=False)

    @property
    def wall_ratio(self) -> float:
        return statistics.median(self.baseline_s) / statistics.median(self.accelerated_s)

    @property
    def macs_ratio(self) -> float:
        return self.baseline_macs / max(self.accelerated_macs, 1)

    def to_dict(self) -> dict:
        return {"label": self.label, "preset": self.preset,
                "baseline_s": statistics.median(self.baseline_s),
                "accelerated_s": statistics.median(self.accelerated_s),
                "wall_ratio": self.wall_ratio, "baseline_macs": self.baseline_macs,
                "accelerated_macs": self.accelerated_macs, "macs_ratio": self.macs_ratio,
                "psnr": self.psnr, "ssim": self.ssim}

    def table(self) -> str:
        b, a = statistics.median(self.baseline_s), statistics.median(self.accelerated_s)
        spread = lambda xs: (max(xs) - min(xs)) / 2
        return "\n".join([
            f"{self.label}  preset={self.preset}  repeats={len(self.baseline_s)} (paired, median)",
            f"{'':12s} {'wall s':>10s} {'+-':>7s} {'MACs':>10s}",
            f"{'baseline':12s} {b:10.3f} {spread(self.baseline_s):7.3f} {format_macs(self.baseline_macs):>10s}",
            f"{'accelerated':12s} {a:10.3f} {spread(self.accelerated_s):7.3f} {format_macs(self.accelerated_macs):>10s}",
            f"{'ratio':12s} {self.wall_ratio:9.2f}x {'':7s} {self.macs_ratio:9.2f}x",
            f"fidelity vs baseline: PSNR {self.psnr:.2f} dB  SSIM {self.ssim:.4f}",
        ])


def _images(output) -> torch.Tensor:
    result = output.frames if hasattr(output, "frames") else output.images
    return torch.as_tensor(result)


def _timed(pipe, kwargs) -> tuple[float, torch.Tensor]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = pipe(**kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, _images(out)


def run_bench(pipe, make_kwargs: Callable[[], dict], preset: str = "balanced",
              overrides: dict[str, Any] | None = None, repeats: int = 3, warmup: int = 1,
              label: str = "", progress: bool = False) -> BenchResult:
    """Time ``pipe(**make_kwargs())`` unpatched and accelerated, alternating, same seeds.

    ``make_kwargs`` must return fresh kwargs (with a freshly seeded generator) each call;
    outputs must be images in [0, 1] (``output_type="pt"``).
    """
    from tqdm.auto import tqdm

    overrides = overrides or {}
    result = BenchResult(label or type(pipe).__name__, preset)
    # Every pipeline call ticks the bar: 2 counted runs, the warm-ups, 2 timed runs per repeat.
    bar = tqdm(total=2 + warmup + 2 * repeats, desc="bench", unit="call", disable=not progress)

    # MACs, counted once each (outside the timed runs), and the outputs compared.
    accelerate(pipe, "off", measure_macs=True)
    reference = _images(pipe(**make_kwargs()))
    bar.update()
    result.baseline_macs = pipe.acceleration.state.macs
    pipe.acceleration.remove()
    accelerate(pipe, preset, measure_macs=True, **overrides)
    pipe.acceleration.baseline_macs = result.baseline_macs
    accelerated = _images(pipe(**make_kwargs()))
    bar.update()
    result.accelerated_macs = pipe.acceleration.state.macs
    result.report = str(pipe.acceleration.report())
    pipe.acceleration.remove()
    result.psnr, result.ssim = psnr(reference, accelerated), ssim(reference, accelerated)
    result.baseline_output, result.accelerated_output = reference, accelerated

    for _ in range(warmup):
        pipe(**make_kwargs())
        bar.update()
    for r in range(repeats):
        order = ("base", "acc") if r % 2 == 0 else ("acc", "base")
        for which in order:
            if which == "acc":
                accelerate(pipe, preset, **overrides)
                seconds, _ = _timed(pipe, make_kwargs())
                pipe.acceleration.remove()
                result.accelerated_s.append(seconds)
            else:
                seconds, _ = _timed(pipe, make_kwargs())
                result.baseline_s.append(seconds)
            bar.update()
    bar.close()
    return result
