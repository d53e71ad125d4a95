"""TempCache: a bounded KV cache whose slots can hold several merged tokens.

Pure functions on a small ``Slots`` record (no module state), used by
``patches/kv_cache.py``. The merge rule: a slot holding m tokens stores the running mean
of their keys and values and adds ``log(m)`` to its attention logit. When the m keys are
equal, ``exp(q.k + log m) * mean(v) = sum_i exp(q.k_i) v_i``: attention over the merged
slot equals attention over its m copies (:func:`biased_attention` applies the bias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ann

EVICTION = ("attention", "age")


@dataclass
class Slots:
    """One layer's cache: keys/values [B, H, N, D] (keys with positions applied), and per slot
    the merged count, an attention-mass estimate and the frame index it was born at."""

    k: torch.Tensor
    v: torch.Tensor
    count: torch.Tensor    # [N] float, tokens merged into the slot (>= 1)
    mass: torch.Tensor     # [N] float, decayed attention mass received
    birth: torch.Tensor    # [N] long, frame index of the slot's first token

    @classmethod
    def empty(cls, like: torch.Tensor) -> "Slots":
        b, h, _, d = like.shape
        z = like.new_zeros(b, h, 0, d)
        f = torch.zeros(0, device=like.device)
        return cls(z, z.clone(), f, f.clone(), torch.zeros(0, dtype=torch.long, device=like.device))

    def __len__(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.count, self.mass, self.birth))

    def bias(self) -> torch.Tensor:
        """The additive logit bias log(m) per slot, [N]."""
        return self.count.log()


def insert(slots: Slots, k: torch.Tensor, v: torch.Tensor, frame: int, threshold: float,
           method: str = "exact", dim: int = 16, candidates: int = 4) -> tuple[Slots, int]:
    """Add one frame's tokens: merge each into its nearest slot when similar enough, else append.

    k, v: [B, H, M, D]. Similarity is the per-head cosine averaged over heads, worst case
    over the batch (:func:`ann.nearest`). Several new tokens may merge into one slot: the
    running means stay exact. Returns the new slots and the number of merged tokens.
    """
    m = k.shape[2]
    if len(slots) == 0 or threshold > 1.0:
        idx = torch.zeros(m, dtype=torch.long, device=k.device)
        hit = torch.zeros(m, dtype=torch.bool, device=k.device)
    else:
        idx, sim = ann.nearest(ann.token_features(k), ann.token_features(slots.k), method, dim, candidates)
        hit = sim >= threshold
    merged = int(hit.sum())
    count, key, value = slots.count, slots.k, slots.v
    if merged:
        target = idx[hit]
        add = torch.zeros_like(count).index_add_(0, target, torch.ones_like(target, dtype=count.dtype))
        new_count = count + add
        w_old = (count / new_count).to(key.dtype)[None, None, :, None]
        inv = (1.0 / new_count).to(key.dtype)[None, None, :, None]
        key = key * w_old + torch.zeros_like(key).index_add_(2, target, k[:, :, hit]) * inv
        value = value * w_old + torch.zeros_like(value).index_add_(2, target, v[:, :, hit]) * inv
        count = new_count
    rest = ~hit
    n_new = int(rest.sum())
    out = Slots(
        torch.cat([key, k[:, :, rest]], dim=2), torch.cat([value, v[:, :, rest]], dim=2),
        torch.cat([count, count.new_ones(n_new)]), torch.cat([slots.mass, slots.mass.new_zeros(n_new)]),
        torch.cat([slots.birth, slots.birth.new_full((n_new,), frame)]),
    )
    return out, merged


def evict(slots: Slots, budget: int, policy: str = "attention", protect_from: int | None = None) -> tuple[Slots, int]:
    """Keep at most ``budget`` slots; drop the least attended (or the oldest) first.

    Slots born at frame >= ``protect_from`` (the chunk just added, not yet attended by
    anyone) are dropped only if the budget cannot hold them. Order is preserved.
    """
    if policy not in EVICTION:
        raise ValueError(f"kv_cache.evict: {policy!r} is not allowed; allowed: {', '.join(EVICTION)}")
    n = len(slots)
    if budget <= 0 or n <= budget:
        return slots, 0
    score = slots.mass.clone() if policy == "attention" else slots.birth.to(slots.mass.dtype)
    if policy == "attention":
        score = score + 1e-6 * slots.birth.to(score.dtype)     # ties: keep the newer slot
    if protect_from is not None:
        score[slots.birth >= protect_from] = float("inf")
    keep = score.topk(budget).indices.sort().values
    return Slots(slots.k[:, :, keep], slots.v[:, :, keep], slots.count[keep], slots.mass[keep],
                 slots.birth[keep]), n - budget


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                     scale: float | None = None) -> torch.Tensor:
    """SDPA with an additive per-key logit bias [Lk] (log counts; -inf masks a key)."""
    mask = None if bias is None else bias.to(q.dtype)[None, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def attention_mass(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, n_slots: int,
                   samples: int = 64, scale: float | None = None) -> torch.Tensor:
    """Mean attention probability each of the first ``n_slots`` keys receives, [n_slots].

    Estimated on up to ``samples`` evenly spaced queries (all heads, all batch rows) so it
    costs a small fraction of the attention itself.
    """
    lq = q.shape[2]
    if n_slots == 0 or lq == 0:
        return q.new_zeros(n_slots, dtype=torch.float32)
    pick = torch.linspace(0, lq - 1, min(samples, lq), device=q.device).round().long().unique()
    qs = q[:, :, pick].float()
    logits = qs @ k.float().transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if bias is not None:
        logits = logits + bias.float()
    return logits.softmax(-1)[..., :n_slots].mean(dim=(0, 1, 2))


def block_retrieval_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                              n_cache: int, block: int, topk: int) -> torch.Tensor:
    """AnnSA: each query block attends to its ``topk`` retrieved cache key blocks plus the local keys.

    keys/values: [B, H, n_cache + L_local, D] (cache slots first), bias [n_cache + L_local].
    Cache blocks are ranked by centroid similarity (:func:`ann.topk_blocks`); with ``topk``
    covering every block this is dense attention over the same keys.
    """
    b, h, lq, d = q.shape
    ck, cv, cb = keys[:, :, :n_cache], values[:, :, :n_cache], bias[:n_cache]
    lk, lv, lb = keys[:, :, n_cache:], values[:, :, n_cache:], bias[n_cache:]
    nb = -(-n_cache // block)
    topk = min(topk, nb)
    idx = ann.topk_blocks(q, ck, block, topk)                                   # [B, H, nq, k]
    nq = idx.shape[2]
    pad = nb * block - n_cache
    if pad:
        ck = torch.cat([ck, ck.new_zeros(b, h, pad, d)], 2)
        cv = torch.cat([cv, cv.new_zeros(b, h, pad, d)], 2)
        cb = torch.cat([cb, cb.new_full((pad,), -float("inf"))])

    def pick(x):
        blocks = x.reshape(b, h, 1, nb, block, d).expand(b, h, nq, nb, block, d)
        index = idx[..., None, None].expand(b, h, nq, topk, block, d)
        return blocks.gather(3, index).reshape(b, h, nq, topk * block, d)

    sel_bias = cb.reshape(nb, block)[idx].reshape(b, h, nq, topk * block)
    k_all = torch.cat([pick(ck), lk[:, :, None].expand(b, h, nq, *lk.shape[2:])], 3)
    v_all = torch.cat([pick(cv), lv[:, :, None].expand(b, h, nq, *lv.shape[2:])], 3)
    bias_all = torch.cat([sel_bias, lb.expand(b, h, nq, lb.shape[0])], 3)[..., None, :].to(q.dtype)
    qpad = nq * block - lq
    qb = torch.cat([q, q.new_zeros(b, h, qpad, d)], 2) if qpad else q
    out = F.scaled_dot_product_attention(qb.reshape(b, h, nq, block, d), k_all, v_all, attn_mask=bias_all)
    return out.reshape(b, h, nq * block, d)[:, :, :lq]


def ann_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_tokens: int, block: int,
                        topk: int) -> torch.Tensor:
    """AnnCA: per frame, attend only to the union of the text tokens its query blocks retrieve.

    q: [B, H, L, D] with L a whole number of frames of ``frame_tokens``; k, v: [B, H, T, D].
    Each query block (its mean query) retrieves its ``topk`` highest-scoring keys; a frame
    attends to the union over its blocks (rows padded to the largest union, masked).
    """
    b, h, length, d = q.shape
    t = k.shape[2]
    frames = length // frame_tokens
    bs = math.gcd(frame_tokens, block)
    qf = q.reshape(b, h, frames, frame_tokens, d)
    centroids = qf.reshape(b, h, frames, frame_tokens // bs, bs, d).mean(4)     # [B, H, F, nb, D]
    scores = centroids @ k.transpose(-1, -2)[:, :, None]                          # [B, H, F, nb, T]
    idx = scores.topk(min(topk, t), dim=-1).indices.flatten(3)
    chosen = torch.zeros(b, h, frames, t, dtype=torch.bool, device=q.device).scatter_(-1, idx, True)
    width = int(chosen.sum(-1).max())
    order = chosen.to(q.dtype).topk(width, dim=-1).indices                        # chosen tokens first
    valid = chosen.gather(-1, order)
    expand = (b, h, frames, t, d)
    index = order[..., None].expand(b, h, frames, width, d)
    kk = k[:, :, None].expand(expand).gather(3, index)
    vv = v[:, :, None].expand(expand).gather(3, index)
    mask = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill(~valid, -float("inf"))
    out = F.scaled_dot_product_attention(qf, kk, vv, attn_mask=mask[..., None, :])
    return out.reshape(b, h, length, d)
