"""Dense masked SDPA: the correctness reference every sparse backend is tested against."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from .layout import canonical_layout
from .masks import MaskSpec

__all__ = ["reference_attention", "naive_attention"]


def reference_attention(
    q, k, v, spec: MaskSpec, scale: float | None = None, *, permuted: bool = False
) -> torch.Tensor:
    """``scaled_dot_product_attention`` with the spec's dense boolean mask ([B, H, N, D]).

    ``permuted=True``: tokens are in the canonical tiled order (``permutation(spec)``)."""
    spec.check_tokens(q.shape[-2])
    if spec.density() == 1.0:
        mask = None  # dense spec: let SDPA pick its fastest unmasked kernel
    elif permuted:
        mask = _permuted_mask(spec, str(q.device))
    else:
        mask = spec.dense_mask(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


@lru_cache(maxsize=8)
def _permuted_mask(spec: MaskSpec, device: str) -> torch.Tensor:
    perm = canonical_layout(spec).perm.to(device)
    return spec.dense_mask(device)[perm][:, perm].contiguous()


def naive_attention(q, k, v, spec: MaskSpec, scale: float | None = None) -> torch.Tensor:
    """softmax(QK^T * scale + mask) V in float64, written out, to check the reference itself."""
    spec.check_tokens(q.shape[-2])
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    s = s.masked_fill(~spec.dense_mask(q.device), float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no key -> zeros, like flex
    return (p @ v.double()).to(q.dtype)
