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
from accelerate_diffusion.macs import format_macs  # noqa: E402

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
        elif name == "demo-arch":
            pipe = demo_architecture()

            def make(pipe=pipe):
                return dict(prompt=PROMPT, num_inference_steps=steps, guidance_scale=5.0,
                            height=64, width=64, output_type="pt",
                            generator=torch.Generator("cpu").manual_seed(0))
            out[name] = (pipe, "demo-dit architecture (random weights, 64 px)", make)
        else:
            pipe = testing.make_pipeline(name, size)
            px = testing.CALL_DEFAULTS[(name, size)]["height"]

            def make(name=name):
                return testing.call_kwargs(name, size, steps=steps, output_type="pt")
            out[name] = (pipe, f"{name}-{size} (random weights, {px} px)", make)
    return out


def _images(out):
    return torch.as_tensor(out.images)


class CallMeter:
    """Per denoiser call of one run: wall seconds, dense or sparse, and the MACs of the
    first call of each kind (a call's MACs depend only on its kind and active count)."""

    def __init__(self, pipe):
        from torch.utils.flop_counter import FlopCounterMode

        from accelerate_diffusion.macs import register_cpu_attention_flops
        register_cpu_attention_flops()
        self.pipe, self.calls, self.macs, self._mode_cls = pipe, [], {}, FlopCounterMode
        t = pipe.transformer
        self.handles = [t.register_forward_pre_hook(self.pre), t.register_forward_hook(self.post)]

    def _sparse_calls(self):
        acc = getattr(self.pipe, "acceleration", None)
        return acc.state.counters["ras_sparse_calls"] if acc is not None else 0

    def pre(self, module, args):
        self._before = self._sparse_calls()
        self._mode = None
        n = len(self.calls)
        # count the first call (dense) and the call at step 4 (start_step: the first sparse
        # one under batched CFG); if a kind is still missing, count until it shows up. Few
        # calls are counted, so most dense and sparse calls keep a clean timing.
        if n in (0, 4) or (n > 4 and len(self.macs) < 2):
            self._mode = self._mode_cls(display=False)
            self._mode.__enter__()
        self._start = time.perf_counter()

    def post(self, module, args, output):
        seconds = time.perf_counter() - self._start
        kind = "sparse" if self._sparse_calls() > self._before else "dense"
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.macs.setdefault(kind, self._mode.get_total_flops() // 2)
        else:
            self.calls.append((kind, seconds))
            return
        self.calls.append((kind, None))     # the counted call's time is not representative

    def remove(self):
        for h in self.handles:
            h.remove()

    def summary(self):
        """(dense calls, sparse calls, median dense s, median sparse s)."""
        dense = [s for k, s in self.calls if k == "dense" and s is not None]
        sparse = [s for k, s in self.calls if k == "sparse" and s is not None]
        n_d = sum(1 for k, _ in self.calls if k == "dense")
        med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
        return n_d, len(self.calls) - n_d, med(dense), med(sparse)


def measure(pipe, make, ratios, repeats, dense=True):
    """One dense run, then one RAS run per ratio, each with a CallMeter.

    Wall: the generation time of each run (single runs, same process, one after the
    other) and, steadier on a loaded machine, the per-call ratio: the median time of the
    dense and of the sparse denoiser calls *inside the same RAS run* (paired by
    construction), composed over the run's dense/sparse call counts. MACs: dense and
    sparse call MACs (counted once each) composed over the call counts (exact: a call's
    MACs depend only on its kind). ``repeats`` > 1 repeats the whole set, rotating order."""
    results, dense_runs = {r: [] for r in ratios}, []
    images = {}
    for rep in range(max(1, repeats)):
        runs = ([None] if dense else []) + list(ratios)
        runs = runs[rep % len(runs):] + runs[:rep % len(runs)]
        for ratio in runs:
            if ratio is not None:
                accelerate(pipe, "off", ras={"sample_ratio": ratio})
            meter = CallMeter(pipe)
            start = time.perf_counter()
            image = _images(pipe(**make()))
            seconds = time.perf_counter() - start
            meter.remove()
            if ratio is None:
                dense_runs.append((seconds, meter))
                images[None] = image
            else:
                ras = pipe.acceleration.stats()["ras"]
                results[ratio].append(dict(seconds=seconds, meter=meter, stats=ras, maps=ras["active_maps"]))
                images[ratio] = image
                pipe.acceleration.remove()
            print(f"# run: ratio {ratio}: {seconds:.1f} s", flush=True)
    dense_s = statistics.median(s for s, _ in dense_runs) if dense_runs else float("nan")
    dense_macs_call = (dense_runs[0][1] if dense_runs else results[ratios[0]][0]["meter"]).macs["dense"]
    rows = {}
    for ratio in ratios:
        runs = results[ratio]
        meter = runs[0]["meter"]
        n_d, n_s, t_d, t_s = meter.summary()
        macs = n_d * meter.macs.get("dense", dense_macs_call) + n_s * meter.macs.get("sparse", 0)
        per_call = (n_d + n_s) * t_d / (n_d * t_d + n_s * t_s) if n_s else 1.0
        rows[ratio] = dict(
            seconds=statistics.median(r["seconds"] for r in runs), per_call_ratio=per_call,
            call_ratio=t_d / t_s if n_s else 1.0,
            macs=macs, dense_macs=(n_d + n_s) * dense_macs_call,
            psnr=psnr(images[None], images[ratio]) if dense_runs else float("nan"),
            ssim=ssim(images[None], images[ratio]) if dense_runs else float("nan"),
            stats=runs[0]["stats"], maps=runs[0]["maps"], image=images[ratio][0])
    return dense_s, rows


def alternating_calls(pipe, make, ratio=0.5, pairs=4):
    """Median wall of dense vs sparse denoiser calls when they alternate in one run
    (per-step ratios 1.0, r, 1.0, r, ...): each sparse call is paired with its neighbour."""
    times = []
    t = pipe.transformer
    hooks = [t.register_forward_pre_hook(lambda m, a: times.append([time.perf_counter()])),
             t.register_forward_hook(lambda m, a, o: times[-1].append(time.perf_counter()))]
    accelerate(pipe, "off", ras={"sample_ratio": (1.0, ratio) * pairs, "start_step": 0,
                                 "error_reset_steps": ()})
    try:
        pipe(**{**make(), "num_inference_steps": 2 * pairs})
    finally:
        pipe.acceleration.remove()
        for h in hooks:
            h.remove()
    calls = [b - a for a, b in times]
    dense, sparse = calls[2::2], calls[3::2]      # the first pair warms up
    return statistics.median(dense), statistics.median(sparse)


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


def demo_architecture():
    """The demo DiT pipeline's shapes (64 image tokens; 32 CLIP + 256 zero T5 text tokens)
    with random weights, for MACs and wall when the trained weights are not there."""
    from diffusers import StableDiffusion3Pipeline

    from accelerate_diffusion.demo import models
    torch.manual_seed(0)
    clip = lambda: testing._clip_text(models.TEXT_DIM, 2, projection=True,  # noqa: E731
                                      proj_dim=models.PROJ_DIM)
    pipe = StableDiffusion3Pipeline(
        transformer=models.new_dit(), scheduler=models.flow_scheduler(), vae=models.new_vae(),
        text_encoder=clip(), tokenizer=testing._clip_tokenizer(32),
        text_encoder_2=clip(), tokenizer_2=testing._clip_tokenizer(32),
        text_encoder_3=None, tokenizer_3=None)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def starvation_sign(pipe, make, ratio=0.33, scales=(-0.5, 0.0, 0.5, 1.0, 2.0)):
    accelerate(pipe, "off")
    reference = _images(pipe(**make()))
    pipe.acceleration.remove()
    rows = []
    for scale in scales:
        accelerate(pipe, "off", ras={"sample_ratio": ratio, "starvation_scale": scale})
        image = _images(pipe(**make()))
        ras = pipe.acceleration.stats()["ras"]
        h, w = ras["grid"]
        worst, never = staleness(ras["history"], h * w)
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
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-dense", action="store_true",
                    help="skip the dense run (no PSNR/SSIM, no run wall ratio; MACs and the "
                         "per-call wall ratio come from the RAS run alone)")
    ap.add_argument("--alternate", action="store_true",
                    help="also time adjacent dense/sparse calls of one run (paired per call)")
    ap.add_argument("--plot", default=None, help="PNG path for the per-step active-token map")
    ap.add_argument("--starvation", nargs="*", default=None,
                    help="pipelines for the starvation_scale sign study (default: the first)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    pipes = pipelines(args.pipelines, args.steps, args.size)
    print(f"## RAS vs dense, {args.steps} steps, FlowMatchEuler; defaults start_step 4, "
          f"error_reset_steps (0.4, 0.75), starvation_scale 0.5, metric std; shared CPU", flush=True)
    print("| pipeline | sample_ratio | dense s | RAS s | wall ratio (runs) | sparse-call speedup "
          "| wall ratio (per-call, paired) | dense MACs | RAS MACs | MACs ratio | PSNR dB | SSIM "
          "| sparse steps | mean active fraction |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    plotted = False
    for name, (pipe, label, make) in pipes.items():
        dense_s, rows = measure(pipe, make, args.ratios, args.repeats, dense=not args.no_dense)
        for ratio, r in rows.items():
            print(f"| {label} | {ratio} | {dense_s:.2f} | {r['seconds']:.2f} | "
                  f"{dense_s / r['seconds']:.2f}x | {r['call_ratio']:.2f}x | {r['per_call_ratio']:.2f}x | "
                  f"{format_macs(r['dense_macs'])} | {format_macs(r['macs'])} | "
                  f"{r['dense_macs'] / max(r['macs'], 1):.2f}x | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                  f"{r['stats']['sparse steps']} | {r['stats']['mean active fraction']} |", flush=True)
        if args.plot and not plotted and 0.5 in rows:
            plot_maps(rows[0.5]["maps"], rows[0.5]["image"], args.plot, 0.5, label)
            plotted = True

    if args.alternate:
        print("\n## adjacent dense/sparse calls (per-step ratios 1.0, r, 1.0, r, ...), median s")
        print("| pipeline | sample_ratio | dense call | sparse call | speedup |")
        print("|---|---|---|---|---|", flush=True)
        for name, (pipe, label, make) in pipes.items():
            for ratio in args.ratios:
                d, sp = alternating_calls(pipe, make, ratio)
                print(f"| {label} | {ratio} | {d:.3f} | {sp:.3f} | {d / sp:.2f}x |", flush=True)

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
