"""Triton block-sparse FlashAttention forward for mask specs (CUDA; CPU via TRITON_INTERPRET=1).

One program per (query block, batch*head). It walks only the key blocks the layout lists:
first the fully allowed ones without any mask arithmetic, then the partial ones, where
the mask is evaluated from the spec's normal form (per-token grid coordinates looked up
in small per-dimension ``[L, L]`` relation tables). Online softmax in fp32, exp2.

This module imports ``triton`` at import time; ``accelerate_diffusion.kernels`` only
imports it lazily (on the first triton call), so triton stays optional. For the CPU
interpreter, ``TRITON_INTERPRET=1`` must be set before triton is first imported (note
that ``import torch`` imports triton when it is installed), i.e. in the environment.
"""

from __future__ import annotations

import math
import os

import torch

import triton
import triton.language as tl

from .layout import BlockLayout, layout_for
from .masks import MaskSpec

__all__ = ["triton_attention", "interpreting", "triton_supports"]


def interpreting() -> bool:
    """True when Triton runs kernels with its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _step(s, v, m_i, l_i, acc):
    # online softmax; rows that saw no key yet keep m=-inf, guarded to avoid NaN
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _scores(q, k, qk_scale, IEEE: tl.constexpr):
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    return s * qk_scale


@triton.jit
def _fwd(
    Q, K, V, O, sm_scale,
    KV_NUM, KV_IDX, FULL_NUM, FULL_IDX, n_kv_blocks,
    COORDS, EXTRA, TAB,
    N, H,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    D: tl.constexpr, D_PAD: tl.constexpr,
    NDIM: tl.constexpr, NTERMS: tl.constexpr, LMAX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    m_valid = offs_m < N
    d_valid = offs_d < D
    q = tl.load(
        Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :],
        mask=m_valid[:, None] & d_valid[None, :], other=0.0,
    )
    qk_scale = sm_scale * 1.4426950408889634  # log2(e): softmax via exp2
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh

    # fully allowed key blocks: no mask arithmetic (never the ragged last block)
    n_full = tl.load(FULL_NUM + pid_m)
    for j in range(0, n_full):
        kb = tl.load(FULL_IDX + pid_m * n_kv_blocks + j)
        offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n < N)[:, None] & d_valid[None, :]
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = _scores(q, k, qk_scale, IEEE)
        m_i, l_i, acc = _step(s, v, m_i, l_i, acc)

    # partially allowed key blocks: evaluate the mask's normal form
    extra_q = tl.load(EXTRA + offs_m, mask=m_valid, other=1) != 0
    n_part = tl.load(KV_NUM + pid_m)
    for j in range(0, n_part):
        kb = tl.load(KV_IDX + pid_m * n_kv_blocks + j)
        offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
        n_valid = offs_n < N
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = _scores(q, k, qk_scale, IEEE)
        extra_k = tl.load(EXTRA + offs_n, mask=n_valid, other=0) != 0
        allowed = extra_q[:, None] | extra_k[None, :]
        for t in tl.static_range(NTERMS):
            ok = tl.full([BLOCK_M, BLOCK_N], 1, tl.int32)
            for i in tl.static_range(NDIM):
                qc = tl.load(COORDS + i * N + offs_m, mask=m_valid, other=0)
                kc = tl.load(COORDS + i * N + offs_n, mask=n_valid, other=0)
                tab = tl.load(TAB + (t * NDIM + i) * LMAX * LMAX + qc[:, None] * LMAX + kc[None, :])
                ok = ok & (tab != 0).to(tl.int32)
            allowed = allowed | (ok != 0)
        allowed = allowed & n_valid[None, :]
        s = tl.where(allowed, s, float("-inf"))
        m_i, l_i, acc = _step(s, v, m_i, l_i, acc)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # a row with no key -> zeros (as flex)
    out = acc / l_safe[:, None]
    tl.store(
        O + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=m_valid[:, None] & d_valid[None, :],
    )



def _aux(layout: BlockLayout, device) -> dict:
    """Per-token coordinates, extra-token flags and packed relation tables (cached)."""
    key = ("triton_aux", str(torch.device(device)))
    if key not in layout._cache:
        spec = layout.spec
        n, p, g = spec.num_tokens, spec.prefix, spec.grid_size
        perm = layout.perm
        gidx = perm - p
        is_extra = (gidx < 0) | (gidx >= g)
        flat = torch.where(is_extra, torch.zeros_like(gidx), gidx)
        coords = []
        for size in reversed(spec.grid[1:]):
            coords.append(flat % size)
            flat = flat // size
        coords.append(flat)
        coords = torch.stack(list(reversed(coords))).to(torch.int32).contiguous()
        lmax = max(spec.grid)
        tables = spec.rel_tables()
        tab = torch.zeros(len(tables), spec.ndim, lmax, lmax, dtype=torch.int8)
        for t, term in enumerate(tables):
            for i, table in enumerate(term):
                L = table.shape[0]
                tab[t, i, :L, :L] = table.to(torch.int8)
        layout._cache[key] = {
            "coords": coords.to(device),
            "extra": is_extra.to(torch.int8).to(device),
            "tab": tab.reshape(-1).contiguous().to(device),
            "nterms": len(tables),
            "lmax": lmax,
        }
    return layout._cache[key]


def triton_supports(q: torch.Tensor) -> str | None:
    """None if the kernel can run on ``q``; otherwise the reason it cannot."""
    if not (q.is_cuda or interpreting()):
        return "triton needs a CUDA tensor (or TRITON_INTERPRET=1 on CPU)"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"triton kernel supports fp16/bf16/fp32, got {q.dtype}"
    if q.shape[-1] > 256:
        return f"triton kernel supports head dim <= 256, got {q.shape[-1]}"
    return None


def _default_blocks(head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages): untuned, safe SRAM use up to d=128."""
    if interpreting():
        return 16, 16, 1, 1
    if head_dim <= 64:
        return 128, 64, 4, 3
    return 64, 64, 4, 2


def triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: MaskSpec,
    scale: float | None = None,
    *,
    permuted: bool = False,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Block-sparse attention over ``[B, H, N, D]`` with the Triton kernel."""
    reason = triton_supports(q)
    if reason:
        raise RuntimeError(reason)
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must share one shape [B, H, N, D], got {q.shape}, {k.shape}, {v.shape}")
    spec.check_tokens(q.shape[-2])
    B, H, N, D = q.shape
    bm, bn, nw, ns = _default_blocks(D)
    bm, bn = block_m or bm, block_n or bn
    nw, ns = num_warps or nw, num_stages or ns
    layout = layout_for(spec, bm, bn)
    t = layout.on(q.device)
    aux = _aux(layout, q.device)
    if not permuted:
        q, k, v = layout.permute(q), layout.permute(k), layout.permute(v)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    o = torch.empty(B, H, N, D, dtype=q.dtype, device=q.device)
    scale = D ** -0.5 if scale is None else float(scale)
    grid = (layout.num_q_blocks, B * H)
    _fwd[grid](
        q, k, v, o, scale,
        t["kv_num"], t["kv_idx"], t["full_num"], t["full_idx"], layout.num_kv_blocks,
        aux["coords"], aux["extra"], aux["tab"],
        N, H,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        D=D, D_PAD=max(16, triton.next_power_of_2(D)),
        NDIM=spec.ndim, NTERMS=aux["nterms"], LMAX=aux["lmax"],
        BLOCK_M=bm, BLOCK_N=bn, IEEE=q.dtype == torch.float32,
        num_warps=nw, num_stages=ns,
    )
    return o if permuted else layout.unpermute(o)
