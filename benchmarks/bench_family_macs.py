"""Denoiser MACs per preset, per family, on the tiny pipelines of the real classes.

One generation per preset (same seed, same call), MACs counted on every denoiser call the
techniques let run (both experts of Wan 2.2 included); the ratio is against `off` in the same
process. MACs do not depend on the machine, so this is the speed figure for families we have
no trained weights for (random weights: no fidelity figure here).

    python benchmarks/bench_family_macs.py --size small --steps 20
    python benchmarks/bench_family_macs.py --pipelines qwenimage,wan22 --size small --steps 20
    python benchmarks/bench_family_macs.py --pipelines lumina2 --ras 0.5,0.25   # RAS alone beside the presets
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from accelerate_diffusion import PRESETS, accelerate  # noqa: E402
from accelerate_diffusion.families import family_of, find_denoiser  # noqa: E402
from accelerate_diffusion.macs import format_macs  # noqa: E402
from accelerate_diffusion.testing import PIPELINES, call_kwargs, make_pipeline, output_tensor  # noqa: E402


def measure(name: str, size: str, steps: int, ras: tuple[float, ...] = ()) -> list[dict]:
    """One row per preset: MACs, ratio vs off, uncond evaluations skipped, block outputs reused;
    then, for families with a RAS layout, one row per RAS ``sample_ratio`` alone (on `off`)."""
    pipe = make_pipeline(name, size)
    rows, base = [], None
    runs = [(preset, {}) for preset in PRESETS]
    if family_of(find_denoiser(pipe)[1]).ras is not None:
        runs += [(f"ras {r:g}", {"ras": {"sample_ratio": r}}) for r in ras]
    for preset, extra in runs:
        accelerate(pipe, "off" if extra else preset, measure_macs=True, **extra)
        start = time.perf_counter()
        out = pipe(**call_kwargs(name, size, steps=steps))
        seconds = time.perf_counter() - start
        result = output_tensor(out)
        gen = pipe.acceleration.report().generation
        counters = gen["counters"]
        applied = [h.technique for h in pipe.acceleration.handles]
        pipe.acceleration.remove()
        base = gen["macs"] if preset == "off" else base
        rows.append(dict(pipeline=name, preset=preset, macs=gen["macs"], ratio=base / gen["macs"],
                         skipped=counters.get("guidance_nfe_saved", 0),
                         reused=counters.get("components_reused", 0), techniques=", ".join(sorted(applied)) or "-",
                         finite=bool(torch.isfinite(torch.as_tensor(result)).all()), seconds=seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", default="sd,sdxl,pixart,sd3,flux,qwenimage,wan,wan22,wan_vace,cogvideox,"
                                                "hunyuan_video,lumina2,sana,kolors,chroma,flux2,qwenimage21",
                        help=f"comma-separated tiny pipelines ({', '.join(PIPELINES)})")
    parser.add_argument("--size", default="small", choices=["micro", "small"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ras", default="", help="comma-separated RAS sample ratios, run alone on the families "
                                                  "with a RAS layout (e.g. 0.5,0.25)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"size {args.size}, {args.steps} steps, latent output, seed 0; MACs on the denoiser(s)\n")
    print("| pipeline | preset | denoiser MACs | vs off | uncond evaluations skipped | block outputs reused | techniques |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name in args.pipelines.split(","):
        for r in measure(name, args.size, args.steps, tuple(float(v) for v in args.ras.split(",") if v)):
            if not r["finite"]:
                raise SystemExit(f"{name} / {r['preset']}: the output is not finite")
            rows.append(r)
            print(f"| {r['pipeline']} | {r['preset']} | {format_macs(r['macs'])} | {r['ratio']:.2f}x | "
                  f"{r['skipped']} | {r['reused']} | {r['techniques']} |", flush=True)
    presets = [p for p in PRESETS if p != "off"]
    print("\n| pipeline | `off` MACs | " + " | ".join(f"`{p}`" for p in presets) + " |")
    print("|---|---|" + "---|" * len(presets))
    for name in args.pipelines.split(","):
        mine = {r["preset"]: r for r in rows if r["pipeline"] == name}
        print(f"| {name} | {format_macs(mine['off']['macs'])} | "
              + " | ".join(f"{mine[p]['ratio']:.2f}x" for p in presets) + " |")


if __name__ == "__main__":
    main()
