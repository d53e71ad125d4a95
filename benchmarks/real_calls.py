"""Real calls on the published architectures: every preset runs on the real-size denoiser.

The published configs (``accelerate_diffusion/published.py``) that fit in memory on a CPU are
built with random weights (nothing is downloaded) and called through their real pipeline and
scheduler at a reduced size, 8 steps (the presets leave fewer alone), zero text embeddings,
latent output, once per preset. Printed: the denoiser MACs counted and their ratio to ``off``,
the wall time of the call, and whether the output is finite. This checks that each preset
finds its targets and runs on the real layout; random weights say nothing about quality.

    python benchmarks/real_calls.py                                  # sd15, pixart_alpha_512, sd3_medium, wan21_1_3b
    python benchmarks/real_calls.py --models sd15 --size 256
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.macs import format_macs
from accelerate_diffusion.meta import meta_call_kwargs, meta_pipeline
from accelerate_diffusion.presets import PRESETS

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd15,pixart_alpha_512,sd3_medium,wan21_1_3b", help="default: %(default)s")
    parser.add_argument("--size", type=int, default=256, help="height and width in pixels (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=5, help="video models: frames (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | size | preset | techniques | MACs | vs off | wall (s) | finite |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for name in args.models.split(","):
        start = time.perf_counter()
        pipe = meta_pipeline(name, device="cpu")
        built = time.perf_counter() - start
        kwargs = dict(steps=args.steps, height=args.size, width=args.size)
        if name.startswith("wan"):
            kwargs["num_frames"] = args.frames
        base = None
        for preset in PRESETS:
            accelerate(pipe, preset, measure_macs=True)
            start = time.perf_counter()
            out = pipe(**meta_call_kwargs(name, **kwargs))
            wall = time.perf_counter() - start
            result = out.frames if hasattr(out, "frames") else out.images
            macs = pipe.acceleration.state.macs
            base = macs if preset == "off" else base
            applied = ", ".join(h.technique for h in pipe.acceleration.handles) or "-"
            frames = f"x{args.frames}f" if "num_frames" in kwargs else ""
            print(f"| {name} | {args.size}px{frames} | {preset} | {applied} | {format_macs(macs)} | "
                  f"{base / max(macs, 1):.2f}x | {wall:.1f} | {bool(torch.isfinite(torch.as_tensor(result)).all())} |",
                  flush=True)
            pipe.acceleration.remove()
        print(f"(built {name} with random weights in {built:.0f} s)", flush=True)
        del pipe


if __name__ == "__main__":
    main()
