"""TempCache on a long SkyReels-V2 diffusion-forcing rollout: per-chunk latency and K/V bytes vs frame.

The pipeline runs the whole window at every step: finished frames (history) and frames not yet
started included. Arms, timed alternately in one process (paired), medians over repeats:
  baseline     the unpatched pipeline
  incremental  kv_cache with nothing merged or evicted (finished frames cached exactly, only
               the frames being denoised run; the cache grows with the video)
  budget       + budget_frames (eviction only)
  tempcache    + merging (merge_threshold) and the budget: the accelerated setting
A "chunk" is one causal block: its latency is the time of the steps during which that block
is the last one finished (frame index = finished frames then). Flatness: median of the 3
chunks ending at the last one with every block of the schedule active / median of the 3
chunks from frame 8. "K/V bytes" per chunk are the
keys/values the denoised frames attend to, all layers: the whole window for the baseline,
cache slots plus the frames run for the others (the part of memory that grows with history).
Fidelity: PSNR/SSIM per latent frame of the decoded videos vs the baseline.

    python benchmarks/bench_kv_cache_skyreels.py --size small --frames 48 --repeats 3
    python benchmarks/bench_kv_cache_skyreels.py --sweep      # preset candidates
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.testing_video import LATENT_HW, make_skyreels_df_pipeline, run_skyreels
from bench_kv_cache import decode  # same Wan-VAE decode (this folder is on sys.path when run as a script)

warnings.filterwarnings("ignore")


class StepTimer:
    """Per denoising step: duration, finished frames (timestep-0 prefix) and attended K/V bytes."""

    def __init__(self, pipe, args):
        self.steps: list[tuple[float, int, int]] = []
        self.last = None
        self.pipe, self.frames = pipe, args.frames
        cfg = pipe.transformer.config
        self.layers = cfg.num_layers
        self.tpf = (LATENT_HW[args.size] // cfg.patch_size[1]) ** 2
        self.per_token = 2 * cfg.num_attention_heads * cfg.attention_head_dim * 4     # K and V, fp32
        self.computed = self.committed = 0

    def kv_bytes(self) -> int:
        """K/V the step's queries attended, all layers: the whole window (baseline), or the cache
        slots plus the frames run (kv_cache; the slots as they are after this step's commit)."""
        handle = getattr(self.pipe, "acceleration", None)
        if handle is None or "kv_cache" not in handle.stats():
            return self.frames * self.tpf * self.layers * self.per_token
        ctrl = handle.stats()["kv_cache"]
        computed = ctrl["counters"].get("frames_computed", 0)
        frames, self.computed = computed - self.computed, computed
        window = ctrl["windows"].get(0)
        slots = sum(window["slots_per_layer"].values()) if window else 0
        committed = window["frames"] if window else 0
        frames -= committed - self.committed          # just committed: counted in the slots already
        self.committed = committed
        return (slots + frames * self.tpf * self.layers) * self.per_token

    def start(self, module, args, kwargs):
        if self.last is None:
            self.last = time.perf_counter()

    def callback(self, pipe, i, t, kw):
        now = time.perf_counter()
        finished = int((t == 0).int().cumprod(0).sum())
        self.steps.append((now - self.last, finished, self.kv_bytes()))
        self.last = time.perf_counter()
        return kw

    def per_chunk(self, block: int) -> tuple[dict[int, float], dict[int, int]]:
        """finished frames -> (total time, peak attended K/V bytes) of the steps with that many finished."""
        time_: dict[int, float] = {}
        peak: dict[int, int] = {}
        for dt, finished, kvb in self.steps:
            key = finished - finished % block
            time_[key] = time_.get(key, 0.0) + dt
            peak[key] = max(peak.get(key, 0), kvb)
        return time_, peak


def rollout(pipe, args, settings):
    """One timed rollout; returns (latents, per-chunk seconds, per-chunk attended K/V bytes)."""
    if settings is not None:
        accelerate(pipe, "off", kv_cache=settings)
    timer = StepTimer(pipe, args)
    hook = pipe.transformer.register_forward_pre_hook(timer.start, with_kwargs=True)
    try:
        out = run_skyreels(pipe, args.size, latent_frames=args.frames, block=args.block, ar_step=args.ar_step,
                           steps=args.steps, callback_on_step_end=timer.callback)
    finally:
        hook.remove()
    if settings is not None:
        pipe.acceleration.remove()
    per_chunk, kv_bytes = timer.per_chunk(args.block)
    return out, per_chunk, kv_bytes


def count_macs(pipe, args, settings) -> dict[int, int]:
    """Counted MACs of the transformer calls per chunk (machine independent; an untimed rollout)."""
    from accelerate_diffusion.macs import MacCounter

    if settings is not None:
        accelerate(pipe, "off", kv_cache=settings)
    counter, per_chunk, seen = MacCounter(), {}, [0]

    def callback(p, i, t, kw):
        finished = int((t == 0).int().cumprod(0).sum())
        key = finished - finished % args.block
        per_chunk[key] = per_chunk.get(key, 0) + counter.macs - seen[0]
        seen[0] = counter.macs
        return kw

    def enter(*_):
        counter.__enter__()

    def leave(*_):
        counter.__exit__(None, None, None)

    hooks = [pipe.transformer.register_forward_pre_hook(enter), pipe.transformer.register_forward_hook(leave)]
    try:
        run_skyreels(pipe, args.size, latent_frames=args.frames, block=args.block, ar_step=args.ar_step,
                     steps=args.steps, callback_on_step_end=callback)
    finally:
        for h in hooks:
            h.remove()
        if settings is not None:
            pipe.acceleration.remove()
    return per_chunk


def per_latent_frame(ref, other, n_latent):
    """(PSNR, SSIM) per latent frame of decoded videos (Wan VAE: frame 0, then 4 per latent frame)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    psnr, ssim = [], []
    for i in range(n_latent):
        frames = [0] if i == 0 else list(range(4 * i - 3, 4 * i + 1))
        a, b = ref[frames], other[frames]
        psnr.append(min(100.0, peak_signal_noise_ratio(b, a, data_range=1.0).item()))   # identical: 100
        ssim.append(structural_similarity_index_measure(b, a, data_range=1.0).item())
    return psnr, ssim


def arms(args) -> dict[str, dict | None]:
    return {
        "baseline": None,
        "incremental": dict(merge_threshold=1.5, budget_frames=0),
        "budget": dict(merge_threshold=1.5, budget_frames=args.budget),
        "tempcache": dict(merge_threshold=args.threshold, budget_frames=args.budget),
    }


def flatness(series: dict[int, float], start: int, tail: int, width: int = 3) -> float:
    """Median of the ``width`` chunks ending at the last one that still has every block of the
    schedule active / median of the ``width`` chunks from ``start`` (single chunks are noisy)."""
    keys = sorted(k for k in series if k >= start)
    keys = keys[: len(keys) - tail] or keys
    first = statistics.median(series[k] for k in keys[:width])
    return statistics.median(series[k] for k in keys[-width:]) / first if first else float("nan")


def bench(args) -> None:
    pipe = make_skyreels_df_pipeline(args.size)
    settings = arms(args)
    times = {name: [] for name in settings}
    chunks = {name: [] for name in settings}
    kv_bytes, latents = {}, {}
    rollout(pipe, args, settings["incremental"])                    # warm-up (the cheap arm)
    names = list(settings)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:     # rotate the order: paired
            t0 = time.perf_counter()
            out, per_chunk, kvb = rollout(pipe, args, settings[name])
            times[name].append(time.perf_counter() - t0)
            chunks[name].append(per_chunk)
            kv_bytes[name], latents[name] = kvb, out
    med = {name: {k: statistics.median(c[k] for c in chunks[name]) for k in chunks[name][0]} for name in names}
    macs = {name: count_macs(pipe, args, settings[name]) for name in names}
    keys = sorted(med["baseline"])
    ref = decode(pipe, latents["baseline"])
    fidelity = {name: per_latent_frame(ref, decode(pipe, latents[name]), args.frames) for name in names}

    start = min((k for k in keys if k >= 8), default=keys[0])
    tail = args.steps // max(args.ar_step, 1)        # the last chunks drain the schedule: fewer active blocks
    print(f"SkyReels-V2 DF {args.size}: {args.frames} latent frames, causal blocks of {args.block}, "
          f"ar_step {args.ar_step}, {args.steps} steps, {args.repeats} paired repeats (median)")
    print("\n| arm | settings | rollout s | speedup | MACs ratio | latency flatness | MACs flatness | K/V flatness "
          "| PSNR mean / min (dB) | SSIM mean |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base_time = statistics.median(times["baseline"])
    base_macs = sum(macs["baseline"].values())
    for name in names:
        p, s = fidelity[name]
        rest = [v for v in p[1:]]
        print(f"| {name} | {settings[name] or 'unpatched'} | {statistics.median(times[name]):.2f} | "
              f"{base_time / statistics.median(times[name]):.2f}x | {base_macs / sum(macs[name].values()):.2f}x | "
              f"x{flatness(med[name], start, tail):.2f} | x{flatness(macs[name], start, tail):.2f} | "
              f"x{flatness(kv_bytes[name], start, tail):.2f} | {statistics.mean(p):.1f} / {min(rest or p):.1f} | "
              f"{statistics.mean(s):.4f} |")
    print("\nper chunk (frame index = finished frames): latency ms / GMACs / attended K/V KiB")
    print("| frame | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for k in keys:
        cells = [f"{1000 * med[n].get(k, float('nan')):.0f} / {macs[n].get(k, 0) / 1e9:.2f} / "
                 f"{kv_bytes[n].get(k, 0) / 1024:.0f}" for n in names]
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("\nper latent frame PSNR (dB) vs baseline:")
    for name in names[1:]:
        print(f"  {name}: " + " ".join(f"{v:.1f}" for v in fidelity[name][0]))
    if args.plot:
        plot(args, names, keys, med, macs, kv_bytes, fidelity)


def plot(args, names, keys, med, macs, kv_bytes, fidelity) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for i, name in enumerate(names):
        style = dict(color=f"C{i}", label=name)
        axes[0].plot(keys, [1000 * med[name].get(k, float("nan")) for k in keys], marker="o", **style)
        axes[1].plot(keys, [macs[name].get(k, 0) / 1e9 for k in keys], marker="o", **style)
        axes[2].plot(keys, [kv_bytes[name].get(k, 0) / 2 ** 20 for k in keys], marker="o", **style)
        if name != "baseline":
            axes[3].plot(range(args.frames), [min(v, 60) for v in fidelity[name][0]], marker=".", **style)
    axes[0].set(xlabel="frame index (finished frames)", ylabel="latency per chunk (ms, log)", title="per-chunk latency",
                yscale="log")
    axes[1].set(xlabel="frame index (finished frames)", ylabel="GMACs per chunk (log)", title="per-chunk MACs (counted)",
                yscale="log")
    axes[2].set(xlabel="frame index (finished frames)", ylabel="attended K/V (MiB)", title="K/V attended per step")
    axes[3].set(xlabel="latent frame", ylabel="PSNR vs baseline (dB, capped 60)", title="fidelity")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"TempCache on SkyReels-V2 diffusion forcing ({args.size}, {args.frames} latent frames, "
                 f"blocks of {args.block}, ar_step {args.ar_step}, {args.steps} steps)")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"plot: {args.plot}")


PRESET_CANDIDATES = {
    "exact reuse": dict(merge_threshold=1.5, budget_frames=0),
    "pipeline 0.95/12": dict(encode="pipeline", merge_threshold=0.95, budget_frames=12),
    "0.95/16": dict(merge_threshold=0.95, budget_frames=16),
    "0.9/12": dict(merge_threshold=0.9, budget_frames=12),
    "0.9/8": dict(merge_threshold=0.9, budget_frames=8),
    "0.7/6": dict(merge_threshold=0.7, budget_frames=6),
    "0.5/4": dict(merge_threshold=0.5, budget_frames=4),
}


def sweep(args) -> None:
    """Fidelity, time and cache size of preset candidates (time: vs the median of 2 baseline runs)."""
    pipe = make_skyreels_df_pipeline(args.size)
    kw = dict(latent_frames=args.frames, block=args.block, ar_step=args.ar_step, steps=args.steps)
    base_times = []
    for _ in range(2):
        t0 = time.perf_counter()
        ref_latents = run_skyreels(pipe, args.size, **kw)
        base_times.append(time.perf_counter() - t0)
    reference, base = decode(pipe, ref_latents), statistics.median(base_times)
    print(f"SkyReels-V2 DF {args.size}: {args.frames} latent frames, blocks of {args.block}, ar_step "
          f"{args.ar_step}, {args.steps} steps; baseline {base:.1f} s")
    print("| candidate | settings | speedup (1 run) | PSNR mean (dB) | PSNR min | SSIM mean | cache tokens/layer (last) | merges | evictions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, settings in PRESET_CANDIDATES.items():
        accelerate(pipe, "off", kv_cache=settings)
        t0 = time.perf_counter()
        out = run_skyreels(pipe, args.size, **kw)
        elapsed = time.perf_counter() - t0
        st = pipe.acceleration.report().applied[0]["stats"]
        pipe.acceleration.remove()
        p, s = per_latent_frame(reference, decode(pipe, out), args.frames)
        print(f"| {name} | `{settings}` | {base / elapsed:.2f}x | {statistics.mean(p):.1f} | {min(p):.1f} | "
              f"{statistics.mean(s):.4f} | {st.get('cache tokens per layer (last commit)')} | "
              f"{sum(st.get('merges per commit', [0]))} | {sum(st.get('evictions per commit', [0]))} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", choices=("micro", "small"))
    parser.add_argument("--frames", type=int, default=48, help="latent frames")
    parser.add_argument("--block", type=int, default=2, help="causal_block_size")
    parser.add_argument("--ar-step", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--budget", type=float, default=6, help="budget_frames of the budget/tempcache arms")
    parser.add_argument("--threshold", type=float, default=0.5, help="merge_threshold of the tempcache arm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", default="docs/kv_cache_skyreels_rollout.png")
    parser.add_argument("--sweep", action="store_true", help="preset candidates instead of the rollout arms")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sweep(args) if args.sweep else bench(args)


if __name__ == "__main__":
    main()
