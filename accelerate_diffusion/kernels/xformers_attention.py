"""xformers backend: mask specs as ``xformers.ops.fmha`` attention biases (CUDA).

xformers' memory-efficient kernels skip work only for the bias classes they know, not for
a dense tensor bias. Two of them fit our specs:

* ``LocalAttentionFromBottomRightMask`` (a band): 1D sliding windows. A NATTEN window is
  shifted, not cut, at the sequence ends, so the queries nearer an end than half a window
  run as a separate dense part against the first/last ``window`` keys.
* ``BlockDiagonalMask`` over gathered keys: patterns where whole groups of queries share
  one key set (strided and blocked windows in any dimension, frame tiles). Queries are
  gathered group by group, each group's keys are gathered next to each other, and the
  block-diagonal bias pairs query group ``i`` with key group ``i``. The gather costs
  ``gather_factor`` times the K/V memory, so it is refused above ``MAX_GATHER``.

Joint text tokens (prefix/suffix) are dense: their queries form one more block that sees
every key, and every grid group also gets the text keys (band plans add a second call
over the text keys, merged by log-sum-exp). Whatever does not fit gets a one-line reason
(``xformers_reason``), e.g. 2D sliding windows, where every query has its own key set.

A plan is plain data (index tensors and bias descriptions), so it is tested on CPU by
materialising each bias (``materialize``) and comparing with the spec's dense mask; only
``xformers_attention`` imports xformers, lazily, on CUDA.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache

import torch

from .masks import MaskSpec, _Window

__all__ = [
    "Bias",
    "KeyCall",
    "MAX_GATHER",
    "Part",
    "XformersPlan",
    "materialize",
    "plan_for",
    "run_plan",
    "to_xformers_bias",
    "xformers_attention",
    "xformers_installed",
    "xformers_reason",
]

MAX_GATHER = 16.0      # gathered keys per token above which a plan costs more memory than it saves
MIN_GROUP = 8          # mean queries per block-diagonal group below which the kernel runs near-empty tiles


@dataclass(frozen=True)
class Bias:
    """One xformers bias, described by data.

    ``kind``: ``"none"`` (dense), ``"local"`` (``LocalAttentionFromBottomRightMask``: query
    ``i`` sees key ``j`` iff ``i - left <= j + nq - nk <= i + right``) or
    ``"block_diagonal"`` (``BlockDiagonalMask.from_seqlens(q_seqlens, kv_seqlens)``)."""

    kind: str
    left: int = 0
    right: int = 0
    q_seqlens: tuple[int, ...] = ()
    kv_seqlens: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class KeyCall:
    """Attention of a part's queries over ``k_idx`` keys (token indices) with ``bias``."""

    k_idx: torch.Tensor
    bias: Bias


@dataclass(frozen=True, eq=False)
class Part:
    """Queries ``q_idx``; when several calls, their outputs merge by log-sum-exp (the calls'
    key sets are disjoint, so every allowed pair is counted once)."""

    q_idx: torch.Tensor
    calls: tuple[KeyCall, ...]


@dataclass(frozen=True, eq=False)
class XformersPlan:
    """Parts with disjoint query sets covering all tokens; ``kind`` names the mapping."""

    kind: str
    parts: tuple[Part, ...]
    gather_factor: float      # keys gathered per token (1.0: none)


def xformers_installed() -> bool:
    try:
        return importlib.util.find_spec("xformers") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["xformers"] = None
        return False


# -- mask materialisation (our reading of each bias class; tests compare it with xformers') --
def materialize(bias: Bias, nq: int, nk: int, device=None) -> torch.Tensor:
    """``[nq, nk]`` bool mask (True = attend) of ``bias`` for ``nq`` queries and ``nk`` keys."""
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    if bias.kind == "none":
        return (i >= 0) & (j >= 0)
    if bias.kind == "local":
        shifted = j + (nq - nk)
        return (shifted >= i - bias.left) & (shifted <= i + bias.right)
    if bias.kind == "block_diagonal":
        qs = torch.tensor((0,) + bias.q_seqlens, device=device).cumsum(0)
        ks = torch.tensor((0,) + bias.kv_seqlens, device=device).cumsum(0)
        if int(qs[-1]) != nq or int(ks[-1]) != nk:
            raise ValueError(f"block_diagonal bias covers {int(qs[-1])} x {int(ks[-1])}, not {nq} x {nk}")
        qb = torch.searchsorted(qs[1:], i, right=True)
        kb = torch.searchsorted(ks[1:], j, right=True)
        return qb == kb
    raise ValueError(f"bias kind={bias.kind!r} must be one of ('none', 'local', 'block_diagonal')")


def to_xformers_bias(bias: Bias, batch: int = 1, device=None):
    """The ``xformers.ops.fmha.attn_bias`` object for ``bias`` (None for dense).
    Block-diagonal biases are repeated ``batch`` times (the batch is folded into the sequence)."""
    from xformers.ops.fmha import attn_bias as ab

    if bias.kind == "none":
        return None
    if bias.kind == "local":
        return ab.LocalAttentionFromBottomRightMask(window_left=bias.left, window_right=bias.right)
    if bias.kind == "block_diagonal":
        return ab.BlockDiagonalMask.from_seqlens(list(bias.q_seqlens) * batch, list(bias.kv_seqlens) * batch,
                                                 device=device)
    raise ValueError(f"bias kind={bias.kind!r} must be one of ('none', 'local', 'block_diagonal')")


# -- planning -----------------------------------------------------------------------------
def _extras(spec: MaskSpec) -> torch.Tensor:
    p, g, n = spec.prefix, spec.grid_size, spec.num_tokens
    return torch.cat([torch.arange(0, p), torch.arange(p + g, n)])


def _band_plan(spec: MaskSpec) -> XformersPlan:
    (rel,) = spec.terms[0]
    L, k, p = spec.grid[0], rel.window, spec.prefix
    extras = _extras(spec)
    if rel.causal:
        # key w sees query u iff u - k < w <= u: a band, the same at both ends
        pieces = [(torch.arange(L), torch.arange(L), Bias("local", left=k - 1, right=0))]
    else:
        left, right = k // 2, k // 2 + (k % 2 - 1)
        interior = torch.arange(left, L - right)
        pieces = [(interior, torch.arange(L), Bias("local", left=k - 1, right=0))]
        if left:
            pieces.append((torch.arange(0, left), torch.arange(0, k), Bias("none")))
        if right:
            pieces.append((torch.arange(L - right, L), torch.arange(L - k, L), Bias("none")))
    parts = []
    for q, kv, bias in pieces:
        calls = [KeyCall(kv + p, bias)]
        if extras.numel():
            calls.append(KeyCall(extras, Bias("none")))
        parts.append(Part(q + p, tuple(calls)))
    if extras.numel():
        parts.append(Part(extras, (KeyCall(torch.arange(spec.num_tokens), Bias("none")),)))
    return XformersPlan("band", tuple(parts), 1.0)


def _groups(spec: MaskSpec):
    """Grid tokens grouped by key set: ``(inverse [G], n_groups)``. Two queries with the same
    per-term, per-dimension key interval (and dilation residue) see the same keys."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(L) for L in spec.grid], indexing="ij")).reshape(spec.ndim, -1)
    cols = []
    for term in spec.interval_terms():
        for dim, (lo, hi, d, is_all) in enumerate(term):
            if is_all:
                continue
            c = coords[dim]
            cols += [lo[c], hi[c]] + ([c % d] if d > 1 else [])
    if not cols:
        return torch.zeros(spec.grid_size, dtype=torch.long), 1
    _, inverse = torch.unique(torch.stack(cols, 1), dim=0, return_inverse=True)
    return inverse, int(inverse.max()) + 1


def _group_plan(spec: MaskSpec, inverse: torch.Tensor, n_groups: int) -> XformersPlan | str:
    p, g, n = spec.prefix, spec.grid_size, spec.num_tokens
    extras = _extras(spec)
    order = torch.argsort(inverse, stable=True)          # members of a group, in token order
    sizes = torch.bincount(inverse, minlength=n_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    reps = order[starts] + p                             # one query token per group
    kv = torch.arange(p, p + g)
    key_lists, total = [], 0
    for lo in range(0, n_groups, 256):
        allowed = spec.allowed(reps[lo:lo + 256, None], kv[None, :])
        for row in allowed:
            key_lists.append(kv[row])
            total += key_lists[-1].numel() + extras.numel()
            if total > MAX_GATHER * n:
                return None
    q_lens = sizes.tolist()
    kv_lens = [kl.numel() + extras.numel() for kl in key_lists]
    k_idx = torch.cat([torch.cat([kl, extras]) for kl in key_lists])
    q_idx = order + p
    if extras.numel():  # text queries: one more block, over every key
        q_idx = torch.cat([q_idx, extras])
        k_idx = torch.cat([k_idx, torch.arange(n)])
        q_lens.append(extras.numel())
        kv_lens.append(n)
    bias = Bias("block_diagonal", q_seqlens=tuple(q_lens), kv_seqlens=tuple(kv_lens))
    return XformersPlan("block_diagonal", (Part(q_idx, (KeyCall(k_idx, bias),)),), k_idx.numel() / n)


def _is_1d_band(spec: MaskSpec) -> bool:
    if spec.ndim != 1 or len(spec.terms) != 1:
        return False
    (rel,) = spec.terms[0]
    return isinstance(rel, _Window) and rel.stride == 1 and rel.dilation == 1


@lru_cache(maxsize=64)
def _plan(spec: MaskSpec) -> XformersPlan | str:
    if _is_1d_band(spec):
        return _band_plan(spec)
    inverse, n_groups = _groups(spec)
    mean_group = spec.grid_size / n_groups
    if mean_group < MIN_GROUP:
        kind = "sliding window" if any(isinstance(r, _Window) and r.stride == 1 for t in spec.terms for r in t) \
            else "pattern"
        return (f"not expressible as an xformers bias: this {spec.ndim}D {kind} gives {n_groups} distinct key sets "
                f"for {spec.grid_size} queries ({mean_group:.1f} queries per set, fewer than {MIN_GROUP}); "
                "the xformers biases used here express 1D bands and block-diagonal query groups")
    plan = _group_plan(spec, inverse, n_groups)
    if plan is None:
        return (f"not expressible as an xformers bias: the block-diagonal form would gather more than "
                f"{MAX_GATHER:g} keys per token ({n_groups} query groups with large overlapping key sets)")
    return plan


def plan_for(spec: MaskSpec) -> XformersPlan:
    """The xformers plan for ``spec`` (cached); ValueError with the reason when there is none."""
    plan = _plan(spec)
    if isinstance(plan, str):
        raise ValueError(f"backend='xformers': {plan}")
    return plan


def xformers_reason(spec: MaskSpec) -> str | None:
    """None if ``spec`` maps to xformers biases; otherwise why not (one line)."""
    plan = _plan(spec)
    return plan if isinstance(plan, str) else None


# -- execution ------------------------------------------------------------------------------
def _torch_call(q, k, v, bias: Bias, scale):
    """Reference executor for one call ([B, M, H, D] layout): masked softmax, (out, lse)."""
    mask = materialize(bias, q.shape[1], k.shape[1], q.device)
    s = torch.einsum("bmhd,bnhd->bhmn", q.float(), k.float()) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)                                   # [B, H, M]
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    return torch.einsum("bhmn,bnhd->bmhd", p, v.float()), lse


def _xformers_call(q, k, v, bias: Bias, scale, batch, partial: bool):
    import xformers.ops as xops

    xb = to_xformers_bias(bias, batch, q.device)
    if partial:
        out, lse = xops.fmha.memory_efficient_attention_partial(q, k, v, attn_bias=xb, scale=scale)
        return out, lse[..., : q.shape[1]].float()
    return xops.memory_efficient_attention(q, k, v, attn_bias=xb, scale=scale), None


def run_plan(q, k, v, plan: XformersPlan, scale: float | None = None, *, executor: str = "xformers"):
    """Attention over ``[B, H, N, D]`` by ``plan``. ``executor="torch"`` runs every call as a
    masked softmax from ``materialize`` (CPU tests); ``"xformers"`` calls xformers."""
    B, H, N, D = q.shape
    scale = D ** -0.5 if scale is None else float(scale)
    qx, kx, vx = (x.transpose(1, 2) for x in (q, k, v))             # [B, N, H, D]
    out = torch.empty_like(qx)
    for part in plan.parts:
        qi = part.q_idx.to(q.device)
        qq = qx.index_select(1, qi)
        merge = len(part.calls) > 1
        outs, lses = [], []
        for call in part.calls:
            ki = call.k_idx.to(q.device)
            kk, vv = kx.index_select(1, ki), vx.index_select(1, ki)
            fold = call.bias.kind == "block_diagonal" and B > 1      # xformers wants batch 1 there
            a, b_, c = (x.reshape(1, -1, H, D) if fold else x for x in (qq, kk, vv))
            if executor == "torch":
                bias = call.bias
                if fold:
                    bias = Bias("block_diagonal", q_seqlens=bias.q_seqlens * B, kv_seqlens=bias.kv_seqlens * B)
                o, lse = _torch_call(a, b_, c, bias, scale)
            elif executor == "xformers":
                o, lse = _xformers_call(a, b_, c, call.bias, scale, B if fold else 1, merge)
            else:
                raise ValueError(f"executor={executor!r} must be 'xformers' or 'torch'")
            if fold:
                o = o.reshape(B, -1, H, D)
                lse = None if lse is None else lse.reshape(H, B, -1).transpose(0, 1)
            outs.append(o)
            lses.append(lse)
        if merge:
            lse_all = torch.logsumexp(torch.stack(lses), 0)          # [B, H, M]
            o = sum(oi.float() * torch.exp(li - lse_all).nan_to_num(0.0).transpose(1, 2)[..., None]
                    for oi, li in zip(outs, lses))
        else:
            o = outs[0]
        out.index_copy_(1, qi, o.to(out.dtype))
    return out.transpose(1, 2)


def xformers_attention(q, k, v, spec: MaskSpec, scale: float | None = None, *, permuted: bool = False):
    """The xformers backend: ``[B, H, N, D]`` CUDA tensors, tokens in spec order (or the
    canonical tiled order with ``permuted=True``)."""
    spec.check_tokens(q.shape[-2])
    if not q.is_cuda:
        raise RuntimeError("backend='xformers' needs CUDA tensors (xformers' kernels are CUDA-only)")
    plan = plan_for(spec)
    if permuted:
        from .layout import canonical_layout

        lay = canonical_layout(spec)
        q, k, v = lay.unpermute(q), lay.unpermute(k), lay.unpermute(v)
        return lay.permute(run_plan(q, k, v, plan, scale))
    return run_plan(q, k, v, plan, scale)
