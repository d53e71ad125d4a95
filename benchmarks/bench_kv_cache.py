"""TempCache on a long AnyFlow-FAR rollout: per-chunk latency and KV-cache bytes vs frame index.

Arms, timed alternately in one process (paired), medians over repeats:
  baseline     the unpatched pipeline (FAR re-encodes the whole history after each chunk)
  incremental  kv_cache with nothing merged or evicted (encode each chunk once; cache grows);
               named "compressed" with ``--encode compressed`` (FAR's own history, encoded once)
  budget       kv_cache with the budget only (nothing merged): what eviction alone costs
  tempcache    kv_cache with merging and the budget (the accelerated setting)
  tempcache+ann  tempcache plus AnnCA (prompt tokens retrieved per query block) and AnnSA
Fidelity: PSNR/SSIM per latent frame of the decoded videos vs the baseline rollout, and
PSNR vs that unbounded arm (isolates what merging/eviction/retrieval change). ``--encode``
chooses how every kv_cache arm fills its cache (AnnSA needs "incremental"; with "compressed"
the +ann arm retrieves prompt tokens only).
MACs are not reported: torch's flop counter fails on the pipeline's flex_attention.

    python benchmarks/bench_kv_cache.py --size micro --frames 64 --chunk 2 --repeats 3

``--pipeline demo``: the trained demo AR video model (``demo.load_pipeline("ar_video")``),
baseline vs the presets (quality/balanced/fast/max), per-chunk latency (paired, median),
measured peak heap per chunk and the KV bytes attended, PSNR/SSIM per key frame vs the
baseline rollout and the demo-CLIP score per key frame (see `demo_main`):

    python benchmarks/bench_kv_cache.py --pipeline demo --frames 48 --chunk 1 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.testing_video import far_call_kwargs, make_far_pipeline

warnings.filterwarnings("ignore")


class ChunkTimer:
    """Timestamps of the denoiser calls; a chunk starts at the first call that sees one more cached chunk."""

    def __init__(self, transformer):
        self.calls: list[tuple[float, int]] = []
        self.handle = transformer.register_forward_pre_hook(self.pre, with_kwargs=True)

    def pre(self, module, args, kwargs):
        flag = kwargs.get("kv_cache_flag") or {}
        self.calls.append((time.perf_counter(), flag.get("num_cached_chunks", -1)))

    def chunk_latencies(self, end: float) -> list[float]:
        starts, seen = [], -1
        for t, n in self.calls:
            if n > seen:
                starts.append(t)
                seen = n
        return [b - a for a, b in zip(starts, starts[1:] + [end])]


def baseline_cache_bytes(pipe, partition, hw, batch) -> list[int]:
    """Live (populated) bytes of the pipeline's K/V buffers during each chunk's denoising."""
    cfg = pipe.transformer.config
    full = (hw // cfg.patch_size[1]) ** 2
    comp = (hw // cfg.compressed_patch_size[1]) ** 2
    per_token = 2 * batch * cfg.num_attention_heads * cfg.attention_head_dim * 4 * cfg.num_layers
    out = []
    for k in range(len(partition)):
        total = 1 + k
        n_full, n_comp = (cfg.full_chunk_limit, total - cfg.full_chunk_limit) if total >= cfg.full_chunk_limit \
            else (total, 0)
        tokens = sum(partition[n_comp:n_comp + n_full - 1]) * full + sum(partition[:n_comp]) * comp
        out.append(tokens * per_token)
    return out


def tempcache_bytes(pipe, n_chunks, batch) -> list[int]:
    """K/V bytes of the TempCache each chunk attends to (row k-1 of the cache: chunks < k)."""
    cfg = pipe.transformer.config
    per_token = 2 * batch * cfg.num_attention_heads * cfg.attention_head_dim * 4
    out = [0]
    for row in pipe.acceleration.stats()["kv_cache"]["chunks"][: n_chunks - 1]:
        out.append(sum(row["cache_tokens"].values()) * per_token)
    return out


def decode(pipe, latents):
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(latents * std + mean, return_dict=False)[0]
    return (video / 2 + 0.5).clamp(0, 1)[0].transpose(0, 1)          # [F, 3, H, W]


def per_latent_frame(metric, ref, other, n_latent):
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    fn = {"psnr": lambda a, b: peak_signal_noise_ratio(b, a, data_range=1.0).item(),
          "ssim": lambda a, b: structural_similarity_index_measure(b, a, data_range=1.0).item()}[metric]
    out = []
    for i in range(n_latent):
        frames = [0] if i == 0 else list(range(4 * i - 3, 4 * i + 1))    # Wan VAE: 1 + 4 per latent frame
        out.append(fn(ref[frames], other[frames]))
    return out


def sweep(args) -> None:
    """Fidelity and cache size of the presets' kv_cache settings and the ``DEMO_ARMS`` (one
    rollout each, no timing)."""
    from accelerate_diffusion.families import family_of
    from accelerate_diffusion.presets import PRESETS

    pipe = make_far_pipeline(args.size)
    family = family_of(pipe.transformer)
    candidates = {name: PRESETS[name].for_family(family)["kv_cache"] for name in ("quality", "balanced", "fast", "max")}
    candidates.update(DEMO_ARMS)
    kw = lambda: far_call_kwargs(args.size, latent_frames=args.frames, chunk=args.chunk, steps=args.steps,
                                 max_sequence_length=args.text_tokens)
    reference = decode(pipe, pipe(**kw()).frames)
    print("| candidate | settings | PSNR mean (dB) | SSIM mean | last-frame PSNR | cache tokens/layer (last) | merges |")
    print("|---|---|---|---|---|---|---|")
    for name, settings in candidates.items():
        accelerate(pipe, "off", kv_cache=settings)
        video = decode(pipe, pipe(**kw()).frames)
        st = pipe.acceleration.report().applied[0]["stats"]
        pipe.acceleration.remove()
        p = per_latent_frame("psnr", reference, video, args.frames)
        s = per_latent_frame("ssim", reference, video, args.frames)
        print(f"| {name} | {settings} | {statistics.mean(min(x, 100) for x in p):.1f} | {statistics.mean(s):.4f} | "
              f"{p[-1]:.1f} | {st['cache tokens per layer (last chunk)']} | {sum(st['merges per chunk'])} |")


def ann_bench(repeats: int = 20) -> None:
    """Nearest cached key for one frame of new keys: torch exact / projected vs faiss (if installed).

    An index is rebuilt at every call (the cache changes every chunk), so build time counts.
    """
    from accelerate_diffusion.kernels import ann

    try:
        import faiss
    except ImportError:
        faiss = None
    print("| slots | feature width | method | ms per frame (median) | recall@1 vs exact |")
    print("|---|---|---|---|---|")
    for n, width in ((384, 192), (4096, 192), (4096, 384)):
        gen = torch.Generator().manual_seed(0)
        base = torch.nn.functional.normalize(torch.randn(1, n, width, generator=gen), dim=-1)
        query = torch.nn.functional.normalize(base[:, :64] + 0.7 * torch.randn(1, 64, width, generator=gen) / width ** 0.5,
                                              dim=-1)
        exact = ann.nearest(query, base, "exact")[0]
        methods = {"torch exact": lambda: ann.nearest(query, base, "exact")[0],
                   "torch proj (16-d, 4 cand.)": lambda: ann.nearest(query, base, "proj", 16, 4)[0]}
        if faiss is not None:
            xb, xq = base[0].numpy(), query[0].numpy()

            def run_index(make):
                def go():
                    index = make()
                    if not index.is_trained:
                        index.train(xb)
                    index.add(xb)
                    return torch.from_numpy(index.search(xq, 1)[1][:, 0])
                return go
            methods["faiss FlatIP"] = run_index(lambda: faiss.IndexFlatIP(width))
            methods["faiss LSH (64 bits)"] = run_index(lambda: faiss.IndexLSH(width, 64))
            methods["faiss HNSW (M=16)"] = run_index(lambda: faiss.IndexHNSWFlat(width, 16, faiss.METRIC_INNER_PRODUCT))
        for name, fn in methods.items():
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                idx = fn()
                times.append(time.perf_counter() - t)
            recall = (idx == exact).float().mean().item()
            print(f"| {n} | {width} | {name} | {statistics.median(times) * 1e3:.2f} | {recall:.2f} |")


# ---------------------------------------------------------------- the trained demo AR model


class HeapPeak:
    """Peak in-use heap bytes (glibc ``mallinfo2``: small blocks + mmapped blocks), sampled
    before and after every transformer block and per chunk of the rollout: CPU tensors live there."""

    def __init__(self, transformer):
        import ctypes

        class _Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in
                        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

        self._mallinfo = ctypes.CDLL("libc.so.6").mallinfo2
        self._mallinfo.restype = _Info
        self.samples: list[tuple[float, int]] = []
        self.handles = []
        for block in transformer.blocks:
            self.handles.append(block.register_forward_pre_hook(lambda *a: self.sample()))
            self.handles.append(block.register_forward_hook(lambda *a: self.sample()))

    def sample(self):
        info = self._mallinfo()
        self.samples.append((time.perf_counter(), info.uordblks + info.hblkhd))

    def remove(self):
        for h in self.handles:
            h.remove()

    def per_chunk(self, starts: list[float]) -> list[int]:
        """Peak bytes per chunk above the heap in use at the rollout's first block call."""
        base = self.samples[0][1]
        bounds = starts[1:] + [float("inf")]
        return [max((b for t, b in self.samples if lo <= t < hi), default=base) - base
                for lo, hi in zip(starts, bounds)]


def chunk_starts(timer: ChunkTimer) -> list[float]:
    starts, seen = [], -1
    for t, n in timer.calls:
        if n > seen:
            starts.append(t)
            seen = n
    return starts


# extra arms for --presets besides the preset names: kv_cache settings on the "off" preset
DEMO_ARMS = {
    "incremental": dict(merge_threshold=1.5, budget_frames=0, encode="incremental"),  # nothing merged/evicted
    "compressed": dict(merge_threshold=1.5, budget_frames=0, encode="compressed"),    # FAR's history, encoded once
}


def demo_main(args) -> None:
    """Long rollouts on the trained demo AR model: baseline vs the kv_cache presets."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from accelerate_diffusion import demo
    from accelerate_diffusion.demo import video

    torch.set_num_threads(args.threads)
    pipe = demo.load_pipeline("ar_video")
    clip = demo.load_clip()
    prompt = args.prompt or video.make_clip(0, split="test")[1]
    static = video.static_caption(prompt)
    steps = args.steps if args.steps else video.DEFAULT_STEPS
    kw = lambda: video.call_kwargs(prompt, latent_frames=args.frames, chunk=args.chunk, steps=steps,
                                   guidance=args.guidance, seed=args.seed, output_type="latent")
    partition = kw()["chunk_partition"]
    n = len(partition)
    frame_of = [sum(partition[:k]) for k in range(n)]
    batch = 2 if args.guidance > 1 else 1
    arms = ["baseline"] + list(args.presets.split(","))
    lat = {a: [] for a in arms}
    heap = {a: [] for a in arms}
    cache, outputs, stats = {}, {}, {}
    for rep in range(args.repeats + 1):                  # repeat 0 is the warm-up
        order = arms if rep % 2 else arms[::-1]          # alternate the order: paired, no position bias
        for a in order:
            if a in DEMO_ARMS:
                accelerate(pipe, "off", kv_cache=DEMO_ARMS[a])
            elif a != "baseline":
                accelerate(pipe, a)
            timer, peak = ChunkTimer(pipe.transformer), HeapPeak(pipe.transformer)
            out = pipe(**kw()).frames
            end = time.perf_counter()
            timer.handle.remove()
            peak.remove()
            if rep:
                lat[a].append(timer.chunk_latencies(end))
                heap[a].append(peak.per_chunk(chunk_starts(timer)))
            outputs[a] = out
            if a != "baseline":
                cache[a] = tempcache_bytes(pipe, n, batch)
                stats[a] = pipe.acceleration.report().applied[0]["stats"]
                pipe.acceleration.remove()
            else:
                cache[a] = baseline_cache_bytes(pipe, partition, video.ds.IMAGE_SIZE // 4, batch)
            print(f"repeat {rep} {a}: {end - timer.calls[0][0]:.2f}s", flush=True)

    med = {a: [statistics.median(r[k] for r in lat[a]) for k in range(n)] for a in arms}
    peak_mb = {a: [statistics.median(r[k] for r in heap[a]) / 2**20 for k in range(n)] for a in arms}
    frames = {a: video.decode_keyframes(pipe, o)[0] for a, o in outputs.items()}      # (T, 3, 64, 64)
    clip_s = {a: demo.clip_score(f, [static] * len(f), clip).tolist() for a, f in frames.items()}
    psnr = {a: [peak_signal_noise_ratio(frames[a][i:i + 1], frames["baseline"][i:i + 1], data_range=1.0).item()
                for i in range(args.frames)] for a in arms[1:]}
    ssim = {a: [structural_similarity_index_measure(frames[a][i:i + 1], frames["baseline"][i:i + 1],
                                                    data_range=1.0).item() for i in range(args.frames)]
            for a in arms[1:]}

    k8 = next(k for k in range(n) if frame_of[k] >= 8)
    w = max(1, args.flat_window)

    def flat(series):
        """median over the chunks from frame 8 vs over the last chunks that still encode a cache."""
        last = n - 2
        return statistics.median(series[max(k8, last - w + 1):last + 1]) / statistics.median(series[k8:k8 + w])

    print(f"\ndemo AR model: {args.frames} latent frames (64x64), chunks of {args.chunk}, {steps} steps, "
          f"guidance {args.guidance}, {args.repeats} paired repeats (median), prompt {prompt!r}, "
          f"CLIP caption {static!r}")
    print("| chunk | frame | " + " | ".join(f"{a} ms" for a in arms) + " | " + " | ".join(f"{a} peak +MiB" for a in arms)
          + " | " + " | ".join(f"{a} KV KiB" for a in arms) + " | " + " | ".join(f"{a} PSNR/SSIM" for a in arms[1:])
          + " | " + " | ".join(f"{a} CLIP" for a in arms) + " |")
    print("|" + "---|" * (2 + 5 * len(arms) - 1))
    for k in range(n):
        f = frame_of[k]
        print(f"| {k} | {f} | " + " | ".join(f"{med[a][k] * 1e3:.0f}" for a in arms) + " | "
              + " | ".join(f"{peak_mb[a][k]:.2f}" for a in arms) + " | "
              + " | ".join(f"{cache[a][k] / 1024:.0f}" for a in arms) + " | "
              + " | ".join(f"{min(psnr[a][f], 99):.1f}/{ssim[a][f]:.3f}" for a in arms[1:]) + " | "
              + " | ".join(f"{clip_s[a][f]:.1f}" for a in arms) + " |")
    print(f"\nflatness (median of {w} chunks from frame 8 -> median of the last {w} encoding chunks):")
    print("| arm | latency ratio | peak heap ratio | KV bytes ratio | rollout s | speedup | PSNR mean dB | SSIM mean |"
          " PSNR last 8 frames | CLIP mean | CLIP last 8 frames |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for a in arms:
        kvr = flat(cache[a]) if cache[a][k8] else float("nan")
        p = f"{statistics.mean(min(x, 100) for x in psnr[a]):.1f}" if a in psnr else "-"
        s = f"{statistics.mean(ssim[a]):.3f}" if a in ssim else "-"
        pl = f"{statistics.mean(min(x, 100) for x in psnr[a][-8:]):.1f}" if a in psnr else "-"
        print(f"| {a} | {flat(med[a]):.2f} | {flat(peak_mb[a]):.2f} | {kvr:.2f} | {sum(med[a]):.1f} | "
              f"{sum(med['baseline']) / sum(med[a]):.2f}x | {p} | {s} | {pl} | {statistics.mean(clip_s[a]):.1f} | "
              f"{statistics.mean(clip_s[a][-8:]):.1f} |")
    for a, st in stats.items():
        print(f"{a} stats:", json.dumps(st))

    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 4, figsize=(19, 4))
        for a in arms:
            axes[0].plot(frame_of[:-1], [x * 1e3 for x in med[a][:-1]], marker=".", label=a)
            axes[1].plot(frame_of[:-1], peak_mb[a][:-1], marker=".", label=a)
            axes[3].plot(range(args.frames), clip_s[a], label=a)
        for a in psnr:
            axes[2].plot(range(args.frames), [min(x, 60) for x in psnr[a]], label=a)
        axes[0].set(xlabel="first frame of chunk", ylabel="chunk latency (ms, median)", title="latency per chunk")
        axes[1].set(xlabel="first frame of chunk", ylabel="peak heap above rollout start (MiB)", title="peak memory per chunk")
        axes[2].set(xlabel="key frame", ylabel="PSNR vs baseline (dB, capped 60)", title="fidelity per frame")
        axes[3].set(xlabel="key frame", ylabel="demo-CLIP score", title=f"CLIP score ({static!r})")
        for ax in axes:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.suptitle(f"kv_cache presets on the demo AR video model ({args.frames} key frames, chunk {args.chunk}, "
                     f"{steps} steps, CPU 1 thread)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print("plot:", args.plot)
    if args.save_frames:
        from PIL import Image

        rows = [torch.cat(list(frames[a][:: max(1, args.frames // 12)]), dim=2) for a in arms]
        grid = (torch.cat(rows, dim=1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(grid).save(args.save_frames)
        print("frames:", args.save_frames, "rows:", arms)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "prompt": prompt, "frame_of": frame_of, "latency_s": med,
                       "peak_heap_mib": peak_mb, "kv_bytes": cache, "psnr": psnr, "ssim": ssim, "clip": clip_s,
                       "stats": stats}, fh, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ann-bench", action="store_true", help="ANN retrieval timing: torch vs faiss")
    ap.add_argument("--sweep", action="store_true", help="preset candidates: fidelity and cache size only")
    ap.add_argument("--size", default="micro", choices=("micro", "small"))
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="default: 2 (tiny), the demo default (demo)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--text-tokens", type=int, default=512, help="max_sequence_length (pipeline default 512)")
    ap.add_argument("--cross-topk", type=int, default=16)
    ap.add_argument("--self-topk", type=int, default=8)
    ap.add_argument("--budget", type=float, default=6.0, help="budget_frames")
    ap.add_argument("--evict", default="attention")
    ap.add_argument("--ann", default="exact")
    ap.add_argument("--encode", default="incremental", choices=("incremental", "compressed"),
                    help="tiny: how the kv_cache arms fill their cache")
    ap.add_argument("--plot", default=None, help="default: docs/kv_cache_rollout[_demo].png")
    ap.add_argument("--json", default="")
    ap.add_argument("--pipeline", default="tiny", choices=("tiny", "demo"),
                    help="tiny: random-weight AnyFlow-FAR (--size); demo: the trained demo AR video model")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME:KEY=V,KEY=V",
                    help="demo: an extra arm, kv_cache settings on the 'off' preset (repeatable), "
                         "e.g. b4:budget_frames=4,merge_threshold=0.9; name it in --presets")
    ap.add_argument("--presets", default="incremental,quality,balanced,fast,max",
                    help="demo: presets (or DEMO_ARMS names) compared to the baseline")
    ap.add_argument("--guidance", type=float, default=3.0, help="demo: guidance scale")
    ap.add_argument("--prompt", default="", help="demo: prompt (default: test clip 0's caption)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--flat-window", type=int, default=4, help="demo: chunks per end of the flatness ratio")
    ap.add_argument("--save-frames", default="", help="demo: PNG of every few key frames per arm")
    args = ap.parse_args()
    for spec in args.arm:
        name, _, settings = spec.partition(":")
        try:
            DEMO_ARMS[name] = {k: (v if k in ("encode", "evict", "ann") else int(v) if v.isdigit() else float(v))
                               for k, v in (kv.split("=") for kv in settings.split(","))}
        except ValueError:
            ap.error(f"--arm: {spec!r} is not NAME:KEY=VALUE,KEY=VALUE")
    if args.pipeline == "demo":
        args.plot = "docs/kv_cache_rollout_demo.png" if args.plot is None else args.plot
        return demo_main(args)
    args.plot = "docs/kv_cache_rollout.png" if args.plot is None else args.plot
    args.steps = 2 if args.steps is None else args.steps
    torch._dynamo.config.cache_size_limit = 256      # the baseline's flex attention recompiles per shape
    if args.sweep:
        return sweep(args)
    if args.ann_bench:
        return ann_bench()

    pipe = make_far_pipeline(args.size)
    kw = lambda: far_call_kwargs(args.size, latent_frames=args.frames, chunk=args.chunk, steps=args.steps,
                                 max_sequence_length=args.text_tokens)
    partition = kw()["chunk_partition"]
    ref = args.encode                    # the unbounded arm: nothing merged or evicted
    arms = {
        "baseline": None,
        ref: dict(merge_threshold=1.5, budget_frames=0, encode=args.encode),
        "budget": dict(merge_threshold=1.5, budget_frames=args.budget, evict=args.evict, encode=args.encode),
        "tempcache": dict(merge_threshold=args.threshold, budget_frames=args.budget, evict=args.evict,
                          ann=args.ann, encode=args.encode),
        "tempcache+ann": dict(merge_threshold=args.threshold, budget_frames=args.budget, evict=args.evict,
                              ann=args.ann, encode=args.encode, cross_topk=args.cross_topk,
                              self_topk=args.self_topk if args.encode == "incremental" else 0),
    }
    stats = {}
    lat = {name: [] for name in arms}
    outputs, cache = {}, {}
    for rep in range(args.repeats + 1):                  # repeat 0 is the warm-up
        for name, settings in arms.items():
            if settings is not None:
                accelerate(pipe, "off", kv_cache=settings)
            timer = ChunkTimer(pipe.transformer)
            out = pipe(**kw()).frames
            end = time.perf_counter()
            timer.handle.remove()
            if rep:
                lat[name].append(timer.chunk_latencies(end))
            outputs[name] = out
            if settings is not None:
                cache[name] = tempcache_bytes(pipe, len(partition), 1)
                stats[name] = pipe.acceleration.report().applied[0]["stats"]
                pipe.acceleration.remove()
            else:
                cache[name] = baseline_cache_bytes(pipe, partition, kw()["height"] // 8, 1)
            print(f"repeat {rep} {name}: {end - timer.calls[0][0]:.2f}s", flush=True)
    for name, st in stats.items():
        print(f"{name} stats:", json.dumps(st))

    n = len(partition)
    frame_of = [sum(partition[:k]) for k in range(n)]
    med = {name: [statistics.median(r[k] for r in runs) for k in range(n)] for name, runs in lat.items()}
    videos = {name: decode(pipe, out) for name, out in outputs.items()}
    fid = {name: {m: per_latent_frame(m, videos["baseline"], videos[name], args.frames) for m in ("psnr", "ssim")}
           for name in arms if name != "baseline"}
    vs_incr = {name: per_latent_frame("psnr", videos[ref], videos[name], args.frames)
               for name in arms if name not in ("baseline", ref)}

    def flat(series):
        """latency (or bytes) at the chunk holding frame 8 vs the last chunk that still encodes."""
        k8 = next(k for k in range(n) if frame_of[k] >= 8)
        return series[n - 2] / series[k8]

    print(f"\nAnyFlow-FAR {args.size}: {args.frames} latent frames, chunks of {args.chunk}, {args.steps} steps, "
          f"{args.repeats} paired repeats (median), tempcache threshold {args.threshold}, budget {args.budget} "
          f"frames, evict {args.evict}, ann {args.ann}")
    print("| chunk | first frame | " + " | ".join(f"{a} ms" for a in arms) + " | "
          + " | ".join(f"{a} cache KiB" for a in arms) + " | tempcache PSNR / SSIM vs baseline |"
          + f" tempcache PSNR vs {ref} |")
    print("|" + "---|" * (2 + 2 * len(arms) + 2))
    for k in range(n):
        f = frame_of[k]
        fr = range(f, f + partition[k])
        p = statistics.mean(fid["tempcache"]["psnr"][i] for i in fr)
        s = statistics.mean(fid["tempcache"]["ssim"][i] for i in fr)
        pi = statistics.mean(vs_incr["tempcache"][i] for i in fr)
        print(f"| {k} | {f} | " + " | ".join(f"{med[a][k] * 1e3:.0f}" for a in arms) + " | "
              + " | ".join(f"{cache[a][k] / 1024:.0f}" for a in arms) + f" | {p:.1f} / {s:.3f} | {pi:.1f} |")
    print("\nflatness (chunk holding frame 8 -> last encoding chunk), latency / cache bytes:")
    for a in arms:
        print(f"  {a:14s} latency x{flat(med[a]):.2f}   cache x{flat(cache[a]) if cache[a][1] else 0:.2f}   "
              f"total {sum(med[a]):.2f}s")
    def mean_db(values):
        fin = [min(v, 100.0) for v in values]            # identical frames (inf dB) count as 100 dB
        return statistics.mean(fin)

    for a in fid:
        extra = f"; PSNR vs {ref} {mean_db(vs_incr[a]):.2f} dB" if a in vs_incr else ""
        print(f"  {a:14s} PSNR mean {mean_db(fid[a]['psnr']):.2f} dB, SSIM mean "
              f"{statistics.mean(fid[a]['ssim']):.4f} vs baseline{extra}")
    print("  rollout speedup vs baseline: " + ", ".join(f"{a} {sum(med['baseline']) / sum(med[a]):.2f}x"
                                                       for a in arms if a != "baseline"))

    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
        for a in arms:
            ax1.plot(frame_of[:-1], [x * 1e3 for x in med[a][:-1]], marker=".", label=a)
            ax2.plot(frame_of, [b / 1024 for b in cache[a]], marker=".", label=a)
        for a in fid:
            ax3.plot(range(args.frames), fid[a]["psnr"], label=f"{a} PSNR")
        ax1.set(xlabel="first frame of chunk", ylabel="chunk latency (ms, median)", title="latency per chunk")
        ax2.set(xlabel="first frame of chunk", ylabel="KV cache attended (KiB)", title="cache size")
        ax3.set(xlabel="latent frame", ylabel="PSNR vs baseline (dB)", title="fidelity per frame")
        for ax in (ax1, ax2, ax3):
            ax.legend()
            ax.grid(alpha=0.3)
        fig.suptitle(f"TempCache on AnyFlow-FAR ({args.size}, {args.frames} latent frames, CPU)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print("plot:", args.plot)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "frame_of": frame_of, "latency_s": med, "cache_bytes": cache,
                       "fidelity": fid, "psnr_vs_incremental": vs_incr, "stats": stats}, fh, indent=1)


if __name__ == "__main__":
    main()
