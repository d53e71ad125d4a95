"""Where sparse attention pays on Wan, by token count (MACs; no wall time).

Sparse attention only speeds up the image self-attention core (QK^T and PV); the rest of the
denoiser (projections, feed-forwards, cross-attention) runs as before. So what it buys end to
end depends on the share of the denoiser's MACs in that core, which grows with the number of
video tokens. For the tiny ``small`` Wan pipeline and the published Wan 2.1 1.3B and 14B
configs (meta device), at several resolutions and clip lengths, two steps with
``attention={"window": 0.5}`` (Wan's ``max`` setting) give the share and the mask density, and
from them the denoiser speedup (Amdahl) for a kernel that reaches a fraction ``e`` of the
ideal attention speedup 1/density:

    denoiser speedup = 1 / ((1 - share) + share * density / e)

``e = 1`` is the ideal block-sparse kernel (the MACs figure of docs/real_models.md); the other
columns take the fractions of ideal measured for compiled FlexAttention on CPU
(``benchmarks/bench_flex_cpu.py``, docs/kernels.md: 2D sliding window, tiled order, and
strided pattern; 2D patterns on a 64x64 grid, not these 3D grids). It pays where the speedup
is above 1, i.e. where the kernel beats dense attention (e > density) and the share is large
enough for that to show.

    python benchmarks/attention_token_counts.py
    python benchmarks/attention_token_counts.py --models wan21_1_3b --efficiency 1,0.5
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from real_architectures import WINDOW, attention_probe  # noqa: E402

from accelerate_diffusion.meta import meta_call_kwargs, meta_pipeline  # noqa: E402
from accelerate_diffusion.testing import call_kwargs, make_pipeline  # noqa: E402

# (height, width, frames) per model; the published Wan 2.1 480p setting is 480 x 832, 81 frames
SETTINGS = {
    "small": [(128, 128, 9), (256, 256, 17), (256, 256, 33), (512, 512, 17)],
    "wan21_1_3b": [(256, 256, 17), (480, 832, 1), (480, 832, 17), (480, 832, 41), (480, 832, 81), (720, 1280, 81)],
    "wan21_14b": [(480, 832, 17), (480, 832, 81), (720, 1280, 81)],
}
LABELS = {"small": "tiny Wan (small, random weights)", "wan21_1_3b": "Wan 2.1 T2V 1.3B", "wan21_14b": "Wan 2.1 T2V 14B"}
# fractions of ideal measured on CPU (docs/kernels.md): compiled flex, 2D sliding (tiled order) / strided
EFFICIENCY = (1.0, 0.58, 0.27)


def denoiser_speedup(share: float, density: float, efficiency: float) -> float:
    """Amdahl: the attention core runs at ``efficiency / density`` times dense speed."""
    return 1.0 / ((1.0 - share) + share * density / efficiency)


def probe(model: str, height: int, width: int, frames: int) -> dict:
    if model == "small":
        pipe = make_pipeline("wan", "small")
        kwargs = call_kwargs("wan", "small", steps=2, height=height, width=width, num_frames=frames)
    else:
        pipe = meta_pipeline(model)
        kwargs = meta_call_kwargs(model, steps=2, height=height, width=width, num_frames=frames)
    return attention_probe(pipe, "wan", kwargs, window=WINDOW)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(SETTINGS), help="comma-separated: " + ", ".join(SETTINGS))
    parser.add_argument("--efficiency", default=",".join(str(e) for e in EFFICIENCY),
                        help="fractions of the ideal attention speedup a kernel reaches (1 = ideal)")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in SETTINGS:
            parser.error(f"--models: unknown model {m!r}; allowed: {', '.join(SETTINGS)}")
    try:
        effs = [float(e) for e in args.efficiency.split(",")]
    except ValueError:
        parser.error(f"--efficiency: numbers in (0, 1] separated by commas, got {args.efficiency!r}")
    if not all(0 < e <= 1 for e in effs):
        parser.error(f"--efficiency: numbers in (0, 1], got {args.efficiency!r}")
    torch.set_num_threads(1)
    head = " | ".join(f"denoiser at e={e:g}" for e in effs)
    print(f"| model | size x frames | token grid | image tokens | self-attention share | density | {head} |")
    print("|---|---|---|---|---|---|" + "---|" * len(effs))
    for m in models:
        for h, w, f in SETTINGS[m]:
            r = probe(m, h, w, f)
            cells = " | ".join(f"{denoiser_speedup(r['share'], r['density'], e):.2f}x" for e in effs)
            grid = " x ".join(str(g) for g in r["token_grid"])
            print(f"| {LABELS[m]} | {w}x{h} x {f} | {grid} | {r['image_tokens']:,} | {100 * r['share']:.1f} % | "
                  f"{r['density']:.3f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
