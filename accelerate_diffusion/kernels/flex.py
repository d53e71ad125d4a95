"""FlexAttention backend: block-sparse attention on CPU and GPU through torch.

The block mask is built from the layout's parameter-derived tables
(``BlockMask.from_kv_blocks``) rather than ``create_block_mask``, which would evaluate
the mask over all N^2 pairs. Block masks are cached per (spec, length, device, block
sizes); the compiled ``flex_attention`` is created once and reused (compiling costs
~20 s on CPU the first time and a few seconds per new shape).
"""

from __future__ import annotations

import threading
import warnings
from functools import lru_cache

import torch

from .layout import block_layout, layout_for
from .masks import MaskSpec

__all__ = ["flex_available", "flex_attention_sparse", "flex_block_mask"]

_LOCK = threading.Lock()
_COMPILED = None
RECOMPILE_LIMIT = 64


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except Exception:  # pragma: no cover - old torch
        return False
    return True


def _compiled_flex():
    global _COMPILED
    with _LOCK:
        if _COMPILED is None:
            from torch.nn.attention.flex_attention import flex_attention

            _COMPILED = torch.compile(flex_attention, dynamic=False)
        return _COMPILED


def _run_compiled(*args, **kwargs):
    """Every (spec, sequence length) is a new graph (the mask_mod closes over different
    tensors): dynamo's default of 8 graphs per function would make the 9th shape silently run
    eager flex (~8x slower than dense). The higher limit holds for this call only."""
    cfg = torch._dynamo.config
    limit = max(getattr(cfg, "recompile_limit", RECOMPILE_LIMIT), RECOMPILE_LIMIT)
    with cfg.patch(recompile_limit=limit):
        return _compiled_flex()(*args, **kwargs)


@lru_cache(maxsize=64)
def _block_mask(spec: MaskSpec, n: int, device: str, block_q: int, block_kv: int, tile=None):
    from torch.nn.attention.flex_attention import BlockMask

    layout = layout_for(spec, block_q, block_kv) if tile is None else block_layout(spec, block_q, block_kv, tile)
    t = layout.on(device)
    bm = BlockMask.from_kv_blocks(
        t["kv_num"][None, None],
        t["kv_idx"][None, None],
        t["full_num"][None, None],
        t["full_idx"][None, None],
        BLOCK_SIZE=(block_q, block_kv),
        mask_mod=layout.permuted_mask_mod(device),
        seq_lengths=(n, n),
    )
    return layout, bm


def default_block(device) -> int:
    """Block size for the flex block mask: 64 on CPU (finer sparsity pays off there,
    measured), 128 on GPU (flex's native tile)."""
    return 64 if torch.device(device).type == "cpu" else 128


def flex_block_mask(spec: MaskSpec, device="cpu", block_q: int | None = None, block_kv: int | None = None,
                    tile: tuple[int, ...] | None = None):
    """``(layout, BlockMask)`` for tensors permuted by ``layout`` (cached). ``tile``: another
    token order than the canonical one (``tile=spec.grid`` is plain row-major), to compare."""
    block_q = block_q or default_block(device)
    block_kv = block_kv or block_q
    tile = None if tile is None else tuple(int(t) for t in tile)
    return _block_mask(spec, spec.num_tokens, str(torch.device(device)), block_q, block_kv, tile)


def flex_attention_sparse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: MaskSpec,
    scale: float | None = None,
    *,
    compile: bool = True,
    permuted: bool = False,
    block_q: int | None = None,
    block_kv: int | None = None,
    tile: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Block-sparse attention with FlexAttention. ``permuted=True``: inputs are already
    in the canonical order (``permutation(spec)``) and the output stays in that order.
    ``tile`` (not with ``permuted``): tokens reordered by these tiles instead, see
    ``flex_block_mask``."""
    spec.check_tokens(q.shape[-2])
    if permuted and tile is not None:
        raise ValueError("tile must be None when permuted=True (permuted inputs are in the canonical order)")
    layout, bm = flex_block_mask(spec, q.device, block_q, block_kv, tile)
    if not permuted:
        q, k, v = layout.permute(q), layout.permute(k), layout.permute(v)
    if compile:
        out = _run_compiled(q, k, v, block_mask=bm, scale=scale)
    else:
        from torch.nn.attention.flex_attention import flex_attention

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "called without torch.compile"
            out = flex_attention(q, k, v, block_mask=bm, scale=scale)
    return out if permuted else layout.unpermute(out)


