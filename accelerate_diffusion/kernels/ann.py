"""Approximate nearest-neighbour retrieval on attention keys, in plain batched torch.

At the sizes a KV cache has (hundreds to a few thousand slots, feature width B*H*D), a
dense product on a low-dimensional random projection followed by an exact re-rank of a
few candidates is cheaper than building an index (faiss IVF/LSH would need a rebuild at
every chunk since the cache changes). ``method="exact"`` is the reference.
"""

from __future__ import annotations

import torch

METHODS = ("exact", "proj")


def token_features(keys: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] keys -> [B, N, H*D] unit-norm features, one per (batch, token).

    The dot product of two features is the mean over heads of the per-head cosine
    similarities: the quantity the merge threshold compares.
    """
    b, h, n, d = keys.shape
    unit = torch.nn.functional.normalize(keys.float(), dim=-1)
    return unit.permute(0, 2, 1, 3).reshape(b, n, h * d) / h ** 0.5


def projection(width: int, dim: int, seed: int = 0, device=None) -> torch.Tensor:
    """A fixed Gaussian projection [width, dim] (Johnson-Lindenstrauss), seeded: no global RNG."""
    gen = torch.Generator("cpu").manual_seed(seed)
    return (torch.randn(width, dim, generator=gen) / dim ** 0.5).to(device)


def nearest(query: torch.Tensor, base: torch.Tensor, method: str = "exact", dim: int = 16,
            candidates: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest ``base`` token of each ``query`` token, by the worst case over the batch.

    query: [B, M, F], base: [B, N, F] unit-norm features (see :func:`token_features`).
    Returns (index [M], similarity [M]) where similarity is the minimum over the batch of
    the dot products, so a merge is accepted only when every batch element agrees.
    ``method="proj"`` ranks on a ``dim``-wide random projection, then re-ranks the top
    ``candidates`` exactly.
    """
    if method not in METHODS:
        raise ValueError(f"ann.method: {method!r} is not allowed; allowed: {', '.join(METHODS)}")
    m, n = query.shape[1], base.shape[1]
    if n == 0:
        return (torch.zeros(m, dtype=torch.long, device=query.device),
                torch.full((m,), -float("inf"), device=query.device))
    if method == "exact" or base.shape[-1] <= dim or n <= candidates:
        sim = torch.einsum("bmf,bnf->bmn", query, base).amin(0)          # [M, N]
        best, idx = sim.max(dim=1)
        return idx, best
    proj = projection(query.shape[-1], dim, seed, query.device)
    approx = torch.einsum("bmr,bnr->mn", query @ proj, base @ proj)      # summed over batch
    cand = approx.topk(min(candidates, n), dim=1).indices                 # [M, C]
    picked = base[:, cand]                                                # [B, M, C, F]
    sim = torch.einsum("bmf,bmcf->bmc", query, picked).amin(0)            # [M, C]
    best, j = sim.max(dim=1)
    return cand.gather(1, j[:, None])[:, 0], best


def topk_blocks(query: torch.Tensor, keys: torch.Tensor, block: int, k: int) -> torch.Tensor:
    """Indices of the ``k`` key blocks with the highest mean-key score for each query block.

    query: [B, H, Lq, D], keys: [B, H, Lk, D]; Lq and Lk are cut into ``block``-token
    blocks (the last may be short). Returns [B, H, nq, k] block indices (AnnSA retrieval on
    block centroids: a quantised similarity, one score per block pair).
    """
    qc = _block_means(query, block)
    kc = _block_means(keys, block)
    return (qc @ kc.transpose(-1, -2)).topk(min(k, kc.shape[-2]), dim=-1).indices


def _block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    b, h, n, d = x.shape
    nb = -(-n // block)
    pad = nb * block - n
    if pad:
        x = torch.cat([x, x.new_zeros(b, h, pad, d)], dim=2)
    counts = torch.full((nb,), float(block), device=x.device)
    counts[-1] = block - pad
    return x.reshape(b, h, nb, block, d).sum(3) / counts[:, None]
