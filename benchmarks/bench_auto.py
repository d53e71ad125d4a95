"""The "auto" preset on the trained demo models: does the target hold on prompts calibration never saw?

For each demo model, step count and target: calibrate (``accelerate(pipe, "auto", target_psnr=...)``)
on a few validation captions of the demo dataset, in a fresh cache directory, then generate
held-out captions of its test split (other seeds) with the pick and without acceleration, in the
same run. Printed per case: the rung picked, the held-out mean PSNR (mean over images of each
image's PSNR vs its unaccelerated image) and whether it hits (>= target - 1 dB), the denoiser MACs
ratio (counted), the best fixed preset (off/quality/balanced/fast/max, measured on the same
held-out images) whose mean PSNR is at least the pick's, and the calibration generations (each one
generation of the calibration prompts: at most one full-generation equivalent). Nothing is tuned
on the held-out captions.

    python benchmarks/bench_auto.py --models dit,unet --steps 20,28,50 --targets 26,30,34 \\
        --calibration-prompts 2 --held-out 16 --budget 8
"""

from __future__ import annotations

import argparse
import math
import tempfile
import warnings

import torch

from accelerate_diffusion import accelerate, demo
from accelerate_diffusion.demo import dataset

warnings.filterwarnings("ignore")
FIXED = ("off", "quality", "balanced", "fast", "max")


def generate(pipe, prompts, steps, seed):
    out = pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=demo.DEFAULT_GUIDANCE, output_type="pt",
               generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))])
    return torch.as_tensor(out.images).float()


def mean_psnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean over images of each image's PSNR (inf only when every image is identical)."""
    mse = ((reference.clamp(0, 1) - other.clamp(0, 1)) ** 2).flatten(1).mean(1)
    if not mse.any():
        return math.inf
    return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())


def run(pipe, prompts, steps, preset="off", **overrides):
    """(images, MACs) of one generation of ``prompts`` under ``preset`` (with ``overrides``)."""
    accelerate(pipe, preset, measure_macs=True, **overrides)
    try:
        return generate(pipe, prompts, steps, 500), pipe.acceleration.state.macs
    finally:
        pipe.acceleration.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dit,unet", help="demo models (default: %(default)s)")
    parser.add_argument("--steps", default="20,28,50", help="step counts (default: %(default)s)")
    parser.add_argument("--targets", default="26,30,34", help="target PSNRs in dB (default: %(default)s)")
    parser.add_argument("--calibration-prompts", type=int, default=2, help="validation captions (default: %(default)s)")
    parser.add_argument("--held-out", type=int, default=16, help="test captions (default: %(default)s)")
    parser.add_argument("--budget", type=int, default=8, help="calibration generations (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    calibration = [dataset.make_item(i, split="val")[1] for i in range(args.calibration_prompts)]
    held_out = [dataset.make_item(i, split="test")[1] for i in range(args.held_out)]
    targets = [float(t) for t in args.targets.split(",")]
    print("| model | steps | target | picked | held-out mean PSNR | hit | MACs | best fixed preset at >= its PSNR "
          "| MACs vs it | calibration generations |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    cases = hits = wins = 0
    spent = []
    for model in args.models.split(","):
        pipe = demo.load_pipeline(model)
        for steps in (int(s) for s in args.steps.split(",")):
            reference, base = run(pipe, held_out, steps)
            fixed = {"off": (math.inf, 1.0)}
            for preset in FIXED[1:]:
                out, macs = run(pipe, held_out, steps, preset)
                fixed[preset] = (mean_psnr(reference, out), base / max(macs, 1))
            print(f"<!-- demo-{model} {steps} steps, fixed presets (PSNR, MACs): "
                  + ", ".join(f"{p} {v[0]:.1f} dB {v[1]:.2f}x" for p, v in fixed.items()) + " -->", flush=True)
            for target in targets:
                with tempfile.TemporaryDirectory() as cache:
                    acc = accelerate(pipe, "auto", target_psnr=target, budget=args.budget, cache_dir=cache,
                                     calibration_prompts=calibration, progress=False,
                                     calibration={"num_inference_steps": steps,
                                                  "guidance_scale": demo.DEFAULT_GUIDANCE}).acceleration
                    cal, plan = acc.calibration, dict(acc.plan)
                    acc.remove()
                out, macs = run(pipe, held_out, steps, **plan)
                achieved, ratio = mean_psnr(reference, out), base / max(macs, 1)
                best = max((p for p, v in fixed.items() if v[0] >= achieved - 1e-9), key=lambda p: fixed[p][1])
                hit = achieved >= target - 1
                cases, hits, wins = cases + 1, hits + hit, wins + (ratio >= fixed[best][1] - 1e-9)
                spent.append(cal["generations_run"])
                rung = f"rung {cal['rung'] + 1}/{cal['of']}" if cal["rung"] >= 0 else "none (off)"
                print(f"| demo-{model} | {steps} | {target:g} | {rung} | {achieved:.1f} | {'yes' if hit else 'no'} | "
                      f"{ratio:.2f}x | {best} ({fixed[best][1]:.2f}x, {fixed[best][0]:.1f} dB) | "
                      f"{ratio / fixed[best][1]:.2f} | {cal['generations_run']} |", flush=True)
    print(f"\nhit (held-out mean >= target - 1 dB): {hits}/{cases}; MACs >= the best fixed preset at >= its PSNR: "
          f"{wins}/{cases}; calibration generations: mean {sum(spent) / len(spent):.1f}, max {max(spent)}")


if __name__ == "__main__":
    main()
