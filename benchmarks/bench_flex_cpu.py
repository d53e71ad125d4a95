"""Compiled FlexAttention on CPU: plain row-major vs tiled token order, against dense SDPA.

    python benchmarks/bench_flex_cpu.py            # 64x64 grid, B=1 H=4 D=64, window 24
    python benchmarks/bench_flex_cpu.py --smoke    # tiny and eager: checks the script only

Per pattern (2D sliding window, stride 1, and strided, stride 8): density, ideal speedup
1/density, then per variant the block coverage (fraction of 64x64 (query, key) blocks
computed) and the median of per-round speedups over dense SDPA, the variants alternating
within each round (dense, plain, tiled, flex dense), so machine load hits all alike:

* ``plain``: flex over row-major tokens (a 64-token block is one grid row);
* ``tiled``: the canonical tiled order (``layout.canonical_layout``: 8x8 tiles here), q/k/v
  permuted once per call and the output permuted back, as ``attention()`` does;
* ``flex dense``: flex with every block computed (a dense spec): the kernel's own speed
  per block relative to SDPA, ``eff``. No order can beat ``eff * density / coverage`` of
  ideal, which the last column prints for the tiled order.

Both flex variants are checked against the dense masked reference first. For a Hilbert
curve order the script prints the block coverage only: on a power-of-two grid every
aligned run of 4^k curve positions is a 2^k x 2^k square, so its 64-token blocks are the
8x8 tiles in another sequence, and flex would do the same work. ``split``: the lowest
coverage when queries and keys are tiled differently (any pair of 64-token tiles).

``grouped`` (patterns the xformers plan expresses as block-diagonal groups, i.e. strided):
not flex and not a library backend, a probe of another CPU route: the xformers plan's
query groups (gathered) against their gathered keys, one batched dense SDPA per group size.
It computes exactly the allowed pairs at SDPA's speed, but copies K/V ``gather`` times.
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

from accelerate_diffusion.kernels import DenseMask, NeighborhoodMask, plan_for, reference_attention  # noqa: E402
from accelerate_diffusion.kernels.flex import flex_attention_sparse, flex_block_mask  # noqa: E402


def hilbert_order(side: int) -> torch.Tensor:
    """Row-major token indices along a Hilbert curve over a ``side x side`` grid (power of 2)."""
    out = []
    for d in range(side * side):
        x = y = 0
        t, s = d, 1
        while s < side:
            rx = 1 & (t // 2)
            ry = 1 & (t ^ rx)
            if ry == 0:  # rotate the quadrant
                if rx == 1:
                    x, y = s - 1 - x, s - 1 - y
                x, y = y, x
            x, y = x + s * rx, y + s * ry
            t //= 4
            s *= 2
        out.append(y * side + x)
    return torch.tensor(out)


def coverage_of_order(spec, order: torch.Tensor, block: int) -> float:
    """Fraction of (query block, key block) pairs with any allowed pair, tokens in ``order``."""
    m = spec.dense_mask()[order][:, order]
    nb = m.shape[0] // block
    return m.reshape(nb, block, nb, block).any(3).any(1).float().mean().item()


def best_split_orders(spec, block: int):
    """Lowest coverage over (query tile, key tile) pairs of ``block``-token tiles: q and k/v
    may be permuted differently (attention does not care about key order)."""
    from accelerate_diffusion.kernels.layout import _order

    m = spec.dense_mask()
    tiles, side = [], 1
    while side <= block:
        if block % side == 0 and all(t <= L for t, L in zip((side, block // side), spec.grid)):
            tiles.append((side, block // side))
        side *= 2
    orders = {t: torch.from_numpy(_order(spec, t)) for t in tiles}
    best = None
    for tq, oq in orders.items():
        rows = m[oq]
        for tk, ok in orders.items():
            nb = m.shape[0] // block
            cov = rows[:, ok].reshape(nb, block, nb, block).any(3).any(1).float().mean().item()
            if best is None or cov < best[0]:
                best = (cov, tq, tk)
    return best


def grouped_sdpa(spec):
    """``fn(q, k, v)``: the spec's xformers block-diagonal plan run as batched SDPA calls,
    one per (group size, key-set size); None when the plan is not block-diagonal."""
    from collections import defaultdict

    from accelerate_diffusion.kernels import xformers_reason

    if xformers_reason(spec) is not None or plan_for(spec).kind != "block_diagonal":
        return None, 0.0
    plan = plan_for(spec)
    (part,) = plan.parts
    (call,) = part.calls
    qs, ks = call.bias.q_seqlens, call.bias.kv_seqlens
    q_start = [0] + torch.tensor(qs).cumsum(0).tolist()
    k_start = [0] + torch.tensor(ks).cumsum(0).tolist()
    buckets = defaultdict(list)
    for i, size in enumerate(zip(qs, ks)):
        buckets[size].append(i)
    calls = []
    for (a, b), groups in buckets.items():
        qi = torch.cat([part.q_idx[q_start[i]:q_start[i + 1]] for i in groups])
        ki = torch.cat([call.k_idx[k_start[i]:k_start[i + 1]] for i in groups])
        calls.append((a, b, len(groups), qi, ki))

    def fn(q, k, v):
        B, H, _, D = q.shape
        qx, kx, vx = (x.transpose(1, 2) for x in (q, k, v))        # [B, N, H, D]
        out = torch.empty_like(qx)
        for a, b, g, qi, ki in calls:
            qq = qx[:, qi].reshape(B * g, a, H, D).transpose(1, 2)
            kk = kx[:, ki].reshape(B * g, b, H, D).transpose(1, 2)
            vv = vx[:, ki].reshape(B * g, b, H, D).transpose(1, 2)
            o = F.scaled_dot_product_attention(qq, kk, vv)
            out[:, qi] = o.transpose(1, 2).reshape(B, g * a, H, D)
        return out.transpose(1, 2)

    return fn, plan.gather_factor


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", type=int, default=64, help="side of the square token grid")
    ap.add_argument("--window", type=int, default=24)
    ap.add_argument("--stride", type=int, default=8, help="stride of the strided pattern")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--block", type=int, default=64, help="flex block size (query and key)")
    ap.add_argument("--smoke", action="store_true", help="16x16 grid, window 8, stride 4, eager flex, 1 round")
    args = ap.parse_args(argv)
    compile_ = True
    if args.smoke:
        args.grid, args.window, args.stride, args.heads, args.dim, args.rounds, args.block = 16, 8, 4, 2, 16, 1, 16
        compile_ = False
    grid = (args.grid, args.grid)
    blk = args.block
    print(f"{'SMOKE (eager, tiny; times meaningless): ' if args.smoke else ''}torch {torch.__version__}, "
          f"{platform.machine()}, {torch.get_num_threads()} threads, fp32, B=1 H={args.heads} D={args.dim}, "
          f"grid {args.grid}x{args.grid}, window {args.window}, flex blocks {blk}x{blk}, {args.rounds} rounds")
    print("speedup = dense SDPA / variant, median over rounds; /ideal = speedup x density; "
          "bound = eff x density / coverage\n")
    g = torch.Generator().manual_seed(0)
    n = args.grid * args.grid
    q, k, v = (torch.randn(1, args.heads, n, args.dim, generator=g) for _ in range(3))
    dense = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    full_spec = DenseMask(grid)

    def flex(spec, tile=None):
        return lambda: flex_attention_sparse(q, k, v, spec, compile=compile_, block_q=blk, block_kv=blk, tile=tile)

    hdr = (f"{'pattern':24s} {'dens':>6s} {'ideal':>6s} | {'variant':10s} {'coverage':>8s} {'ms':>8s} "
           f"{'speedup':>8s} {'/ideal':>7s} {'bound':>6s} {'maxerr':>8s}")
    print(hdr)
    print("-" * len(hdr))
    for name, stride in ((f"sliding {args.window}", 1), (f"strided {args.window} s{args.stride}", args.stride)):
        spec = NeighborhoodMask(grid, args.window, stride=stride)
        dens = spec.density()
        ref = reference_attention(q, k, v, spec)
        variants = {
            "plain": (flex(spec, tile=grid), flex_block_mask(spec, "cpu", blk, blk, grid)[0].block_density),
            "tiled": (flex(spec), flex_block_mask(spec, "cpu", blk, blk)[0].block_density),
            "flex dense": (flex(full_spec), 1.0),
        }
        grouped, gather = grouped_sdpa(spec)
        if grouped is not None:
            variants["grouped"] = (lambda: grouped(q, k, v), dens)
        errs = {}
        for label, (fn, _) in variants.items():
            out = fn()  # compile + warm-up
            errs[label] = (out - ref).abs().max().item() if label != "flex dense" else float("nan")
        dense()
        times = {label: [] for label in ["dense", *variants]}
        ratios = {label: [] for label in variants}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            dense()
            td = time.perf_counter() - t0
            times["dense"].append(td)
            for label, (fn, _) in variants.items():
                t0 = time.perf_counter()
                fn()
                tv = time.perf_counter() - t0
                times[label].append(tv)
                ratios[label].append(td / tv)
        eff = statistics.median(ratios["flex dense"])
        lead = f"{name:24s} {dens:6.3f} {1 / dens:6.1f}"
        print(f"{lead} | {'dense SDPA':10s} {1.0:8.3f} {1e3 * statistics.median(times['dense']):8.1f} "
              f"{1.0:8.2f} {dens:7.2f}")
        lead = " " * len(lead)
        for label, (_, cov) in variants.items():
            sp = statistics.median(ratios[label])
            d = 1.0 if label == "flex dense" else dens
            bound = f"{eff * dens / cov:6.2f}" if label == "tiled" else " " * 6
            note = f"  (K/V gathered {gather:.1f}x)" if label == "grouped" else ""
            print(f"{lead} | {label:10s} {cov:8.3f} {1e3 * statistics.median(times[label]):8.1f} {sp:8.2f} "
                  f"{sp * d:7.2f} {bound} {errs[label]:8.1e}{note}", flush=True)
        side = args.grid
        if side & (side - 1) == 0 and n % blk == 0:
            print(f"{lead} | {'hilbert':10s} {coverage_of_order(spec, hilbert_order(side), blk):8.3f}   "
                  "(coverage only)", flush=True)
            cov, tq, tk = best_split_orders(spec, blk)
            print(f"{lead} | {'split':10s} {cov:8.3f}   (coverage only: best q tile {tq[0]}x{tq[1]}, "
                  f"k/v tile {tk[0]}x{tk[1]})", flush=True)


if __name__ == "__main__":
    main()
