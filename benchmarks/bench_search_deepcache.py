"""Calibrated DeepCache (exhaustive grid) vs the UNet presets, on held-out prompts.

Takes a folder written by ``accelerate-diffusion search`` on a UNet model and, on prompts
*not* used in the calibration (demo test split items 0-7), runs every front point, the
presets' DeepCache settings alone, the presets as shipped (guidance included), and each
preset with ``deepcache={"schedule_dir": ...}`` (the front point the preset's MACs target picks, the preset's
other techniques kept). It counts denoiser MACs (ratio vs uncached) and measures PSNR/SSIM of
the decoded images vs the uncached ones (same seeds). For each preset it reports the best front
point (held-out PSNR) at an equal or higher MACs ratio.

    accelerate-diffusion search --model demo-unet --prompts benchmarks/search_demo_unet_prompts.txt \\
        --steps 25 --metric psnr --out runs/deepcache-demo-unet
    python benchmarks/bench_search_deepcache.py --front runs/deepcache-demo-unet
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.loading import load_pipeline
from accelerate_diffusion.eval.fidelity import psnr, ssim
from accelerate_diffusion.families import family_of, find_denoiser
from accelerate_diffusion.schedules.fronts import load_deepcache_front, pick_deepcache  # noqa: E402
from accelerate_diffusion.schedules.search_deepcache import (PRESET_ORDER,
                                                              preset_configs)

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--front", required=True, help="folder written by `accelerate-diffusion search`")
    parser.add_argument("--model", default="demo-unet")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--held-out", type=int, default=8, help="demo test split items 0..n-1")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from accelerate_diffusion.demo.dataset import make_item

    prompts = [make_item(i, split="test")[1] for i in range(args.held_out)]
    pipe = load_pipeline(args.model)
    family = family_of(find_denoiser(pipe)[1])

    def run(preset: str, **acc):
        kw = {"prompt": prompts, "num_inference_steps": args.steps, "guidance_scale": args.guidance,
              "output_type": "pt", "generator": [torch.Generator("cpu").manual_seed(i) for i in range(len(prompts))]}
        accelerate(pipe, preset, measure_macs=True, **acc)
        try:
            with torch.no_grad():
                images = pipe(**kw).images
            applied = pipe.acceleration.plan.get("deepcache")
            return images, pipe.acceleration.state.macs, applied
        finally:
            pipe.acceleration.remove()

    reference, base_macs, _ = run("off")
    rows = []

    def add(label: str, kind: str, preset: str, calib: float | None = None, **acc) -> dict:
        images, macs, applied = run(preset, **acc)
        row = {"label": label, "kind": kind, "macs_ratio": base_macs / macs, "psnr": psnr(reference, images),
               "ssim": ssim(reference, images), "calibration_psnr": calib,
               "deepcache": None if applied is None else applied.to_dict()}
        rows.append(row)
        print(f"{label:44s} {kind:16s} {row['macs_ratio']:5.2f}x  PSNR {row['psnr']:6.2f} dB  SSIM {row['ssim']:.4f}"
              + ("" if calib is None else f"  (calibration {calib:.2f} dB)"), flush=True)
        return row

    front = load_deepcache_front(args.front)
    metric = front[0].metrics["quality_metric"]
    to_db = (lambda loss: 100 * (1 - loss)) if metric == "psnr" else (lambda loss: None)
    for p in front:
        add(f"{p.name}: {p.label()}", "front", "off", to_db(p.metrics["quality_loss"]), deepcache=p.config)
    for name, cfg in preset_configs(family):
        add(f"{name}: N={cfg.cache_interval} b={cfg.cache_branch}", "preset deepcache", "off",
            deepcache=cfg.to_dict())
    for name in PRESET_ORDER:
        add(f"{name} (as shipped)", "preset", name)
        add(f"{name} + schedule_dir ({pick_deepcache(args.front, preset=name).label()})", "preset + front", name,
            deepcache={"schedule_dir": args.front})

    print("\nBest front point (held-out PSNR) at >= each preset's DeepCache MACs ratio:")
    print("| preset | preset DeepCache | MACs | PSNR dB | SSIM | best front point | MACs | PSNR dB | SSIM | dominates |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    fronts = [r for r in rows if r["kind"] == "front"]
    for r in (r for r in rows if r["kind"] == "preset deepcache"):
        ok = [f for f in fronts if f["macs_ratio"] >= r["macs_ratio"] - 1e-9]
        best = max(ok, key=lambda f: f["psnr"]) if ok else None
        if best is None:
            print(f"| {r['label']} | | {r['macs_ratio']:.2f}x | {r['psnr']:.2f} | {r['ssim']:.4f} | none as fast | | | | |")
            continue
        dom = best["psnr"] >= r["psnr"] and best["ssim"] >= r["ssim"]
        name, cfg = r["label"].split(": ", 1)
        print(f"| {name} | {cfg} | {r['macs_ratio']:.2f}x | {r['psnr']:.2f} | {r['ssim']:.4f} | "
              f"{best['label'].split(': ', 1)[1]} | {best['macs_ratio']:.2f}x | {best['psnr']:.2f} | {best['ssim']:.4f} | "
              f"{'yes' if dom else 'no'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prompts": prompts, "steps": args.steps, "guidance": args.guidance, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
