"""Sparse-attention backends vs dense SDPA at DiT-like shapes.

For each mask pattern: density (fraction of the N x N scores a sparse kernel needs),
ideal speedup 1/density, block density of the tiled layout, then per available backend
the median time of alternating (dense, backend) pairs, the median paired speedup and
achieved/ideal. Correctness is checked against the dense masked reference once.

    python benchmarks/bench_attention.py              # CPU: compiled flex + references
    python benchmarks/bench_attention.py --quick      # fewer reps, smaller video
    python benchmarks/bench_attention.py --device cuda --dtype bf16   # + Triton kernel

The first compiled-flex call per pattern is excluded from timing (compile + warm-up).
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
    CrissCrossMask,
    FrameTileMask,
    NeighborhoodMask,
    attention,
    available_backends,
    canonical_layout,
    reference_attention,
)


def patterns(quick: bool):
    img = (64, 64)
    vid = (8, 24, 24) if quick else (8, 32, 32)
    return [
        ("image 64x64 sliding 24x24", NeighborhoodMask(img, 24)),
        ("image 64x64 strided w24 s8", NeighborhoodMask(img, 24, stride=8)),
        ("image 64x64 blocked 32x16 (Swin)", NeighborhoodMask(img, (32, 16), stride=(32, 16))),
        ("seq 4096 sliding 512 (1D)", NeighborhoodMask((4096,), 512)),
        ("seq 4096 sliding 128 (1D)", NeighborhoodMask((4096,), 128)),
        ("image 64x64 sliding 24x24 + 128 text", NeighborhoodMask(img, 24, prefix=128)),
        (f"video {vid[0]}x{vid[1]}x{vid[2]} window 3x12x12",
         NeighborhoodMask(vid, (3, 12, 12))),
        (f"video {vid[0]}x{vid[1]}x{vid[2]} frame tile (+frame 0)", FrameTileMask(vid, (0,))),
        (f"video {vid[0]}x{vid[1]}x{vid[2]} criss-cross 1x4x4",
         CrissCrossMask(vid, (1, 4, 4))),
    ]


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="substring filter on pattern names")
    ap.add_argument("--eager", action="store_true", help="also time eager flex (slow)")
    args = ap.parse_args()
    if args.quick:
        args.reps = min(args.reps, 3)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    backends = [b for b in available_backends(device) if b in ("triton", "flex", "reference")]
    if args.eager:
        backends.append("flex_eager")
    print(f"torch {torch.__version__}, device {device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), {args.dtype}, B=1 H={args.heads} D={args.dim}, "
          f"{args.reps} alternating pairs per backend; backends: {', '.join(backends)}")
    print("dense = F.scaled_dot_product_attention without mask; speedup = dense/backend "
          "(median of pairs); ideal = 1/density\n")
    hdr = f"{'pattern':42s} {'N':>6s} {'dens':>6s} {'blk':>6s} {'ideal':>6s} | {'backend':10s} " \
          f"{'dense ms':>9s} {'ms':>9s} {'speedup':>8s} {'/ideal':>7s} {'maxerr':>8s} {'compile s':>9s}"
    print(hdr)
    print("-" * len(hdr))
    for name, spec in patterns(args.quick):
        if args.only and args.only not in name:
            continue
        n = spec.num_tokens
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(1, args.heads, n, args.dim, generator=g).to(device, dtype) for _ in range(3))
        dens = spec.density()
        blk = canonical_layout(spec).block_density
        ref = None
        dense_fn = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
        dense_fn()
        first = True
        for backend in backends:
            if backend == "reference" and ref is None:
                ref = reference_attention(q, k, v, spec).float()
            fn = lambda: attention(q, k, v, spec, backend=backend)[0]  # noqa: E731
            t0 = time.perf_counter()
            out = fn()  # compile / warm-up
            warm = time.perf_counter() - t0
            if ref is None:
                ref = reference_attention(q, k, v, spec).float()
            err = (out.float() - ref).abs().max().item()
            reps = 1 if backend == "flex_eager" else args.reps
            td, tb, ratios = [], [], []
            for _ in range(reps):
                a = timed(dense_fn, device)
                b = timed(fn, device)
                td.append(a)
                tb.append(b)
                ratios.append(a / b)
            sp = statistics.median(ratios)
            lead = (f"{name:42s} {n:6d} {dens:6.3f} {blk:6.3f} {1 / dens:6.1f}" if first
                    else " " * 71)
            first = False
            comp = f"{warm:9.1f}" if backend.startswith("flex") or backend == "triton" else " " * 9
            print(f"{lead} | {backend:10s} {1e3 * statistics.median(td):9.1f} "
                  f"{1e3 * statistics.median(tb):9.1f} {sp:8.2f} {sp * dens:7.2f} {err:8.1e} {comp}",
                  flush=True)


if __name__ == "__main__":
    main()
