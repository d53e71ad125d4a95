"""End-to-end sparse attention: baseline vs ``attention`` configs in one process.

For each pipeline (tiny random-weight Wan / Flux at resolutions where attention matters,
and the trained demo DiT pipeline at its 64x64 resolution) and each config: paired wall time
(baseline and sparse alternate, median), MACs and PSNR/SSIM of the output vs dense.

MACs: the baseline is counted by FlopCounterMode (denoiser only). Compiled FlexAttention
is not counted reliably by FlopCounterMode, so the sparse figure is the baseline minus
the attention-core MACs the mask skips: sum over sparse calls of (1 - density) x
2·B·H·N²·D, the work a block-sparse kernel needs at the mask's density (the report's
"attention MACs of sparse calls"). Tile-level block sparsity is a little denser.

    python benchmarks/bench_attention_e2e.py            # demo DiT + wan + flux
    python benchmarks/bench_attention_e2e.py --only wan --config "{'window': 0.5}" --repeats 5
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
warnings.filterwarnings("ignore")

from accelerate_diffusion import accelerate  # noqa: E402
from accelerate_diffusion.eval.fidelity import psnr, ssim  # noqa: E402
from accelerate_diffusion.macs import MacCounter, format_macs  # noqa: E402
from accelerate_diffusion.testing import call_kwargs, make_pipeline  # noqa: E402

CASES = {
    # name: (tiny pipeline name or "demo", call overrides, configs)
    "demo": ("demo", dict(height=64, width=64), [
        dict(window=0.5),
        dict(window=0.25, dense_steps=0.3),
    ]),
    "wan": ("wan", dict(height=256, width=256, num_frames=17), [
        dict(window=(1.0, 0.5, 0.5)),                 # all frames, half of each spatial side
        dict(window=0.5),                              # half of every side, time too
        dict(window=0.5, dense_steps=1),
        dict(pattern="frame_tile", global_frames=0),
    ]),
    "flux": ("flux", dict(height=512, width=512), [
        dict(window=0.5),
        dict(window=0.25),
        dict(window=0.5, dense_steps=1),
    ]),
}


def _images(out):
    return torch.as_tensor(out.frames if hasattr(out, "frames") else out.images)


def _details(pipe):
    return pipe.acceleration.stats()["attention"]


def _timed(pipe, kw):
    start = time.perf_counter()
    out = _images(pipe(**kw))
    return time.perf_counter() - start, out


def bench_pipeline(key, steps, repeats):
    name, call, configs = CASES[key]
    if name == "demo":
        from accelerate_diffusion import demo

        pipe = demo.load_pipeline("dit")
        kw = lambda: dict(prompt="a red circle above a blue square", num_inference_steps=steps,  # noqa: E731
                          guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
                          output_type="pt", **call)
    else:
        pipe = make_pipeline(name, "small")
        kw = lambda: call_kwargs(name, "small", steps=steps, output_type="pt", **call)   # noqa: E731
    accelerate(pipe, "off", measure_macs=True)
    reference = _images(pipe(**kw()))
    base_macs = pipe.acceleration.state.macs
    pipe.acceleration.remove()
    rows = []
    for cfg in configs:
        accelerate(pipe, "off", attention=cfg)      # first call compiles flex: not timed
        out = _images(pipe(**kw()))
        rt = _details(pipe)
        stats = pipe.acceleration.report().applied[0]["stats"]
        macs = base_macs - (rt["macs_dense"] - rt["macs_kernel"])
        pipe.acceleration.remove()
        base_s, acc_s = [], []
        for r in range(repeats):
            for which in (("b", "a") if r % 2 == 0 else ("a", "b")):
                if which == "a":
                    accelerate(pipe, "off", attention=cfg)
                    acc_s.append(_timed(pipe, kw())[0])
                    pipe.acceleration.remove()
                else:
                    base_s.append(_timed(pipe, kw())[0])
        rows.append(dict(case=f"{key} {stats['token grid']}", config=cfg, base_s=statistics.median(base_s),
                         acc_s=statistics.median(acc_s), base_macs=base_macs, macs=macs,
                         psnr=psnr(reference, out), ssim=ssim(reference, out),
                         density=stats["mean attention density"], backends=stats["backends"]))
        print(_fmt(rows[-1]), flush=True)
    return rows


def bench_demo_dit(repeats):
    """The demo DiT transformer at its only resolution (64x64 images -> 8x8 tokens + 77 text)."""
    from accelerate_diffusion import demo
    from accelerate_diffusion.demo.models import new_dit
    from accelerate_diffusion.families import family_of
    from accelerate_diffusion.patches import PatchContext, attention
    from accelerate_diffusion.journal import Journal
    from accelerate_diffusion.state import AccelerationState

    trained = demo.is_available("dit")
    dit = (demo.load_pipeline("dit").transformer if trained else new_dit()).eval().requires_grad_(False)
    torch.manual_seed(0)
    c = dit.config
    inputs = dict(hidden_states=torch.randn(2, c.in_channels, c.sample_size, c.sample_size),
                  encoder_hidden_states=torch.randn(2, 77, c.joint_attention_dim),
                  pooled_projections=torch.randn(2, c.pooled_projection_dim),
                  timestep=torch.tensor([500.0, 500.0]), return_dict=False)
    with torch.no_grad(), MacCounter() as counter:
        reference = dit(**inputs)[0]
    rows = []
    for cfg in (dict(window=0.5), dict(window=0.25)):
        state = AccelerationState()
        state.in_call = True              # the denoiser is driven directly: every call is ours
        journal = Journal()
        ctx = PatchContext(None, dit, "transformer", family_of(dit), state, journal)
        handle = attention.apply(ctx, attention.Config(**cfg))
        with torch.no_grad():
            out = dit(**inputs)[0]           # compiles
            rt = handle.data()
            macs = counter.macs - (rt["macs_dense"] - rt["macs_kernel"])
            density = rt["mean attention density"]
            backends = dict(rt["backend_calls"])
            base_s, acc_s = [], []
            for _ in range(repeats * 5):
                t = time.perf_counter()
                out = dit(**inputs)[0]
                acc_s.append(time.perf_counter() - t)
                handle.remove()
                t = time.perf_counter()
                dit(**inputs)
                base_s.append(time.perf_counter() - t)
                handle = attention.apply(ctx, attention.Config(**cfg))
        handle.remove()
        err = (out - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()
        rows.append(dict(case=f"demo DiT {'trained' if trained else 'random-weight'} (8, 8)+77", config=cfg,
                         base_s=statistics.median(base_s), acc_s=statistics.median(acc_s),
                         base_macs=counter.macs, macs=macs, psnr=float("nan"), ssim=float("nan"),
                         density=density, backends=backends, rel_err=float(err)))
        print(_fmt(rows[-1]) + f"  (one transformer call; relative L2 error {err:.3f})", flush=True)
    return rows


def _fmt(r):
    return (f"{r['case']:24s} {str(r['config']):48s} density {r['density']:.3f}  "
            f"wall {r['base_s']:.3f}s -> {r['acc_s']:.3f}s ({r['base_s'] / r['acc_s']:.2f}x)  "
            f"MACs {format_macs(r['base_macs'])} -> {format_macs(r['macs'])} ({r['base_macs'] / r['macs']:.2f}x)  "
            f"PSNR {r['psnr']:.2f} dB SSIM {r['ssim']:.3f}  backends {r['backends']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=[*CASES, "dit"], action="append",
                   help="dit: the demo transformer alone, one call (no pipeline)")
    p.add_argument("--config", action="append", type=ast.literal_eval,
                   help="attention override dict replacing the built-in configs, e.g. \"{'window': 0.5}\"")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.config:
        for key, (name, call, _) in list(CASES.items()):
            CASES[key] = (name, call, args.config)
    rows = []
    for key in args.only or [*CASES, "dit"]:
        rows += bench_demo_dit(args.repeats) if key == "dit" else bench_pipeline(key, args.steps, args.repeats)
    print("\n| case | config | attn density | wall ratio (paired median) | MACs ratio | PSNR dB | SSIM | backend |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | `{r['config']}` | {r['density']:.3f} | {r['base_s'] / r['acc_s']:.2f}x "
              f"({r['base_s']:.2f}s -> {r['acc_s']:.2f}s) | {r['base_macs'] / r['macs']:.2f}x | {r['psnr']:.2f} | "
              f"{r['ssim']:.3f} | {', '.join(r['backends'])} |")


if __name__ == "__main__":
    main()
