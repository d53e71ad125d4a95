"""Sparse and neighborhood attention kernels.

Masks are small frozen spec objects (pure functions of token coordinates on a 1D/2D/3D
grid, plus optional dense extra tokens such as text). One call runs them on the best
available backend and says which::

    from accelerate_diffusion.kernels import NeighborhoodMask, attention
    spec = NeighborhoodMask(grid=(64, 64), window=(16, 16), stride=1, prefix=77)
    out, used = attention(q, k, v, spec)          # q, k, v: [B, H, 77 + 4096, D]

Triton and xformers are optional: ``triton_attention`` is only imported when the triton
backend runs, and xformers only inside ``xformers_attention`` (CUDA).
"""

from .dispatch import (
    AttentionSession,
    BACKENDS,
    attention,
    available_backends,
    last_backend,
    select_backend,
    xformers_unused_reason,
)
from .flex import flex_attention_sparse, flex_block_mask
from .layout import BlockLayout, block_layout, canonical_layout, layout_for, permutation
from .masks import (
    CrissCrossMask,
    DenseMask,
    FrameTileMask,
    MaskSpec,
    MultiDiagonalMask,
    NeighborhoodMask,
    StripesMask,
    UnionMask,
)
from .reference import naive_attention, reference_attention
from .xformers_attention import plan_for, run_plan, xformers_installed, xformers_reason


def clear_caches() -> None:
    """Free the memoised masks and block layouts (tensors on the devices they were built for);
    they are rebuilt on the next call that needs them. ``remove()`` of a sparse-attention
    acceleration calls this."""
    from . import flex, layout, masks, reference

    for cached in (flex._block_mask, reference._permuted_mask, masks._dense_mask_cached, layout.block_layout):
        cached.cache_clear()

__all__ = [
    "BACKENDS",
    "clear_caches",
    "AttentionSession",
    "BlockLayout",
    "CrissCrossMask",
    "DenseMask",
    "FrameTileMask",
    "MaskSpec",
    "MultiDiagonalMask",
    "NeighborhoodMask",
    "StripesMask",
    "UnionMask",
    "attention",
    "available_backends",
    "block_layout",
    "canonical_layout",
    "flex_attention_sparse",
    "flex_block_mask",
    "last_backend",
    "layout_for",
    "naive_attention",
    "permutation",
    "plan_for",
    "run_plan",
    "reference_attention",
    "select_backend",
    "xformers_installed",
    "xformers_reason",
    "xformers_unused_reason",
]
