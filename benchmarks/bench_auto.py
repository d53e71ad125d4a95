"""The "auto" preset on the trained demo models: does the target hold on prompts calibration never saw?

For each demo model and target: calibrate (``accelerate(pipe, "auto", target_psnr=...)``) on
4 validation captions of the demo dataset, in a fresh cache directory, then generate 8 captions of
its test split (other seeds) with the pick and without acceleration, in the same run. Printed:
the rung picked, the PSNR calibration measured, the held-out PSNR and SSIM vs the unaccelerated
images, the denoiser MACs ratio (counted) and the generations calibration ran.

    python benchmarks/bench_auto.py --models dit,unet --targets 26,30,34
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import torch

from accelerate_diffusion import accelerate, demo
from accelerate_diffusion.demo import dataset
from accelerate_diffusion.eval.fidelity import psnr, ssim

warnings.filterwarnings("ignore")


def generate(pipe, prompts, steps, seed):
    out = pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=demo.DEFAULT_GUIDANCE, output_type="pt",
               generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))])
    return torch.as_tensor(out.images).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dit,unet", help="demo models (default: %(default)s)")
    parser.add_argument("--targets", default="26,30,34", help="target PSNRs in dB (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=demo.DEFAULT_STEPS, help="default: %(default)s")
    parser.add_argument("--budget", type=int, default=6, help="calibration generations (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    calibration = [dataset.make_item(i, split="val")[1] for i in range(4)]
    held_out = [dataset.make_item(i, split="test")[1] for i in range(8)]
    print("| model | target PSNR | rung picked | calibration PSNR | held-out PSNR | held-out SSIM | MACs ratio | "
          "calibration generations |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        pipe = demo.load_pipeline(model)
        accelerate(pipe, "off", measure_macs=True)
        reference = generate(pipe, held_out, args.steps, 500)
        base_macs = pipe.acceleration.state.macs
        pipe.acceleration.remove()
        for target in (float(t) for t in args.targets.split(",")):
            with tempfile.TemporaryDirectory() as cache:
                acc = accelerate(pipe, "auto", target_psnr=target, budget=args.budget, cache_dir=cache,
                                 calibration_prompts=calibration, progress=False,
                                 calibration={"num_inference_steps": args.steps,
                                              "guidance_scale": demo.DEFAULT_GUIDANCE}).acceleration
                cal = acc.calibration
                plan = dict(acc.plan)
                acc.remove()
            accelerate(pipe, "off", measure_macs=True, **{k: v for k, v in plan.items()})
            out = generate(pipe, held_out, args.steps, 500)
            macs = pipe.acceleration.state.macs
            pipe.acceleration.remove()
            rung = f"{cal['rung'] + 1}/{cal['of']}" if cal["rung"] >= 0 else "none"
            measured = "-" if cal["rung"] < 0 else f"{cal['measured']:.1f}"
            print(f"| demo-{model} | {target:g} | {rung} | {measured} | {psnr(reference, out):.1f} | "
                  f"{ssim(reference, out):.3f} | {base_macs / max(macs, 1):.2f}x | {cal['generations_run']} |", flush=True)


if __name__ == "__main__":
    main()
