"""Sparse-attention mask specs as pure functions of token coordinates.

Every spec describes self-attention over ``N = prefix + prod(grid) + suffix`` tokens:
``prefix``/``suffix`` extra dense tokens (e.g. text) around a 1D/2D/3D grid of tokens in
row-major order ``(t, h, w)``. Extra tokens attend to everything and are attended by
everything. Inside the grid each spec reduces to one normal form::

    allowed(q, kv) = OR over terms  AND over dims  rel[term][dim](q_dim, kv_dim)

where each ``rel`` is a 1D relation between coordinates. That normal form is what lets
the layout code compute block sparsity from the parameters (per-dimension tables of size
``L x L``) instead of from an ``N x N`` dense mask, and what the Triton kernel evaluates
inside partially-masked tiles.

Specs are frozen, hashable dataclasses so they can key caches (block masks, layouts).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import torch

__all__ = [
    "MaskSpec",
    "NeighborhoodMask",
    "FrameTileMask",
    "MultiDiagonalMask",
    "StripesMask",
    "CrissCrossMask",
    "DenseMask",
    "UnionMask",
]


# ---------------------------------------------------------------------------
# 1D relations: pure torch arithmetic, so the same code serves broadcasting (dense
# masks), vmap (FlexAttention mask_mod) and table building (block sparsity, Triton).
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rel:
    """A relation between a query and a key coordinate along one grid dimension."""

    def __call__(self, qc, kc):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def is_all(self) -> bool:
        return False

    def table(self, length: int) -> torch.Tensor:
        """Dense ``[L, L]`` truth table; tiny (one grid dimension), used for blocks."""
        c = torch.arange(length)
        return self(c[:, None], c[None, :]) & torch.ones(length, length, dtype=torch.bool)


@dataclass(frozen=True)
class _All(_Rel):
    @property
    def is_all(self) -> bool:
        return True

    def __call__(self, qc, kc):
        return (qc == qc) & (kc == kc)


@dataclass(frozen=True)
class _Window(_Rel):
    """Generalized neighborhood attention along one dimension (NATTEN semantics).

    Dilation ``d`` splits the axis into ``d`` interleaved sub-grids (same residue mod d);
    the window/stride rule is applied inside the query's sub-grid.
    """

    length: int
    window: int
    stride: int = 1
    dilation: int = 1
    causal: bool = False

    def __call__(self, qc, kc):
        k, s, d = self.window, self.stride, self.dilation
        left = k // 2
        right = k // 2 + (k % 2 - 1)
        if d == 1:
            u, w, last = qc, kc, self.length - 1
            same = None
        else:
            r = qc % d
            u, w = qc // d, kc // d
            last = (self.length - r + d - 1) // d - 1  # last index of q's sub-grid
            same = r == kc % d
        leader = (u // s) * s + s // 2
        leader = torch.minimum(leader, torch.as_tensor(last)) if d > 1 else torch.clamp(leader, max=last)
        if self.causal:
            ok = (u - w >= 0) & (leader - w < k)
        else:
            if d == 1:
                centre = torch.clamp(leader, min=left, max=last - right)
            else:
                centre = torch.minimum(torch.clamp(leader, min=left), last - right)
            ok = (w >= centre - left) & (w <= centre + right)
        return ok if same is None else ok & same


@dataclass(frozen=True)
class _Group(_Rel):
    """Same group index (``c // size``); size 1 means the same coordinate."""

    size: int

    def __call__(self, qc, kc):
        if self.size == 1:
            return qc == kc
        return (qc // self.size) == (kc // self.size)


@dataclass(frozen=True)
class _KeyIs(_Rel):
    """Key coordinate equals a constant, whatever the query (one global column)."""

    value: int

    def __call__(self, qc, kc):
        return (kc == self.value) & (qc == qc)


# ---------------------------------------------------------------------------
# Validation helpers: ValueError naming the parameter and the allowed range.
# ---------------------------------------------------------------------------


def _as_grid(grid) -> tuple[int, ...]:
    if isinstance(grid, int):
        grid = (grid,)
    try:
        grid = tuple(int(g) for g in grid)
    except TypeError:
        raise ValueError(f"grid must be an int or a tuple of 1 to 3 ints, got {grid!r}") from None
    if not 1 <= len(grid) <= 3:
        raise ValueError(f"grid must have 1 to 3 dimensions, got {len(grid)}: {grid}")
    for i, g in enumerate(grid):
        if g < 1:
            raise ValueError(f"grid[{i}]={g} must be >= 1")
    return grid


def _per_dim(name: str, value, ndim: int, cast=int) -> tuple:
    if isinstance(value, (int, bool)):
        return (cast(value),) * ndim
    value = tuple(cast(v) for v in value)
    if len(value) != ndim:
        raise ValueError(f"{name} must be a single value or one per grid dimension ({ndim}), got {value}")
    return value


def _check_extra(prefix: int, suffix: int) -> None:
    if prefix < 0:
        raise ValueError(f"prefix={prefix} must be >= 0 (number of dense tokens before the grid)")
    if suffix < 0:
        raise ValueError(f"suffix={suffix} must be >= 0 (number of dense tokens after the grid)")


# ---------------------------------------------------------------------------
# Spec base
# ---------------------------------------------------------------------------


class MaskSpec:
    """Base of all mask specs. Subclasses define ``grid``, ``prefix``, ``suffix``, ``terms``."""

    grid: tuple[int, ...]
    prefix: int
    suffix: int

    # -- sizes ---------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.grid)

    @property
    def grid_size(self) -> int:
        return math.prod(self.grid)

    @property
    def num_tokens(self) -> int:
        return self.prefix + self.grid_size + self.suffix

    def check_tokens(self, n: int) -> None:
        """Raise if a sequence of ``n`` tokens does not match this spec's grid + extras."""
        if n != self.num_tokens:
            raise ValueError(
                f"grid={self.grid} with prefix={self.prefix}, suffix={self.suffix} describes "
                f"{self.num_tokens} tokens, but the sequence has {n}"
            )

    @property
    def terms(self) -> tuple[tuple[_Rel, ...], ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def dilation(self) -> tuple[int, ...]:
        """Per-dimension dilation, used by layouts to group interleaved sub-grids."""
        return (1,) * self.ndim

    # -- the mask as a pure function ------------------------------------------
    def allowed(self, q_idx, kv_idx):
        """Boolean tensor: may token ``q_idx`` attend to ``kv_idx`` (flat indices, broadcast)."""
        p, g = self.prefix, self.grid_size
        qg, kg = q_idx - p, kv_idx - p
        ok = None
        qcs = _unflatten(qg, self.grid)
        kcs = _unflatten(kg, self.grid)
        for term in self.terms:
            t = None
            for rel, qc, kc in zip(term, qcs, kcs):
                if rel.is_all:
                    continue
                r = rel(qc, kc)
                t = r if t is None else t & r
            if t is None:  # an all-true term: the whole grid is dense
                t = (qg == qg) & (kg == kg)
            ok = t if ok is None else ok | t
        if p or self.suffix:
            extra_q = (qg < 0) | (qg >= g)
            extra_k = (kg < 0) | (kg >= g)
            ok = ok | extra_q | extra_k
        return ok

    @property
    def mask_mod(self):
        """FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` in the original token order."""
        spec = self

        def mask_mod(b, h, q_idx, kv_idx):
            return spec.allowed(q_idx, kv_idx)

        return mask_mod

    def dense_mask(self, device=None) -> torch.Tensor:
        """``[N, N]`` boolean mask (True = attend). For references and tests: O(N^2)."""
        return _dense_mask_cached(self, str(torch.device(device or "cpu")))

    # -- counting ------------------------------------------------------------
    def num_allowed(self) -> int:
        """Exact number of allowed (q, kv) pairs, from per-dimension tables."""
        return _num_allowed(self)

    def density(self) -> float:
        """Fraction of the ``N x N`` attention matrix that is computed: ideal speedup = 1/density."""
        n = self.num_tokens
        return self.num_allowed() / (n * n)

    def rel_tables(self) -> tuple[tuple[torch.Tensor, ...], ...]:
        """Per term, per dimension: the ``[L, L]`` bool table of the 1D relation."""
        return _rel_tables(self)

    def interval_terms(self):
        """Per term, per dimension: ``(lo, hi, d, is_all)`` with ``lo, hi`` ``[L]`` tensors.

        Every 1D relation used here is an interval of keys per query coordinate, stepped
        by the dilation: ``lo[q] <= kv <= hi[q]`` and ``kv % d == q % d``. Kernels test
        that (a few compares per score) instead of evaluating the rule or a table.
        """
        return _interval_terms(self)


def _unflatten(g, grid):
    """Row-major flat index -> per-dimension coordinates."""
    coords = []
    for size in reversed(grid[1:]):
        coords.append(g % size)
        g = g // size
    coords.append(g)
    return tuple(reversed(coords))


@lru_cache(maxsize=64)
def _rel_tables(spec: MaskSpec):
    return tuple(tuple(rel.table(L) for rel, L in zip(term, spec.grid)) for term in spec.terms)


@lru_cache(maxsize=64)
def _interval_terms(spec: MaskSpec):
    out = []
    for term, tables in zip(spec.terms, spec.rel_tables()):
        dims = []
        for rel, table in zip(term, tables):
            L = table.shape[0]
            d = rel.dilation if isinstance(rel, _Window) else 1
            c = torch.arange(L)
            any_ = table.any(1)
            lo = torch.where(any_, table.float().argmax(1), 1)
            hi = torch.where(any_, L - 1 - table.flip(1).float().argmax(1), 0)
            rebuilt = (lo[:, None] <= c[None, :]) & (c[None, :] <= hi[:, None]) & (c[:, None] % d == c[None, :] % d)
            if not torch.equal(rebuilt, table):  # an internal invariant of the relations above
                raise AssertionError(f"{rel!r} is not an interval relation")
            dims.append((lo, hi, d, rel.is_all))
        out.append(tuple(dims))
    return tuple(out)


@lru_cache(maxsize=16)
def _dense_mask_cached(spec: MaskSpec, device: str) -> torch.Tensor:
    idx = torch.arange(spec.num_tokens, device=device)
    return spec.allowed(idx[:, None], idx[None, :]).contiguous()


@lru_cache(maxsize=256)
def _num_allowed(spec: MaskSpec) -> int:
    tables = spec.rel_tables()
    g = spec.grid_size
    e = spec.num_tokens - g
    if len(tables) <= 10:
        # Inclusion-exclusion over product terms: |A ∩ B| of two products is the product
        # of per-dimension ANDs, so everything stays in L x L tables.
        total = 0
        for r in range(1, len(tables) + 1):
            for subset in itertools.combinations(tables, r):
                prod = 1
                for dim in range(spec.ndim):
                    t = subset[0][dim]
                    for other in subset[1:]:
                        t = t & other[dim]
                    prod *= int(t.sum())
                total += (-1) ** (r + 1) * prod
        grid_pairs = total
    else:  # many terms (many stripes): count by chunks over query rows
        grid_pairs = 0
        kv = torch.arange(g)
        for start in range(0, g, 256):
            q = torch.arange(start, min(g, start + 256))
            grid_pairs += int(_grid_only(spec).allowed(q[:, None], kv[None, :]).sum())
    n = spec.num_tokens
    return grid_pairs + e * n + g * e


@lru_cache(maxsize=64)
def _grid_only(spec: MaskSpec) -> MaskSpec:
    return _Terms(grid=spec.grid, terms_=spec.terms)


@dataclass(frozen=True)
class _Terms(MaskSpec):
    """Internal: a bare normal form without extra tokens (used for counting)."""

    grid: tuple[int, ...]
    terms_: tuple
    prefix: int = 0
    suffix: int = 0

    @property
    def terms(self):
        return self.terms_


# ---------------------------------------------------------------------------
# Concrete specs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NeighborhoodMask(MaskSpec):
    """Generalized neighborhood attention (GNA): window/stride/dilation per dimension.

    ``stride=1`` sliding window, ``stride=window`` blocked (Swin-like), in between strided.
    ``causal`` (per dimension, typically time only) keeps keys at or before the query.
    A window equal to the grid is dense attention.
    """

    grid: tuple[int, ...]
    window: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    dilation: int | tuple[int, ...] = 1
    causal: bool | tuple[bool, ...] = False
    prefix: int = field(default=0, kw_only=True)
    suffix: int = field(default=0, kw_only=True)

    def __post_init__(self):
        grid = _as_grid(self.grid)
        n = len(grid)
        window = _per_dim("window", self.window, n)
        stride = _per_dim("stride", self.stride, n)
        dilation = _per_dim("dilation", self.dilation, n)
        causal = _per_dim("causal", self.causal, n, bool)
        for i in range(n):
            if dilation[i] < 1 or dilation[i] > grid[i]:
                raise ValueError(f"dilation[{i}]={dilation[i]} must be in [1, grid[{i}]={grid[i]}]")
            hi = grid[i] // dilation[i]
            if not 1 <= window[i] <= hi:
                raise ValueError(
                    f"window[{i}]={window[i]} must be in [1, {hi}] "
                    f"(grid[{i}]={grid[i]} // dilation[{i}]={dilation[i]})"
                )
            if not 1 <= stride[i] <= window[i]:
                raise ValueError(f"stride[{i}]={stride[i]} must be in [1, window[{i}]={window[i]}]")
        _check_extra(self.prefix, self.suffix)
        for name, val in (("grid", grid), ("window", window), ("stride", stride),
                          ("dilation", dilation), ("causal", causal)):
            object.__setattr__(self, name, val)

    @property
    def terms(self):
        return (
            tuple(
                _Window(L, k, s, d, c)
                for L, k, s, d, c in zip(self.grid, self.window, self.stride, self.dilation, self.causal)
            ),
        )


@dataclass(frozen=True)
class DenseMask(MaskSpec):
    """Full attention over the grid (a baseline and a building block for unions)."""

    grid: tuple[int, ...]
    prefix: int = field(default=0, kw_only=True)
    suffix: int = field(default=0, kw_only=True)

    def __post_init__(self):
        object.__setattr__(self, "grid", _as_grid(self.grid))
        _check_extra(self.prefix, self.suffix)

    @property
    def terms(self):
        return (tuple(_All() for _ in self.grid),)


def _check_video(grid, name="grid"):
    if len(grid) < 2:
        raise ValueError(f"{name}={grid} must have a time axis first and 1-2 spatial axes")


@dataclass(frozen=True)
class FrameTileMask(MaskSpec):
    """Video: every frame attends to itself plus a few global frames (linear in frames).

    Axis 0 of ``grid`` is time. ``global_frames`` are key frames seen by every frame.
    """

    grid: tuple[int, ...]
    global_frames: tuple[int, ...] = (0,)
    prefix: int = field(default=0, kw_only=True)
    suffix: int = field(default=0, kw_only=True)

    def __post_init__(self):
        grid = _as_grid(self.grid)
        _check_video(grid)
        frames = tuple(sorted(set(int(f) for f in (
            (self.global_frames,) if isinstance(self.global_frames, int) else self.global_frames))))
        for f in frames:
            if not 0 <= f < grid[0]:
                raise ValueError(f"global_frames entry {f} must be in [0, {grid[0] - 1}] (grid[0] frames)")
        _check_extra(self.prefix, self.suffix)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "global_frames", frames)

    @property
    def terms(self):
        rest = tuple(_All() for _ in self.grid[1:])
        own = ((_Group(1),) + rest,)
        return own + tuple((_KeyIs(f),) + rest for f in self.global_frames)


@dataclass(frozen=True)
class MultiDiagonalMask(MaskSpec):
    """Video: same spatial position (within ``spatial_window``) in every frame.

    In the attention matrix these are diagonals offset by multiples of the frame size.
    ``own_frame=True`` also lets each token see its whole frame.
    """

    grid: tuple[int, ...]
    spatial_window: int | tuple[int, ...] = 1
    own_frame: bool = True
    prefix: int = field(default=0, kw_only=True)
    suffix: int = field(default=0, kw_only=True)

    def __post_init__(self):
        grid = _as_grid(self.grid)
        _check_video(grid)
        sw = _per_dim("spatial_window", self.spatial_window, len(grid) - 1)
        for i, (k, L) in enumerate(zip(sw, grid[1:])):
            if not 1 <= k <= L:
                raise ValueError(f"spatial_window[{i}]={k} must be in [1, grid[{i + 1}]={L}]")
        _check_extra(self.prefix, self.suffix)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "spatial_window", sw)

    @property
    def terms(self):
        diag = (_All(),) + tuple(_Window(L, k) for L, k in zip(self.grid[1:], self.spatial_window))
        if not self.own_frame:
            return (diag,)
        return (diag, (_Group(1),) + tuple(_All() for _ in self.grid[1:]))


@dataclass(frozen=True)
class StripesMask(MaskSpec):
    """Vertical stripes: a few global key tokens (flat grid indices) seen by every query.

    Usually combined with a local pattern through ``UnionMask``.
    """

    grid: tuple[int, ...]
    columns: tuple[int, ...] = (0,)
    prefix: int = field(default=0, kw_only=True)
    suffix: int = field(default=0, kw_only=True)

    def __post_init__(self):
        grid = _as_grid(self.grid)
        cols = (self.columns,) if isinstance(self.columns, int) else self.columns
        cols = tuple(sorted(set(int(c) for c in cols)))
        if not cols:
            raise ValueError("columns must name at least one key token")
        g = math.prod(grid)
        for c in cols:
            if not 0 <= c < g:
                raise ValueError(f"columns entry {c} must be in [0, {g - 1}] (flat grid index)")
        _check_extra(self.prefix, self.suffix)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "columns", cols)

    @property
    def terms(self):
        out = []
        for c in self.columns:
            coords = _unflatten(c, self.grid)
            out.append(tuple(_KeyIs(int(x)) for x in coords))
        return tuple(out)


@dataclass(frozen=True)
class CrissCrossMask(MaskSpec):
    """GRAT criss-cross: tokens grouped in ``group``-shaped blocks; a group attends to
    every group sharing its t, h or w group index (a cross through the group grid)."""

    grid: tuple[int, ...]
    group: int | tuple[int, ...]
    prefix: int = field(default=0, kw_only=True)
    suffix: int = field(default=0, kw_only=True)

    def __post_init__(self):
        grid = _as_grid(self.grid)
        if len(grid) < 2:
            raise ValueError(f"grid={grid} must have 2 or 3 dimensions for criss-cross attention")
        group = _per_dim("group", self.group, len(grid))
        for i, (gs, L) in enumerate(zip(group, grid)):
            if not 1 <= gs <= L:
                raise ValueError(f"group[{i}]={gs} must be in [1, grid[{i}]={L}]")
        _check_extra(self.prefix, self.suffix)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "group", group)

    @property
    def terms(self):
        n = len(self.grid)
        return tuple(
            tuple(_Group(self.group[i]) if j == i else _All() for j in range(n)) for i in range(n)
        )


@dataclass(frozen=True)
class UnionMask(MaskSpec):
    """OR of several specs over the same grid and extra tokens."""

    parts: tuple[MaskSpec, ...]

    def __post_init__(self):
        parts = tuple(self.parts)
        if not parts:
            raise ValueError("parts must contain at least one mask spec")
        for i, p in enumerate(parts):
            if not isinstance(p, MaskSpec):
                raise ValueError(f"parts[{i}] must be a MaskSpec, got {type(p).__name__}")
            if (p.grid, p.prefix, p.suffix) != (parts[0].grid, parts[0].prefix, parts[0].suffix):
                raise ValueError(
                    f"parts[{i}] has grid={p.grid}, prefix={p.prefix}, suffix={p.suffix}; "
                    f"all parts must match parts[0] (grid={parts[0].grid}, "
                    f"prefix={parts[0].prefix}, suffix={parts[0].suffix})"
                )
        object.__setattr__(self, "parts", parts)

    @property
    def grid(self):
        return self.parts[0].grid

    @property
    def prefix(self):
        return self.parts[0].prefix

    @property
    def suffix(self):
        return self.parts[0].suffix

    @property
    def dilation(self):
        return self.parts[0].dilation

    @property
    def terms(self):
        return tuple(t for p in self.parts for t in p.terms)


def coordinates(spec: MaskSpec, idx: torch.Tensor) -> Sequence[torch.Tensor]:
    """Grid coordinates of flat token indices (extra tokens give out-of-range values)."""
    return _unflatten(idx - spec.prefix, spec.grid)
