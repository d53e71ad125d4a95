"""Region-adaptive sampling: wall ratio, MACs ratio and PSNR/SSIM vs dense, per sample ratio.

For each pipeline (the demo DiT when `accelerate_diffusion.demo.load_pipeline("dit")`
exists, tiny SD3 and Flux at size "small") and each sample ratio, one dense and one RAS
run with MACs counted give the MACs ratio and PSNR/SSIM of the images; then dense and
every ratio are timed in rotating order (paired, median). It also measures the sign of ``starvation_scale`` (the
longest run of steps a token stays cached, and the share of tokens never recomputed on
the sparse steps) and draws the per-step map of active tokens of one prompt.

    python benchmarks/bench_ras.py                                  # all, ratios .75/.5/.33
    python benchmarks/bench_ras.py --pipelines sd3 --ratios 0.5 --repeats 3
    python benchmarks/bench_ras.py --plot docs/ras_active_tokens.png --pipelines demo
"""

from __future__ import annotations

import argparse
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
from accelerate_diffusion.eval.macs import format_macs  # noqa: E402

PROMPT = "a red circle above a blue square"


def pipelines(names, steps, size="small"):
    """name -> (pipe, label, make_kwargs)."""
    out = {}
    for name in names:
        if name == "demo":
            try:
                from accelerate_diffusion import demo
                pipe = demo.load_pipeline("dit")
            except Exception as exc:  # noqa: BLE001 - say why and go on
                print(f"# demo DiT unavailable ({exc!r:.120}); skipped")
                continue
            pipe.set_progress_bar_config(disable=True)

            def make(pipe=pipe):
                return dict(prompt=PROMPT, num_inference_steps=steps, guidance_scale=5.0,
                            height=64, width=64, output_type="pt",
                            generator=torch.Generator("cpu").manual_seed(0))
            out[name] = (pipe, "demo-dit (trained, 64 px)", make)
        else:
            pipe = testing.make_pipeline(name, size)
            px = testing.CALL_DEFAULTS[(name, size)]["height"]

            def make(name=name):
                return testing.call_kwargs(name, size, steps=steps, output_type="pt")
            out[name] = (pipe, f"{name}-{size} (random weights, {px} px)", make)
    return out


def _images(out):
    return torch.as_tensor(out.images)


def measure(pipe, make, ratios, repeats):
    """Dense and RAS runs: MACs and fidelity (counted runs), then paired wall times."""
    accelerate(pipe, "off", measure_macs=True)
    reference = _images(pipe(**make()))
    dense_macs = pipe.acceleration.state.macs
    pipe.acceleration.remove()
    rows = {}
    for ratio in ratios:
        accelerate(pipe, "off", measure_macs=True, ras={"sample_ratio": ratio})
        image = _images(pipe(**make()))
        handle = pipe.acceleration.handles[0]
        rows[ratio] = dict(macs=pipe.acceleration.state.macs, psnr=psnr(reference, image),
                           ssim=ssim(reference, image), stats=handle.statistics(),
                           maps=handle.runtime.active_maps(0), image=image[0], times=[])
        pipe.acceleration.remove()
        print(f"# counted: ratio {ratio}: MACs {format_macs(rows[ratio]['macs'])} vs dense "
              f"{format_macs(dense_macs)}, PSNR {rows[ratio]['psnr']:.2f}", flush=True)
    dense_times = []
    runs = [None] + list(ratios)
    for r in range(repeats):
        order = runs[r % len(runs):] + runs[:r % len(runs)]     # rotate who goes first
        for ratio in order:
            if ratio is not None:
                accelerate(pipe, "off", ras={"sample_ratio": ratio})
            start = time.perf_counter()
            pipe(**make())
            seconds = time.perf_counter() - start
            if ratio is None:
                dense_times.append(seconds)
            else:
                pipe.acceleration.remove()
                rows[ratio]["times"].append(seconds)
    return dense_macs, dense_times, rows


def staleness(history, n):
    """Longest run of steps a token stays cached; share never recomputed on sparse steps."""
    stale, worst, seen = torch.zeros(n), 0, torch.zeros(n, dtype=torch.bool)
    for idx in history:
        active = torch.ones(n, dtype=torch.bool)
        if idx is not None:
            active = torch.zeros(n, dtype=torch.bool)
            active[idx[0]] = True
            seen |= active
        stale = torch.where(active, 0, stale + 1)
        worst = max(worst, int(stale.max()))
    return worst, 1 - seen.float().mean().item()


def starvation_sign(pipe, make, ratio=0.33, scales=(-0.5, 0.0, 0.5, 1.0, 2.0)):
    accelerate(pipe, "off")
    reference = _images(pipe(**make()))
    pipe.acceleration.remove()
    rows = []
    for scale in scales:
        accelerate(pipe, "off", ras={"sample_ratio": ratio, "starvation_scale": scale})
        image = _images(pipe(**make()))
        runtime = pipe.acceleration.handles[0].runtime
        h, w = runtime.grid
        worst, never = staleness(runtime.history, h * w)
        pipe.acceleration.remove()
        rows.append((scale, worst, never, psnr(reference, image)))
    return rows


def plot_maps(maps, image, path, ratio, label):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 7
    nrows = -(-(len(maps) + 1) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(cols * 1.6, nrows * 1.95))
    axes = axes.flatten()
    for i, m in enumerate(maps):
        axes[i].imshow(m.numpy(), cmap="gray_r", vmin=0, vmax=1)
        axes[i].set_title(f"step {i}{' (dense)' if bool(m.all()) else ''}", fontsize=7)
    axes[len(maps)].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    axes[len(maps)].set_title("RAS output", fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    fig.suptitle(f"RAS active tokens per step (black = recomputed, white = cached), "
                 f"sample_ratio {ratio}\n{label}, prompt {PROMPT!r}", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"# wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipelines", nargs="+", default=["demo", "sd3", "flux"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.75, 0.5, 0.33])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", default="small", choices=["micro", "small"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--plot", default=None, help="PNG path for the per-step active-token map")
    ap.add_argument("--starvation", nargs="*", default=None,
                    help="pipelines for the starvation_scale sign study (default: the first)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    pipes = pipelines(args.pipelines, args.steps, args.size)
    print(f"## RAS vs dense, {args.steps} steps, FlowMatchEuler; defaults start_step 4, "
          f"error_reset_steps (0.4, 0.75), starvation_scale 0.5, metric std; wall = median of "
          f"{args.repeats} paired runs (rotating order) on a shared CPU", flush=True)
    print("| pipeline | sample_ratio | dense s | RAS s | wall ratio | dense MACs | RAS MACs "
          "| MACs ratio | PSNR dB | SSIM | sparse steps | mean active fraction |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    plotted = False
    for name, (pipe, label, make) in pipes.items():
        dense_macs, dense_times, rows = measure(pipe, make, args.ratios, args.repeats)
        dense_s = statistics.median(dense_times)
        for ratio, r in rows.items():
            ras_s = statistics.median(r["times"])
            print(f"| {label} | {ratio} | {dense_s:.2f} | {ras_s:.2f} | {dense_s / ras_s:.2f}x | "
                  f"{format_macs(dense_macs)} | {format_macs(r['macs'])} | "
                  f"{dense_macs / max(r['macs'], 1):.2f}x | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                  f"{r['stats']['sparse steps']} | {r['stats']['mean active fraction']} |", flush=True)
        if args.plot and not plotted and 0.5 in rows:
            plot_maps(rows[0.5]["maps"], rows[0.5]["image"], args.plot, 0.5, label)
            plotted = True

    study = args.starvation if args.starvation is not None else list(pipes)[:1]
    if study:
        print("\n## starvation_scale sign (sample_ratio 0.33): longest run of steps a token stays "
              "cached, share of tokens never recomputed on the sparse steps, PSNR vs dense")
        print("| pipeline | starvation_scale | longest cached run | never recomputed | PSNR dB |")
        print("|---|---|---|---|---|", flush=True)
        for name in study:
            pipe, label, make = pipes[name]
            for scale, worst, never, p in starvation_sign(pipe, make):
                print(f"| {label} | {scale} | {worst} | {never:.1%} | {p:.2f} |", flush=True)


if __name__ == "__main__":
    main()
