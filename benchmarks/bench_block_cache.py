"""Block caching: our schedules and dynamic mode vs diffusers' built-in caches, same run.

For each pipeline (tiny "small" PixArt, SD3, Flux, Wan, and the demo DiT when its weights
are present) and each method: denoiser MACs counted (ratio vs uncached, the primary
speed figure), PSNR/SSIM of the decoded images vs the uncached output (same seeds), and
the wall-time ratio from paired, alternating runs (median). Diffusers' caches
(FirstBlockCache, TaylorSeer, MagCache, PyramidAttentionBroadcast, FasterCache) run on a
copy of the denoiser; those that do not support a class are listed as such.

    python benchmarks/bench_block_cache.py --pipelines demo,pixart --steps 20 --repeats 3 \
        --plot docs/block_cache_vs_diffusers.png --markdown docs/block_cache_benchmark.md
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import statistics
import sys
import time
import warnings

import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.eval.fidelity import psnr, ssim
from accelerate_diffusion.families import family_of, find_denoiser
from accelerate_diffusion.schedules import ScheduleLayout, measure_component_macs

warnings.filterwarnings("ignore")


# -- pipelines ------------------------------------------------------------------------
def load(name: str, steps: int, size: str = "small", resolution: int = 0):
    """(pipe, make_kwargs) for a benchmark pipeline; make_kwargs gives fresh seeded kwargs."""
    if name == "demo":
        from accelerate_diffusion import demo

        if not demo.is_available("dit"):
            return None, None
        from bench_search import held_out

        pipe = demo.load_pipeline("dit")
        prompts = held_out("demo-dit")     # the setting of bench_search.py: same prompts, same seeds

        def make():
            return dict(prompt=prompts, num_inference_steps=steps, guidance_scale=demo.DEFAULT_GUIDANCE,
                        generator=[torch.Generator("cpu").manual_seed(1000 + i) for i in range(len(prompts))],
                        output_type="pt")
        return pipe, make
    from accelerate_diffusion.testing import call_kwargs, make_pipeline

    pipe = make_pipeline(name, size)
    extra = dict(height=resolution, width=resolution) if resolution and name != "wan" else {}
    return pipe, lambda: call_kwargs(name, size, steps=steps, output_type="pt", **extra)


def images(out) -> torch.Tensor:
    return torch.as_tensor(out.frames if hasattr(out, "frames") else out.images).float()


# -- methods --------------------------------------------------------------------------
def our_methods(family_name: str, layout: ScheduleLayout, denoiser=None, front_dir: str = "",
                max_front: int = 6) -> list[tuple[str, dict]]:
    """(label, block_cache override) for the presets' schedules (learned ones where shipped for
    this model), the points of a searched front, the heuristics and the dynamic mode."""
    from accelerate_diffusion.families import FAMILIES
    from accelerate_diffusion.presets import PRESETS
    from accelerate_diffusion.schedules.learned import preset_schedule
    from accelerate_diffusion.schedules.fronts import load_front

    n = layout.num_blocks
    comps = layout.components
    family = next(f for f in FAMILIES if f.name == family_name)
    out = []
    for preset in ("quality", "balanced", "fast", "max"):
        learned = preset_schedule(denoiser, preset) if denoiser is not None else None
        spec = PRESETS[preset].for_family(family).get("block_cache", {}).get("schedule")
        if learned is not None:
            out.append((f"ours {preset}: learned {learned.name.split('/')[-1]}", {"mode": "schedule", "schedule": learned}))
        if spec:   # the heuristic (what the preset runs on models without a learned front)
            out.append((f"ours {preset}: {spec}", {"mode": "schedule", "schedule": spec}))
        chosen = learned if learned is not None else spec
        if chosen and preset in ("fast", "max"):      # the same schedule, forecasting instead of reusing
            label = learned.name.split('/')[-1] if learned is not None else spec
            out += [(f"ours {preset}: {label} forecast {k}", {"mode": "schedule", "schedule": chosen, "forecast": k})
                    for k in (1, 2)]
    if front_dir:
        front = sorted(load_front(front_dir), key=lambda s: s.metrics["macs_ratio"])
        if len(front) > max_front:
            front = [front[round(i * (len(front) - 1) / (max_front - 1))] for i in range(max_front)]
        out += [(f"ours searched {os.path.basename(s.metrics['path'])[:-5]}", {"mode": "schedule", "schedule": s})
                for s in front]
    out += [(f"ours {s}", {"mode": "schedule", "schedule": s}) for s in (
        "fora:2,last=1", "fora:3,last=1", "fora:2,first=3,last=1",
        f"component:all,k={max(n // 2, 1)},window=0.8,every=2,last=1",
        f"component:{'+'.join(c for c in comps if c.startswith(('ff', 'proj')))},k={n},window=0.8,every=2,last=1",
    )]
    if "attn2" in comps:
        out.append(("ours tgate:gate=0.5", {"mode": "schedule", "schedule": "tgate:gate=0.5"}))
    out += [(f"ours dynamic t={t}", {"mode": "dynamic", "threshold": t, "max_reuse": 2}) for t in (0.05, 0.1, 0.2)]
    return out


def diffusers_methods(steps: int, layout: ScheduleLayout) -> list[tuple[str, object]]:
    from diffusers import (FasterCacheConfig, FirstBlockCacheConfig, PyramidAttentionBroadcastConfig,
                           TaylorSeerCacheConfig)

    out = [(f"diffusers FBC t={t}", lambda t=t, **_: FirstBlockCacheConfig(threshold=t)) for t in (0.05, 0.1, 0.2)]
    # TaylorSeer's default patterns miss names like attn1; point it at the same components we cache.
    same = [rf"{g}\.\d+\.({'|'.join(c)})" for g, c in _groups(layout)]
    out += [(f"diffusers TaylorSeer i={i}", lambda i=i, **_: TaylorSeerCacheConfig(
        cache_interval=i, disable_cache_before_step=2, taylor_factors_dtype=torch.float32, cache_identifiers=same))
        for i in (2, 3)]
    out += [(f"diffusers MagCache t={t}", lambda t=t, ratios=None, **_: _magcache(t, steps, ratios)) for t in (0.06, 0.12)]
    out += [("diffusers PAB", lambda timestep=None, **_: PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800),
        cross_attention_block_skip_range=4, cross_attention_timestep_skip_range=(100, 800),
        current_timestep_callback=timestep))]
    out += [("diffusers FasterCache", lambda timestep=None, **_: FasterCacheConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
        unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 781),
        attention_weight_callback=lambda _: 0.3, current_timestep_callback=timestep, tensor_format="BCHW",
        is_guidance_distilled=False))]
    return out


def _groups(layout: ScheduleLayout):
    from accelerate_diffusion.families import FAMILIES

    fam = next(f for f in FAMILIES if f.name == layout.model_family)
    return [(g.attr, g.components) for g in fam.block_groups]


def _magcache(threshold, steps, ratios):
    from diffusers import MagCacheConfig

    if ratios is None:
        return MagCacheConfig(calibrate=True, num_inference_steps=steps)
    return MagCacheConfig(threshold=threshold, num_inference_steps=len(ratios), mag_ratios=ratios)


class DiffusersCache:
    """Apply a diffusers cache config to a *copy* of the denoiser; restore the original after."""

    def __init__(self, pipe, config, pristine):
        from diffusers.hooks import (apply_faster_cache, apply_first_block_cache, apply_mag_cache,
                                     apply_pyramid_attention_broadcast, apply_taylorseer_cache)
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        self.pipe = pipe
        self.attr, self.original = find_denoiser(pipe)
        model = copy.deepcopy(pristine)   # a copy taken before any run: no hook registry left by pipelines
        name = type(config).__name__
        appliers = {"FirstBlockCacheConfig": apply_first_block_cache, "TaylorSeerCacheConfig": apply_taylorseer_cache,
                    "MagCacheConfig": apply_mag_cache, "PyramidAttentionBroadcastConfig": apply_pyramid_attention_broadcast,
                    "FasterCacheConfig": apply_faster_cache}
        appliers[name](model, config)
        # Pipelines without `cache_context` calls (PixArt, SD3) need one set for the stateful hooks.
        _set_cache_context(model, CacheContext("default"))
        self.model = model
        setattr(pipe, self.attr, model)

    def reset(self):
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        registry = getattr(self.model, "_diffusers_hook", None)
        if registry is not None:
            registry.reset_stateful_hooks()
        _set_cache_context(self.model, CacheContext("default"))

    def close(self):
        setattr(self.pipe, self.attr, self.original)


class TimestepProbe:
    """Current timestep on a 0-1000 scale, for the caches that gate on it (PAB, FasterCache)."""

    def __init__(self):
        self.value = 1000
        self.handle = None

    def attach(self, module):
        self.close()
        self.handle = module.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        t = kwargs.get("timestep")
        if isinstance(t, torch.Tensor):
            v = float(t.flatten()[0])
            self.value = v * 1000 if v <= 1.0 else v        # Flux passes t / 1000

    def __call__(self):
        return self.value

    def close(self):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


# -- measuring ------------------------------------------------------------------------
def counted(pipe, make, overrides) -> tuple[int, torch.Tensor, dict]:
    accelerate(pipe, "off", measure_macs=True, **overrides)
    try:
        out = images(pipe(**make()))
        stats = pipe.acceleration.report().applied[0]["stats"] if overrides else {}
        return pipe.acceleration.state.macs, out, stats
    finally:
        pipe.acceleration.remove()


def timed(pipe, make, before=None) -> float:
    if before:
        before()
    start = time.perf_counter()
    pipe(**make())
    return time.perf_counter() - start


def bench_pipeline(name: str, steps: int, repeats: int, only: set[str] | None, size: str = "small",
                   resolution: int = 0, front_dir: str = "") -> list[dict]:
    pipe, make = load(name, steps, size, resolution)
    if pipe is None:
        print(f"\n== {name}: skipped (demo DiT weights not present: accelerate_diffusion/demo/weights/dit)")
        return []
    denoiser = find_denoiser(pipe)[1]
    pristine = copy.deepcopy(denoiser)
    family = family_of(denoiser)
    layout = ScheduleLayout.of(family, denoiser)
    base_macs, reference, _ = counted(pipe, make, {})
    comp_macs, call_macs = measure_component_macs(pipe, make(), family)
    print(f"\n== {name} ({type(denoiser).__name__}, {layout.num_blocks} blocks, {steps} steps): "
          f"denoiser {base_macs / 1e9:.2f} GMACs/generation; components are "
          f"{comp_macs.sum() / call_macs:.0%} of a call", flush=True)
    rows = []
    if repeats:
        timed(pipe, make)           # warm-up: the first plain call after the counted ones runs slow

    def record(label, macs, out, seconds_base, seconds_acc, note=""):
        row = {"pipeline": name, "method": label, "macs_ratio": base_macs / max(macs, 1),
               "psnr": psnr(reference, out), "ssim": ssim(reference, out),
               "wall_ratio": (statistics.median(seconds_base) / statistics.median(seconds_acc)
                              if seconds_base else float("nan")),
               "note": note}
        rows.append(row)
        print(f"  {label:48s} MACs {row['macs_ratio']:5.2f}x  wall {row['wall_ratio']:5.2f}x  "
              f"PSNR {row['psnr']:6.2f}  SSIM {row['ssim']:.4f}  {note}", flush=True)

    def paired(run_acc, before_acc=None):
        base, acc = [], []
        for r in range(repeats):
            for which in (("b", "a") if r % 2 == 0 else ("a", "b")):
                if which == "b":
                    base.append(timed(pipe, make))
                else:
                    acc.append(run_acc())
        return base, acc

    for label, override in our_methods(family.name, layout, denoiser, front_dir):
        if only and not any(o in label for o in only):
            continue
        macs, out, stats = counted(pipe, make, {"block_cache": override})

        def run_acc(override=override):
            accelerate(pipe, "off", block_cache=override)
            try:
                return timed(pipe, make)
            finally:
                pipe.acceleration.remove()

        base, acc = paired(run_acc)
        record(label, macs, out, base, acc, f"reused {stats.get('reused fraction', 0):.0%}")

    ratios = None
    for label, factory in diffusers_methods(steps, layout):
        if only and not any(o in label for o in only):
            continue
        probe = TimestepProbe()
        try:
            if "MagCache" in label and ratios is None:
                ratios = calibrate_magcache(pipe, make, steps, pristine)
            cache = DiffusersCache(pipe, factory(timestep=probe, ratios=ratios), pristine)
        except Exception as exc:  # unsupported class or config: say so
            print(f"  {label:48s} not supported here: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
            rows.append({"pipeline": name, "method": label, "note": f"unsupported: {exc}"})
            continue
        probe.attach(cache.model)
        try:
            cache.reset()
            macs, out, _ = counted(pipe, make, {})

            def run_acc(cache=cache):
                cache.reset()
                return timed(pipe, make)

            # the baseline runs use the original denoiser, the accelerated ones the cached copy
            base, acc = [], []
            for r in range(repeats):
                for which in (("b", "a") if r % 2 == 0 else ("a", "b")):
                    if which == "b":
                        cache.close()
                        base.append(timed(pipe, make))
                        setattr(pipe, cache.attr, cache.model)
                    else:
                        acc.append(run_acc())
            record(label, macs, out, base, acc)
        except Exception as exc:
            print(f"  {label:48s} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
            rows.append({"pipeline": name, "method": label, "note": f"failed: {exc}"})
        finally:
            probe.close()
            cache.close()
    return rows


def calibrate_magcache(pipe, make, steps, pristine):
    """MagCache needs per-model magnitude ratios: one calibration run, ratios read from its log."""
    from diffusers import MagCacheConfig

    cache = DiffusersCache(pipe, MagCacheConfig(calibrate=True, num_inference_steps=steps), pristine)
    cache.reset()
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            pipe(**make())
    finally:
        cache.close()
    lines = [line for line in buf.getvalue().splitlines() if line.startswith("[") and "MagCache" not in line]
    return json.loads(lines[0])


# -- output ---------------------------------------------------------------------------
def markdown(rows: list[dict], steps: int, repeats: int) -> str:
    out = [f"Measured by `benchmarks/bench_block_cache.py` ({steps} steps, {repeats} paired repeats, "
           f"CPU, shared machine: wall ratios are noisy; MACs are counted).", ""]
    for name in dict.fromkeys(r["pipeline"] for r in rows):
        out += [f"### {name}", "", "| method | MACs ratio | wall ratio | PSNR dB | SSIM | note |",
                "|---|---:|---:|---:|---:|---|"]
        for r in rows:
            if r["pipeline"] != name:
                continue
            if "macs_ratio" not in r:
                out.append(f"| {r['method']} | | | | | {r['note'][:90]} |")
            else:
                out.append(f"| {r['method']} | {r['macs_ratio']:.2f}x | {r['wall_ratio']:.2f}x | "
                           f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['note']} |")
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["pipeline"] for r in rows if "macs_ratio" in r))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for group, marker, color in (("ours", "o", "tab:blue"), ("diffusers", "s", "tab:orange")):
            pts = [r for r in rows if r["pipeline"] == name and "macs_ratio" in r and r["method"].startswith(group)]
            ax.scatter([r["macs_ratio"] for r in pts], [min(r["psnr"], 60) for r in pts], marker=marker,
                       color=color, label=group)
            for r in pts:
                ax.annotate(r["method"].split(" ", 1)[1][:22], (r["macs_ratio"], min(r["psnr"], 60)),
                            fontsize=6, alpha=0.7)
        ax.set_title(name)
        ax.set_xlabel("speedup (denoiser MACs ratio)")
        ax.set_ylabel("PSNR vs uncached (dB)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", default="demo,pixart,sd3,flux,wan")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="paired timing repeats (0: MACs and fidelity only)")
    parser.add_argument("--size", default="small", help="tiny pipeline size (micro for a quick check)")
    parser.add_argument("--resolution", type=int, default=128,
                        help="image side for the tiny pipelines (0: their default; Wan keeps its own)")
    parser.add_argument("--only", default="", help="|-separated substrings of method labels to run")
    parser.add_argument("--front", default="", help="also run the points of this searched front (demo pipeline)")
    parser.add_argument("--json", default="")
    parser.add_argument("--markdown", default="")
    parser.add_argument("--plot", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    only = set(filter(None, args.only.split("|"))) or None
    rows = []
    for name in args.pipelines.split(","):
        front = args.front if name.strip() == "demo" else ""
        rows += bench_pipeline(name.strip(), args.steps, args.repeats, only, args.size, args.resolution, front)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1, default=str)
    text = markdown(rows, args.steps, args.repeats)
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.plot and rows:
        plot(rows, args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
