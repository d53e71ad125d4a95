"""DeepCache on UNet pipelines: wall ratio, MACs ratio and PSNR/SSIM vs uncached, per (N, branch).

For each pipeline (tiny SD1.5-class and SDXL-class at size "small", and the demo UNet) and
each cache interval N and branch b, one run with MACs counted gives the MACs ratio and the
fidelity to the uncached images; then baseline / ours / the ``DeepCache`` PyPI package
(``DeepCacheSDHelper``, same pipeline, same N and the same branch translated to its
``cache_branch_id``) are timed in rotating order and the median of the paired runs is
reported. The package is optional: if it does not import, its columns say why.

    python benchmarks/bench_deepcache.py                          # demo, sd, sdxl; 25 steps
    python benchmarks/bench_deepcache.py --pipelines demo --repeats 3
    python benchmarks/bench_deepcache.py --pipelines sd --intervals 3 --branches 0 --key-repeats 5

The demo UNet is `accelerate_diffusion.demo.load_pipeline("unet")` when it exists; otherwise
the demo UNet *architecture* with random weights (MACs and wall ratios hold, PSNR means less).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from accelerate_diffusion import testing  # noqa: E402
from accelerate_diffusion.api import accelerate  # noqa: E402
from accelerate_diffusion.eval.fidelity import psnr, ssim  # noqa: E402
from accelerate_diffusion.macs import format_macs  # noqa: E402
from accelerate_diffusion.patches import deepcache  # noqa: E402

try:
    from DeepCache import DeepCacheSDHelper
    PACKAGE = None
except Exception as exc:  # noqa: BLE001 - report any reason it cannot be used
    DeepCacheSDHelper, PACKAGE = None, f"DeepCache package unavailable: {exc!r}"


def demo_pipeline():
    """The trained demo UNet pipeline, or its architecture with random weights."""
    try:
        from accelerate_diffusion import demo
        pipe = demo.load_pipeline("unet")
        pipe.set_progress_bar_config(disable=True)
        log = os.path.join(os.path.dirname(demo.__file__), "weights", "unet", "train_log.json")
        steps = json.load(open(log)).get("steps_done", "?") if os.path.exists(log) else "?"
        return pipe, f"demo-unet (trained, {steps} training steps)", dict(height=64, width=64)
    except Exception as exc:  # noqa: BLE001
        print(f"# demo.load_pipeline('unet') unavailable ({exc!r:.120}); using the demo UNet "
              f"architecture with random weights")
    from diffusers import StableDiffusionPipeline

    from accelerate_diffusion.demo import models
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=models.new_vae(), text_encoder=testing._clip_text(models.TEXT_DIM, 4),
        tokenizer=testing._clip_tokenizer(), unet=models.new_unet(),
        scheduler=models.ddim_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, "demo-unet-arch (random weights)", dict(height=64, width=64)


def make_kwargs_fn(name: str, size: dict, steps: int):
    def make():
        kw = testing.call_kwargs("sd" if name == "demo" else name, "small", steps=steps,
                                 output_type="pt")
        kw.update(size)
        return kw
    return make


def package_branch(unet, branch: int) -> int | None:
    """Our branch b as the package's cache_branch_id = 3 * block + layer (None if it has none)."""
    layout = deepcache._layout(unet)
    before = 0
    for i, block in enumerate(unet.down_blocks):
        n = sum(1 for bi, _, _ in layout.down if bi == i)
        if branch - before < n or i == len(unet.down_blocks) - 1:
            layer = branch - before
            return 3 * i + layer if layer <= 2 else None
        before += n
    return None


class Variant:
    """How to switch one configuration on and off around a pipeline call."""

    def __init__(self, pipe, kind: str, n: int = 1, b: int = 0):
        self.pipe, self.kind, self.n, self.b = pipe, kind, n, b
        self.helper = None

    def on(self, measure: bool) -> None:
        if self.kind == "ours":
            accelerate(self.pipe, "off", measure_macs=measure,
                       deepcache={"cache_interval": self.n, "cache_branch": self.b})
        elif measure or self.kind == "package":
            accelerate(self.pipe, "off", measure_macs=measure)   # the clock counts MACs only
        if self.kind == "package":
            self.helper = DeepCacheSDHelper(pipe=self.pipe)
            self.helper.set_params(cache_interval=self.n,
                                   cache_branch_id=package_branch(self.pipe.unet, self.b))
            self.helper.enable()

    def off(self) -> None:
        if self.helper is not None:
            self.helper.disable()
            self.helper = None
        if getattr(self.pipe, "acceleration", None) is not None:
            self.pipe.acceleration.remove()

    def measured(self, make_kwargs):
        self.on(measure=True)
        try:
            images = self.pipe(**make_kwargs()).images
            macs = self.pipe.acceleration.state.macs
        finally:
            self.off()
        return images, macs

    def timed(self, make_kwargs) -> float:
        self.on(measure=False)
        try:
            start = time.perf_counter()
            self.pipe(**make_kwargs())
            return time.perf_counter() - start
        finally:
            self.off()


def bench_pipeline(pipe, label: str, make_kwargs, intervals, branches, repeats, key_repeats):
    base = Variant(pipe, "base")
    ref_images, base_macs = base.measured(make_kwargs)
    layout = deepcache._layout(pipe.unet)
    rows = []
    print(f"\n## {label}: {type(pipe).__name__}, {make_kwargs()['num_inference_steps']} steps, "
          f"skips: {layout.describe()}; baseline {format_macs(base_macs)} MACs")
    print(f"{'N':>2} {'b':>2} | {'ours wall':>9} {'MACs':>6} {'PSNR':>6} {'SSIM':>6} | "
          f"{'pkg wall':>8} {'MACs':>6} {'PSNR':>6} {'SSIM':>6} | base s")
    for n in intervals:
        for b in branches:
            if b > layout.max_branch:
                continue
            variants = {"base": base, "ours": Variant(pipe, "ours", n, b)}
            pkg_id = package_branch(pipe.unet, b)
            if DeepCacheSDHelper is not None and pkg_id is not None:
                variants["package"] = Variant(pipe, "package", n, b)
            row = {"pipeline": label, "N": n, "branch": b, "base_macs": base_macs}
            for key in ("ours", "package"):
                if key in variants:
                    images, macs = variants[key].measured(make_kwargs)
                    row[key] = {"macs_ratio": base_macs / max(macs, 1),
                                "psnr": psnr(ref_images, images), "ssim": ssim(ref_images, images)}
            times = {key: [] for key in variants}
            reps = key_repeats if (n, b) == (3, 0) else repeats
            order = list(variants)
            for r in range(reps):
                for key in order[r % len(order):] + order[:r % len(order)]:
                    times[key].append(variants[key].timed(make_kwargs))
            base_s = statistics.median(times["base"])
            row["base_s"] = base_s
            for key in ("ours", "package"):
                if key in variants:
                    row[key]["wall_s"] = statistics.median(times[key])
                    row[key]["wall_ratio"] = base_s / row[key]["wall_s"]
            rows.append(row)

            def cols(key):
                if key not in row:
                    return f"{'n/a':>8} {'':>6} {'':>6} {'':>6}"
                x = row[key]
                return (f"{x['wall_ratio']:8.2f}x {x['macs_ratio']:5.2f}x {x['psnr']:6.2f} "
                        f"{x['ssim']:6.4f}")
            print(f"{n:>2} {b:>2} | {cols('ours')} | {cols('package')} | {base_s:6.2f}"
                  f"  ({reps} paired)", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", default="demo,sd,sdxl")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--intervals", default="2,3,5")
    parser.add_argument("--branches", default="0,1,2")
    parser.add_argument("--repeats", type=int, default=1, help="paired timing runs per config")
    parser.add_argument("--key-repeats", type=int, default=3, help="paired runs for N=3, b=0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    intervals = [int(x) for x in args.intervals.split(",")]
    branches = [int(x) for x in args.branches.split(",")]
    print(f"# torch {torch.__version__}, {args.threads} thread(s), CPU; wall = median of paired "
          f"runs (baseline/ours/package rotating); MACs counted on the UNet only")
    print(f"# {PACKAGE or 'DeepCache package: DeepCacheSDHelper, same N, branch b -> cache_branch_id'}")
    rows = []
    for name in args.pipelines.split(","):
        if name == "demo":
            pipe, label, size = demo_pipeline()
        else:
            pipe, label, size = testing.make_pipeline(name, "small"), f"{name}-small", {}
        rows += bench_pipeline(pipe, label, make_kwargs_fn(name, size, args.steps), intervals,
                               branches, args.repeats, args.key_repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
