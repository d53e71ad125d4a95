"""Sparse-attention backends vs dense SDPA on a GPU: achieved vs ideal speedup per pattern.

One command on a CUDA machine (bf16, B=1, 24 heads, head dim 128: Flux/Wan-like)::

    python benchmarks/bench_attention_gpu.py                 # all patterns, all backends
    python benchmarks/bench_attention_gpu.py --only video    # a subset
    python benchmarks/bench_attention_gpu.py --dry-run       # CPU, tiny sizes: checks the script

For each pattern: tokens, density, ideal speedup (1/density), then per backend (xformers,
triton, flex, and dense SDPA itself, which picks FlashAttention/cuDNN on the GPU) the
median time of alternating (dense, backend) pairs, the median paired speedup, achieved/ideal
and the max error against the dense masked reference. A backend that cannot run a pattern
prints why (e.g. xformers for a 2D sliding window). The first call per backend and pattern
(compile, autotune, plan/layout building) is excluded from timing and printed as "first s".

``--dry-run`` runs on CPU at tiny sizes: flex runs eager, xformers runs its plan through the
masked-softmax executor (``run_plan(executor="torch")``), triton only under
``TRITON_INTERPRET=1``. Its times mean nothing; it proves the script and the backends' wiring.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from accelerate_diffusion.kernels import (  # noqa: E402
    FrameTileMask,
    NeighborhoodMask,
    attention,
    plan_for,
    reference_attention,
    run_plan,
    xformers_installed,
    xformers_reason,
)
from accelerate_diffusion.kernels.dispatch import triton_installed  # noqa: E402

BACKENDS = ("xformers", "triton", "flex", "dense")


def patterns(dry: bool):
    """(name, spec) at GPU sizes, or the same shapes scaled down for the dry run."""
    if dry:
        img, seq, vid, txt = (16, 16), 256, (4, 8, 8), 8
        w, s, w1 = 6, 3, 32
        vw, vs = (2, 4, 4), (2, 2, 2)
    else:
        img, seq, vid, txt = (128, 128), 16384, (21, 30, 52), 512   # 1024 px image; Wan 480p 81 frames
        w, s, w1 = 48, 16, 2048
        vw, vs = (7, 15, 26), (7, 15, 26)
    return [
        (f"image {img[0]}x{img[1]} sliding {w}", NeighborhoodMask(img, w)),
        (f"image {img[0]}x{img[1]} strided w{w} s{s}", NeighborhoodMask(img, w, stride=s)),
        (f"image {img[0]}x{img[1]} blocked {w} (Swin)", NeighborhoodMask(img, w, stride=w)),
        (f"image {img[0]}x{img[1]} strided + {txt} text", NeighborhoodMask(img, w, stride=s, prefix=txt)),
        (f"seq {seq} sliding {w1} (1D)", NeighborhoodMask((seq,), w1)),
        (f"video {'x'.join(map(str, vid))} window {'x'.join(map(str, vw))}", NeighborhoodMask(vid, vw)),
        (f"video {'x'.join(map(str, vid))} blocked {'x'.join(map(str, vw))}",
         NeighborhoodMask(vid, vw, stride=vs)),
        (f"video {'x'.join(map(str, vid))} frame tile (+frame 0)", FrameTileMask(vid, (0,))),
    ]


def why_not(backend: str, spec, device, dry: bool) -> str | None:
    """None if ``backend`` runs here, else the reason (printed in its row)."""
    if backend == "xformers":
        reason = xformers_reason(spec)
        if reason:
            return reason
        if not dry and not xformers_installed():
            return "xformers is not installed (pip install 'accelerate-diffusion[xformers]')"
    if backend == "triton":
        if not triton_installed():
            return "triton is not installed"
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            return "triton needs CUDA (or TRITON_INTERPRET=1)"
    return None


def runner(backend: str, q, k, v, spec, dry: bool):
    if backend == "dense":
        return lambda: F.scaled_dot_product_attention(q, k, v)
    if backend == "xformers" and dry:
        plan = plan_for(spec)
        return lambda: run_plan(q, k, v, plan, executor="torch")
    name = "flex_eager" if backend == "flex" and dry else backend
    return lambda: attention(q, k, v, spec, backend=name)[0]


def timed(fn, device, iters: int) -> float:
    """Seconds per call: CUDA events over ``iters`` calls on the GPU, one call on CPU."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 1 pair: checks the script")
    ap.add_argument("--dtype", default="bf16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--heads", type=int, default=24)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=7, help="alternating (dense, backend) pairs per backend")
    ap.add_argument("--iters", type=int, default=10, help="calls per timing on CUDA")
    ap.add_argument("--only", default="", help="substring filter on pattern names")
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of {','.join(BACKENDS)}")
    args = ap.parse_args(argv)
    dry = args.dry_run
    if dry:
        device, dtype, heads, dim, pairs = torch.device("cpu"), torch.float32, 2, 16, 1
    else:
        if not torch.cuda.is_available():
            ap.error("no CUDA device here; use --dry-run to check the script on CPU")
        device = torch.device("cuda")
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
        heads, dim, pairs = args.heads, args.dim, args.pairs
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in BACKENDS:
            ap.error(f"--backends: {b!r} must be one of {BACKENDS}")
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.machine()
    print(f"{'DRY RUN (CPU, tiny sizes, times meaningless): ' if dry else ''}torch {torch.__version__}, "
          f"{gpu}, {str(dtype).replace('torch.', '')}, B=1 H={heads} D={dim}, {pairs} alternating pairs")
    print("speedup = dense SDPA time / backend time (median of pairs); ideal = 1/density\n")
    hdr = (f"{'pattern':44s} {'N':>6s} {'dens':>6s} {'ideal':>6s} | {'backend':8s} {'dense ms':>9s} "
           f"{'ms':>9s} {'speedup':>8s} {'/ideal':>7s} {'maxerr':>8s} {'first s':>8s}")
    print(hdr)
    print("-" * len(hdr))
    for name, spec in patterns(dry):
        if args.only and args.only not in name:
            continue
        n, dens = spec.num_tokens, spec.density()
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(1, heads, n, dim, generator=g).to(device, dtype) for _ in range(3))
        ref = reference_attention(q.float(), k.float(), v.float(), spec) if n <= 20000 or dry else None
        dense = runner("dense", q, k, v, spec, dry)
        dense()
        lead = f"{name:44s} {n:6d} {dens:6.3f} {1 / dens:6.1f}"
        for backend in backends:
            reason = why_not(backend, spec, device, dry)
            if reason:
                print(f"{lead} | {backend:8s} not run: {reason}", flush=True)
                lead = " " * len(lead)
                continue
            fn = runner(backend, q, k, v, spec, dry)
            t0 = time.perf_counter()
            try:
                out = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
            except Exception as e:  # report and go on with the other backends
                print(f"{lead} | {backend:8s} failed: {type(e).__name__}: {str(e)[:150]}", flush=True)
                lead = " " * len(lead)
                continue
            first = time.perf_counter() - t0
            err = float("nan") if ref is None or backend == "dense" else (out.float() - ref).abs().max().item()
            td, tb, ratios = [], [], []
            for _ in range(pairs):
                a, b = timed(dense, device, args.iters), timed(fn, device, args.iters)
                td.append(a)
                tb.append(b)
                ratios.append(a / b)
            sp = statistics.median(ratios)
            print(f"{lead} | {backend:8s} {1e3 * statistics.median(td):9.2f} {1e3 * statistics.median(tb):9.2f} "
                  f"{sp:8.2f} {sp * dens:7.2f} {err:8.1e} {first:8.1f}", flush=True)
            lead = " " * len(lead)


if __name__ == "__main__":
    main()
