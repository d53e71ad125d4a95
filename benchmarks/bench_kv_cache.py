"""TempCache on a long AnyFlow-FAR rollout: per-chunk latency and KV-cache bytes vs frame index.

Arms, timed alternately in one process (paired), medians over repeats:
  baseline     the unpatched pipeline (FAR re-encodes the whole history after each chunk)
  incremental  kv_cache with nothing merged or evicted (encode each chunk once; cache grows)
  budget       kv_cache with the budget only (nothing merged): what eviction alone costs
  tempcache    kv_cache with merging and the budget (the accelerated setting)
  tempcache+ann  tempcache plus AnnCA (prompt tokens retrieved per query block) and AnnSA
Fidelity: PSNR/SSIM per latent frame of the decoded videos vs the baseline rollout, and
PSNR vs the "incremental" arm (isolates what merging/eviction/retrieval change).
MACs are not reported: torch's flop counter fails on the pipeline's flex_attention.

    python benchmarks/bench_kv_cache.py --size micro --frames 64 --chunk 2 --repeats 3
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


def tempcache_bytes(ctrl, n_chunks, batch, cfg) -> list[int]:
    """K/V bytes of the TempCache each chunk attends to (row k-1 of the controller: chunks < k)."""
    per_token = 2 * batch * cfg.num_attention_heads * cfg.attention_head_dim * 4
    out = [0]
    for row in ctrl.chunks[: n_chunks - 1]:
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


PRESET_CANDIDATES = {
    "quality": dict(encode="pipeline", merge_threshold=0.95, budget_frames=12),
    "balanced": dict(merge_threshold=0.9, budget_frames=8),
    "fast": dict(merge_threshold=0.7, budget_frames=6),
    "max": dict(merge_threshold=0.5, budget_frames=4, cross_topk=16, self_topk=4),
}


def sweep(args) -> None:
    """Fidelity and cache size of the preset candidates (one rollout each, no timing)."""
    pipe = make_far_pipeline(args.size)
    kw = lambda: far_call_kwargs(args.size, latent_frames=args.frames, chunk=args.chunk, steps=args.steps,
                                 max_sequence_length=args.text_tokens)
    reference = decode(pipe, pipe(**kw()).frames)
    print(f"| candidate | settings | PSNR mean (dB) | SSIM mean | last-frame PSNR | cache tokens/layer (last) | merges |")
    print("|---|---|---|---|---|---|---|")
    for name, settings in PRESET_CANDIDATES.items():
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ann-bench", action="store_true", help="ANN retrieval timing: torch vs faiss")
    ap.add_argument("--sweep", action="store_true", help="preset candidates: fidelity and cache size only")
    ap.add_argument("--size", default="micro", choices=("micro", "small"))
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--text-tokens", type=int, default=512, help="max_sequence_length (pipeline default 512)")
    ap.add_argument("--cross-topk", type=int, default=16)
    ap.add_argument("--self-topk", type=int, default=8)
    ap.add_argument("--budget", type=float, default=6.0, help="budget_frames")
    ap.add_argument("--evict", default="attention")
    ap.add_argument("--ann", default="exact")
    ap.add_argument("--plot", default="docs/kv_cache_rollout.png")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch._dynamo.config.cache_size_limit = 256      # the baseline's flex attention recompiles per shape
    if args.sweep:
        return sweep(args)
    if args.ann_bench:
        return ann_bench()

    pipe = make_far_pipeline(args.size)
    kw = lambda: far_call_kwargs(args.size, latent_frames=args.frames, chunk=args.chunk, steps=args.steps,
                                 max_sequence_length=args.text_tokens)
    partition = kw()["chunk_partition"]
    arms = {
        "baseline": None,
        "incremental": dict(merge_threshold=1.5, budget_frames=0, encode="incremental"),
        "budget": dict(merge_threshold=1.5, budget_frames=args.budget, evict=args.evict, encode="incremental"),
        "tempcache": dict(merge_threshold=args.threshold, budget_frames=args.budget, evict=args.evict,
                          ann=args.ann, encode="incremental"),
        "tempcache+ann": dict(merge_threshold=args.threshold, budget_frames=args.budget, evict=args.evict,
                              ann=args.ann, encode="incremental", cross_topk=args.cross_topk,
                              self_topk=args.self_topk),
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
                cache[name] = tempcache_bytes(pipe._kv_cache_controller, len(partition), 1, pipe.transformer.config)
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
    vs_incr = {name: per_latent_frame("psnr", videos["incremental"], videos[name], args.frames)
               for name in arms if name not in ("baseline", "incremental")}

    def flat(series):
        """latency (or bytes) at the chunk holding frame 8 vs the last chunk that still encodes."""
        k8 = next(k for k in range(n) if frame_of[k] >= 8)
        return series[n - 2] / series[k8]

    print(f"\nAnyFlow-FAR {args.size}: {args.frames} latent frames, chunks of {args.chunk}, {args.steps} steps, "
          f"{args.repeats} paired repeats (median), tempcache threshold {args.threshold}, budget {args.budget} "
          f"frames, evict {args.evict}, ann {args.ann}")
    print("| chunk | first frame | " + " | ".join(f"{a} ms" for a in arms) + " | "
          + " | ".join(f"{a} cache KiB" for a in arms) + " | tempcache PSNR / SSIM vs baseline |"
          + " tempcache PSNR vs incremental |")
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
        extra = f"; PSNR vs incremental {mean_db(vs_incr[a]):.2f} dB" if a in vs_incr else ""
        print(f"  {a:14s} PSNR mean {mean_db(fid[a]['psnr']):.2f} dB, SSIM mean "
              f"{statistics.mean(fid[a]['ssim']):.4f} vs baseline{extra}")
    print(f"  rollout speedup vs baseline: " + ", ".join(f"{a} {sum(med['baseline']) / sum(med[a]):.2f}x"
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
