"""Triton block-sparse FlashAttention forward for mask specs (CUDA; CPU via TRITON_INTERPRET=1).

One program per (query block, batch*head). It walks only the key blocks the layout lists:
first the fully allowed ones without any mask arithmetic, then the partial ones, where
the mask is evaluated from the spec's interval form (per position: key coordinates, and
per query the allowed ``[lo, hi]`` per dimension and term). Online softmax in fp32, exp2;
fp16/bf16 inputs go to the tensor cores as they are (fp32 uses IEEE dots).

Tile sizes are autotuned on CUDA (``CONFIGS``, first call per spec, shape and dtype; set
``ACCEL_DIFFUSION_TRITON_AUTOTUNE=0`` for the untuned default). A tile size is not a plain
``triton.autotune`` key here: the block tables depend on it, so the tuner builds one layout
per candidate and times whole calls.

This module imports ``triton`` at import time; ``accelerate_diffusion.kernels`` only
imports it lazily (on the first triton call), so triton stays optional. For the CPU
interpreter, ``TRITON_INTERPRET=1`` must be set before triton is first imported (note
that ``import torch`` imports triton when it is installed), i.e. in the environment.
"""

from __future__ import annotations

import os
import threading

import torch

import triton
import triton.language as tl

from .layout import layout_for
from .masks import MaskSpec

__all__ = ["CONFIGS", "autotune", "configs_for", "triton_attention", "interpreting", "triton_supports"]

# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried by the tuner. Larger query tiles reuse
# K/V more; smaller ones skip more of a sparse mask (a tile is skipped only when empty).
CONFIGS = (
    (128, 64, 4, 3),
    (128, 64, 8, 3),
    (128, 128, 8, 3),
    (64, 64, 4, 3),
    (64, 128, 4, 3),
    (64, 64, 4, 2),
    (64, 32, 4, 2),
    (32, 64, 4, 2),
)
_TUNED: dict = {}
_TUNE_LOCK = threading.Lock()


def interpreting() -> bool:
    """True when Triton runs kernels with its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _step(s, v, m_i, l_i, acc, UPCAST: tl.constexpr):
    # online softmax; rows that saw no key yet keep m=-inf, guarded to avoid NaN
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if UPCAST:  # interpreter only: P rounded to v's dtype as on the GPU, then an fp32 dot
        pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    acc = acc * alpha[:, None] + pv
    return m_new, l_i, acc


@triton.jit
def _scores(q, k, qk_scale, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    elif IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    return s * qk_scale


@triton.jit
def _fwd(
    Q, K, V, O, sm_scale,
    KV_NUM, KV_IDX, FULL_NUM, FULL_IDX, n_kv_blocks,
    KC, LO, HI, RID, NPAD, G,
    N, H,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    D: tl.constexpr, D_PAD: tl.constexpr,
    NDIM: tl.constexpr, NTERMS: tl.constexpr, ACTIVE: tl.constexpr, DILATED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
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
        s = _scores(q, k, qk_scale, IEEE, UPCAST)
        m_i, l_i, acc = _step(s, v, m_i, l_i, acc, UPCAST)

    # partially allowed key blocks: evaluate the mask's interval form. Positions >= G
    # are extra (dense) tokens; per term, a key is allowed when its coordinate lies in
    # the query's [lo, hi] in every constrained dim (and the dilation residues match).
    # Arrays are padded past N, so whole blocks can be loaded without bounds masks.
    n_part = tl.load(KV_NUM + pid_m)
    for j in range(0, n_part):
        kb = tl.load(KV_IDX + pid_m * n_kv_blocks + j)
        offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
        n_valid = offs_n < N
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = _scores(q, k, qk_scale, IEEE, UPCAST)
        allowed = (offs_m[:, None] >= G) | (offs_n[None, :] >= G)
        for t in tl.static_range(NTERMS):
            ok = tl.full([BLOCK_M, BLOCK_N], 1, tl.int32)
            for i in tl.static_range(NDIM):
                if (ACTIVE >> (t * NDIM + i)) & 1:
                    kc = tl.load(KC + i * NPAD + offs_n)
                    lo = tl.load(LO + (t * NDIM + i) * NPAD + offs_m)
                    hi = tl.load(HI + (t * NDIM + i) * NPAD + offs_m)
                    inside = (lo[:, None] <= kc[None, :]) & (kc[None, :] <= hi[:, None])
                    ok = ok & inside.to(tl.int32)
            if (DILATED >> t) & 1:
                rq = tl.load(RID + t * NPAD + offs_m)
                rk = tl.load(RID + t * NPAD + offs_n)
                ok = ok & (rq[:, None] == rk[None, :]).to(tl.int32)
            allowed = allowed | (ok != 0)
        allowed = allowed & n_valid[None, :]
        s = tl.where(allowed, s, float("-inf"))
        m_i, l_i, acc = _step(s, v, m_i, l_i, acc, UPCAST)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # a row with no key -> zeros (as flex)
    out = acc / l_safe[:, None]
    tl.store(
        O + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=m_valid[:, None] & d_valid[None, :],
    )



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


def configs_for(head_dim: int, dtype: torch.dtype, smem_bytes: int = 160 * 1024) -> list[tuple[int, int, int, int]]:
    """The ``CONFIGS`` whose tiles fit ``smem_bytes`` of shared memory at this head dim and
    dtype (Q tile + ``num_stages`` K and V tiles); the tuner also skips any that fail."""
    d_pad = max(16, triton.next_power_of_2(head_dim))
    size = torch.finfo(dtype).bits // 8
    out = [c for c in CONFIGS if (c[0] + 2 * c[3] * c[1]) * d_pad * size <= smem_bytes]
    return out or [_default_blocks(head_dim)]


def _cuda_timer(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=20)


def autotune(q, k, v, spec: MaskSpec, scale=None, *, permuted: bool = False, timer=None):
    """Best ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` for this spec, shape and dtype:
    each candidate of ``configs_for`` timed once by ``timer(fn) -> ms`` (``do_bench`` on
    CUDA), cached for the process. Candidates that fail to compile or run are skipped."""
    key = (spec, tuple(q.shape), q.dtype, str(q.device), permuted)
    with _TUNE_LOCK:
        if key in _TUNED:
            return _TUNED[key]
        timer = timer or _cuda_timer
        times = {}
        for cfg in configs_for(q.shape[-1], q.dtype):
            bm, bn, nw, ns = cfg
            run = lambda: triton_attention(q, k, v, spec, scale, permuted=permuted,  # noqa: E731
                                           block_m=bm, block_n=bn, num_warps=nw, num_stages=ns)
            try:
                times[cfg] = timer(run)
            except Exception:  # e.g. out of shared memory on this GPU
                continue
        if not times:
            raise RuntimeError(f"triton autotune: no config of {CONFIGS} ran for shape {tuple(q.shape)}, {q.dtype}")
        _TUNED[key] = min(times, key=times.get)
        return _TUNED[key]


def _tune_enabled(q) -> bool:
    return q.is_cuda and os.environ.get("ACCEL_DIFFUSION_TRITON_AUTOTUNE", "1") not in ("0", "false", "False")


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
    """Block-sparse attention over ``[B, H, N, D]`` with the Triton kernel. Without explicit
    tile arguments, CUDA calls use the autotuned config (``autotune``)."""
    reason = triton_supports(q)
    if reason:
        raise RuntimeError(reason)
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must share one shape [B, H, N, D], got {q.shape}, {k.shape}, {v.shape}")
    spec.check_tokens(q.shape[-2])
    B, H, N, D = q.shape
    explicit = any(x is not None for x in (block_m, block_n, num_warps, num_stages))
    if not explicit and _tune_enabled(q):
        bm, bn, nw, ns = autotune(q, k, v, spec, scale, permuted=permuted)
    else:
        bm, bn, nw, ns = _default_blocks(D)
    bm, bn = block_m or bm, block_n or bn
    nw, ns = num_warps or nw, num_stages or ns
    if not (16 <= bm <= 256 and 16 <= bn <= 256):
        raise ValueError(f"block_m={bm} and block_n={bn} must be in [16, 256]")
    layout = layout_for(spec, bm, bn)
    t = layout.on(q.device)
    iv = layout.interval_arrays(q.device)
    active = sum(1 << (ti * spec.ndim + i) for ti, term in enumerate(iv["active"]) for i, a in enumerate(term) if a)
    dilated = sum(1 << ti for ti, dl in enumerate(iv["dilated"]) if dl)
    if not permuted:
        q, k, v = layout.permute(q), layout.permute(k), layout.permute(v)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    o = torch.empty(B, H, N, D, dtype=q.dtype, device=q.device)
    scale = D ** -0.5 if scale is None else float(scale)
    grid = (layout.num_q_blocks, B * H)
    _fwd[grid](
        q, k, v, o, scale,
        t["kv_num"], t["kv_idx"], t["full_num"], t["full_idx"], layout.num_kv_blocks,
        iv["kc"], iv["lo"], iv["hi"], iv["rid"], iv["kc"].shape[1], iv["G"],
        N, H,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        D=D, D_PAD=max(16, triton.next_power_of_2(D)),
        NDIM=spec.ndim, NTERMS=len(iv["active"]), ACTIVE=active, DILATED=dilated,
        BLOCK_M=bm, BLOCK_N=bn, IEEE=q.dtype == torch.float32,
        # Triton 3.9's interpreter gets bf16 dots wrong (it multiplies the raw bits)
        UPCAST=interpreting() and q.dtype == torch.bfloat16,
        num_warps=nw, num_stages=ns,
    )
    return o if permuted else layout.unpermute(o)
