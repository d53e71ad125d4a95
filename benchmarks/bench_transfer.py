"""Learned schedules at step counts they were not searched at: mapped in normalised time vs the
heuristic they replace vs a schedule searched at that count, on held-out prompts.

The demo DiT's shipped picks (searched at 25 steps) are mapped to each step count with
``CacheSchedule.resample`` (``keep="time"``, what the presets run, and ``keep="fraction"``, the
alternative it was chosen over on the validation captions); the heuristic each replaces is built
for that count. With
``--searched N=folder`` a front searched at N steps (``accelerate-diffusion search --steps N``)
joins: its point is the one the search scored most faithful (its own calibration loss, never the
held-out prompts) among those at least as fast (estimated MACs) as the mapped schedule. Block
caching alone; 8 demo test captions (``--split val``: validation captions 16-23, the ones the
picks and the mapping rule were chosen on), seeds 1000+i, guidance 5 (as every demo-DiT figure);
PSNR/SSIM vs the uncached images at the same count; denoiser MACs counted.

    python benchmarks/bench_transfer.py --steps 20,28,50 \\
        --searched 20=runs/ecad-demo-dit-20,28=runs/ecad-demo-dit-28,50=runs/ecad-demo-dit-50
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

from accelerate_diffusion import accelerate, demo
from accelerate_diffusion.eval.fidelity import psnr, ssim
from accelerate_diffusion.presets import PRESETS
from accelerate_diffusion.schedules import measure_component_macs
from accelerate_diffusion.schedules.fronts import load_front
from accelerate_diffusion.schedules.learned import preset_schedule

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="20,28,50", help="step counts (default: %(default)s)")
    parser.add_argument("--presets", default="quality,balanced,fast,max",
                        help="presets; their heuristics, and their learned picks where shipped (default: %(default)s)")
    parser.add_argument("--prompts", type=int, default=8, help="demo test captions (default: %(default)s)")
    parser.add_argument("--searched", default="", help="N=folder,... fronts searched at those step counts")
    parser.add_argument("--split", default="test", choices=["test", "val"], help="held-out captions "
                        "(test 0-N) or validation captions (val 16-16+N) (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from accelerate_diffusion.demo import dataset

    first = 16 if args.split == "val" else 0
    prompts = [dataset.make_item(first + i, split=args.split)[1] for i in range(args.prompts)]
    searched = dict(item.split("=", 1) for item in args.searched.split(",") if item)
    pipe = demo.load_pipeline("dit")

    def generate(steps, schedule=None):
        overrides = {"block_cache": {"mode": "schedule", "schedule": schedule}} if schedule is not None else {}
        accelerate(pipe, "off", measure_macs=True, **overrides)
        try:
            out = pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=demo.DEFAULT_GUIDANCE,
                       output_type="pt",
                       generator=[torch.Generator("cpu").manual_seed(1000 + i) for i in range(len(prompts))])
            return torch.as_tensor(out.images).float(), pipe.acceleration.state.macs
        finally:
            pipe.acceleration.remove()

    print("| steps | preset | schedule | MACs | PSNR dB | SSIM |")
    print("|---|---|---|---|---|---|")
    for steps in (int(s) for s in args.steps.split(",")):
        reference, base = generate(steps)
        kwargs = dict(prompt=prompts[:1], guidance_scale=demo.DEFAULT_GUIDANCE, output_type="pt")
        comp, call = measure_component_macs(pipe, kwargs)
        front = load_front(searched[str(steps)]) if str(steps) in searched else []
        for preset in args.presets.split(","):
            picked = preset_schedule(pipe.transformer, preset)
            heuristic = PRESETS[preset].settings["dit"]["block_cache"]["schedule"]
            rows = [(f"heuristic `{heuristic}`", heuristic)]
            if picked is not None:
                mapped = picked.resample(steps)
                name = picked.name.split('/')[-1]
                rows = [(f"learned {name} mapped {picked.num_steps}->{steps} (time)", mapped),
                        (f"learned {name} mapped {picked.num_steps}->{steps} (fraction)",
                         picked.resample(steps, "fraction"))] + rows
            if front and picked is not None:
                speed = mapped.macs_ratio(comp, call)
                fast_enough = [p for p in front if p.metrics["macs_ratio"] >= speed] or \
                    [max(front, key=lambda p: p.metrics["macs_ratio"])]
                point = min(fast_enough, key=lambda p: p.metrics["quality_loss"])
                rows.append((f"searched at {steps}: {os.path.basename(point.metrics['path'])[:-5]}", point))
            for label, schedule in rows:
                out, macs = generate(steps, schedule)
                print(f"| {steps} | {preset} | {label} | {base / max(macs, 1):.2f}x | {psnr(reference, out):.1f} | "
                      f"{ssim(reference, out):.3f} |", flush=True)


if __name__ == "__main__":
    main()
