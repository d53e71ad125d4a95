"""Searched (ECAD) block-cache schedules vs the heuristic ones, on held-out prompts.

Takes a folder written by ``accelerate-diffusion search`` and, on prompts *not* used in the
search, runs every front schedule, the heuristic schedules (the search's seeds) and
optionally diffusers' FirstBlockCache, counting denoiser MACs (ratio vs uncached) and
measuring SSIM/PSNR of the decoded images vs the uncached ones (same seeds). For each
heuristic it reports the best front schedule at equal or higher MACs ratio. ``--steps2``
repeats the comparison at another step count, the front mapped in normalised time and the
heuristics rebuilt for that count.

    accelerate-diffusion search --model pixart --size small --resolution 64 --steps 12 \\
        --generations 7 --population 20 --prompts benchmarks/search_calibration_prompts.txt --out runs/ecad
    python benchmarks/bench_search.py --model pixart --resolution 64 --front runs/ecad --steps 12 --steps2 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.eval.fidelity import psnr, ssim
from accelerate_diffusion.families import family_of, find_denoiser
from accelerate_diffusion.schedules import ScheduleLayout
from accelerate_diffusion.schedules.fronts import load_front
from accelerate_diffusion.schedules.search import heuristic_seeds

warnings.filterwarnings("ignore")

HELD_OUT = [
    "a blue star in the bottom right on a white background",
    "a yellow circle below a purple diamond",
    "three shapes from left to right: a red square, a green circle and a blue cross",
    "a large orange triangle at the top on a checkered beige background",
]


def held_out(model: str) -> list[str]:
    """Held-out prompts: for the demo DiT, 8 captions of the demo dataset's test split (the
    search calibrates on val captions); for the tiny pipelines, ``HELD_OUT``."""
    if model == "demo-dit":
        from accelerate_diffusion.demo import dataset

        return [dataset.make_item(i, split="test")[1] for i in range(8)]
    return list(HELD_OUT)


def load(model: str, size: str):
    if model == "demo-dit":
        from accelerate_diffusion import demo

        return demo.load_pipeline("dit"), {"guidance_scale": demo.DEFAULT_GUIDANCE}
    from accelerate_diffusion.testing import call_kwargs, make_pipeline

    kw = call_kwargs(model, size)
    return make_pipeline(model, size), {k: v for k, v in kw.items()
                                        if k not in ("prompt", "generator", "output_type", "num_inference_steps")}


def run(pipe, extra, prompts, steps, block_cache=None, diffusers_cache=None, count=True):
    kw = {**extra, "prompt": prompts, "num_inference_steps": steps, "output_type": "pt",
          "generator": [torch.Generator("cpu").manual_seed(1000 + i) for i in range(len(prompts))]}
    overrides = {"block_cache": block_cache} if block_cache is not None else {}
    if diffusers_cache is not None:
        diffusers_cache.reset()
    accelerate(pipe, "off", measure_macs=count, **overrides)
    try:
        with torch.no_grad():
            out = pipe(**kw).images
        return torch.as_tensor(out).float(), pipe.acceleration.state.macs
    finally:
        pipe.acceleration.remove()


def compare(pipe, extra, prompts, steps, front, layout, fbc: list[float], estimate: bool = False) -> list[dict]:
    """``estimate``: schedules' MACs from counted per-component MACs (``macs_ratio``), not counted
    per run (FlopCounterMode is slow on a loaded CPU; the tests check the two agree within 2 %)."""
    reference, base = run(pipe, extra, prompts, steps, count=not estimate)
    rows = []
    base = 1e12 if estimate else base          # a unit: ratios are what is reported
    if estimate:
        from accelerate_diffusion.schedules import measure_component_macs

        kw = {**extra, "prompt": prompts, "num_inference_steps": steps, "output_type": "pt"}
        comp, call = measure_component_macs(pipe, kw)

    def cached(sched):
        out, macs = run(pipe, extra, prompts, steps, {"mode": "schedule", "schedule": sched}, count=not estimate)
        if estimate:
            macs = base / sched.resample(steps).macs_ratio(comp, call)
        return out, macs

    def record(kind, label, out, macs):
        row = {"kind": kind, "label": label, "steps": steps, "macs_ratio": base / max(macs, 1),
               "ssim": ssim(reference, out), "psnr": psnr(reference, out)}
        rows.append(row)
        print(f"  {kind:9s} {label:52s} {row['macs_ratio']:5.2f}x  SSIM {row['ssim']:.4f}  PSNR {row['psnr']:6.2f}",
              flush=True)

    for sched in front:
        out, macs = cached(sched)
        record("searched", os.path.basename(sched.metrics.get("path", sched.name)), out, macs)
    for sched in heuristic_seeds(layout, steps):
        out, macs = cached(sched)
        record("heuristic", sched.name, out, macs)
    if fbc and estimate:
        print("  diffusers caches skipped: their MACs can only be counted (drop --estimate-macs)")
    elif fbc:
        sys.path.insert(0, os.path.dirname(__file__))
        import copy

        from bench_block_cache import DiffusersCache
        from diffusers import FirstBlockCacheConfig

        pristine = copy.deepcopy(find_denoiser(pipe)[1])
        for t in fbc:
            cache = DiffusersCache(pipe, FirstBlockCacheConfig(threshold=t), pristine)
            try:
                out, macs = run(pipe, extra, prompts, steps, diffusers_cache=cache)
            finally:
                cache.close()
            record("diffusers", f"FirstBlockCache t={t}", out, macs)
    return rows


def dominance(rows: list[dict]) -> list[str]:
    """Per heuristic: the best searched schedule at >= its MACs ratio, and whether it dominates."""
    lines = ["| heuristic | MACs ratio | SSIM | best searched at >= MACs | its MACs | its SSIM | dominates |",
             "|---|---:|---:|---|---:|---:|---|"]
    searched = [r for r in rows if r["kind"] == "searched"]
    wins = 0
    others = [r for r in rows if r["kind"] != "searched"]
    for h in others:
        faster = [s for s in searched if s["macs_ratio"] >= h["macs_ratio"] - 1e-9]
        if not faster:
            lines.append(f"| {h['label']} | {h['macs_ratio']:.2f}x | {h['ssim']:.4f} | none as fast | | | no |")
            continue
        best = max(faster, key=lambda s: s["ssim"])
        dom = best["ssim"] >= h["ssim"]
        wins += dom
        lines.append(f"| {h['label']} | {h['macs_ratio']:.2f}x | {h['ssim']:.4f} | {best['label']} | "
                     f"{best['macs_ratio']:.2f}x | {best['ssim']:.4f} | {'yes' if dom else 'no'} |")
    lines.append(f"\nsearched front dominates {wins} of {len(others)} other schedules on held-out prompts")
    return lines


def table(rows: list[dict]) -> list[str]:
    lines = ["| kind | schedule | steps | MACs ratio | SSIM | PSNR dB |", "|---|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["kind"], -r["macs_ratio"])):
        lines.append(f"| {r['kind']} | {r['label']} | {r['steps']} | {r['macs_ratio']:.2f}x | {r['ssim']:.4f} | "
                     f"{r['psnr']:.2f} |")
    return lines


def plot(all_rows: list[list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_rows), figsize=(6 * len(all_rows), 4.5), squeeze=False)
    for ax, rows in zip(axes[0], all_rows):
        for kind, marker, color in (("searched", "o", "tab:blue"), ("heuristic", "s", "tab:orange"),
                                    ("diffusers", "^", "tab:green")):
            pts = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["macs_ratio"])
            ax.plot([r["macs_ratio"] for r in pts], [1 - r["ssim"] for r in pts], marker=marker, color=color,
                    ls="-" if kind == "searched" else "", label=kind)
            if kind != "searched":
                for r in pts:
                    ax.annotate(r["label"][:24], (r["macs_ratio"], 1 - r["ssim"]), fontsize=6, alpha=0.8)
        ax.set_title(f"held-out prompts, {rows[0]['steps']} steps")
        ax.set_xlabel("denoiser MACs ratio vs uncached")
        ax.set_ylabel("1 - SSIM vs uncached (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pixart", help="tiny pipeline name or demo-dit")
    parser.add_argument("--size", default="small")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--front", required=True, help="folder written by `accelerate-diffusion search`")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--steps2", type=int, default=0, help="also compare at this step count (mapped)")
    parser.add_argument("--max-front", type=int, default=10, help="at most this many front points (evenly spaced)")
    parser.add_argument("--fbc", default="0.05,0.1,0.2", help="diffusers FirstBlockCache thresholds ('' = none)")
    parser.add_argument("--estimate-macs", action="store_true",
                        help="schedules' MACs from counted per-component MACs instead of counting every run")
    parser.add_argument("--plot", default="")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    pipe, extra = load(args.model, args.size)
    if args.resolution and args.model != "demo-dit":
        extra.update(height=args.resolution, width=args.resolution)
    denoiser = find_denoiser(pipe)[1]
    layout = ScheduleLayout.of(family_of(denoiser), denoiser)
    front = sorted(load_front(args.front), key=lambda s: s.metrics["macs_ratio"])
    if len(front) > args.max_front:
        idx = sorted({round(i * (len(front) - 1) / (args.max_front - 1)) for i in range(args.max_front)})
        front = [front[i] for i in idx]
    fbc = [float(t) for t in args.fbc.split(",") if t]
    summary = json.load(open(os.path.join(args.front, "search-summary.txt")))
    print(f"search: {summary['evaluations']} evaluations, {summary['generations']} generations, "
          f"{summary['wall_seconds']:.0f} s, population {summary['config']['population']}, "
          f"{len(summary['prompts'])} calibration prompts, {summary['config']['steps']} steps")
    all_rows = []
    for steps in [args.steps] + ([args.steps2] if args.steps2 else []):
        prompts = held_out(args.model)
        print(f"\n== {args.model} {args.size} {args.resolution}px, {steps} steps, {len(prompts)} held-out prompts")
        rows = compare(pipe, extra, prompts, steps, front, layout, fbc, args.estimate_macs)
        all_rows.append(rows)
        print("\n" + "\n".join(table(rows)) + "\n\n" + "\n".join(dominance(rows)))
    if args.plot:
        plot(all_rows, args.plot)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
