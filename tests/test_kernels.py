"""Kernels layer: mask semantics, validation, layouts/block tables, backends vs reference.

Small sizes only; compiled FlexAttention is exercised by one test marked ``slow``
(a first CPU compile costs several seconds). The Triton kernel is tested under the
interpreter in ``test_kernels_triton.py``.
"""

import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from accelerate_diffusion.kernels import (
    AttentionSession,
    CrissCrossMask,
    DenseMask,
    FrameTileMask,
    MultiDiagonalMask,
    NeighborhoodMask,
    StripesMask,
    UnionMask,
    attention,
    available_backends,
    block_layout,
    canonical_layout,
    layout_for,
    last_backend,
    naive_attention,
    permutation,
    reference_attention,
    select_backend,
)
from accelerate_diffusion.kernels import dispatch
from accelerate_diffusion.kernels.flex import flex_attention_sparse, flex_block_mask

# ---------------------------------------------------------------------------
# An independent, loop-by-loop transcription of the GNA rule, with
# dilation applied in the dilated sub-grid (NATTEN semantics).
# ---------------------------------------------------------------------------


def gna_1d_naive(L, k, s=1, d=1, causal=False):
    left = k // 2
    right = k // 2 + (k % 2 - 1)
    m = torch.zeros(L, L, dtype=torch.bool)
    for q in range(L):
        r = q % d
        sub_len = len(range(r, L, d))
        u = q // d
        leader = min((u // s) * s + s // 2, sub_len - 1)
        centre = min(max(leader, left), sub_len - 1 - right)
        for kv in range(L):
            if kv % d != r:
                continue
            w = kv // d
            if causal:
                ok = u - w >= 0 and leader - w < k
            else:
                ok = centre - left <= w <= centre + right
            m[q, kv] = ok
    return m


def product_mask(tables, grid):
    """AND over dimensions of per-dimension [L, L] tables, as an [G, G] mask."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij")).reshape(len(grid), -1)
    m = torch.ones(coords.shape[1], coords.shape[1], dtype=torch.bool)
    for i, t in enumerate(tables):
        m &= t[coords[i][:, None], coords[i][None, :]]
    return m


def with_extras(grid_mask, prefix, suffix):
    g = grid_mask.shape[0]
    n = prefix + g + suffix
    m = torch.ones(n, n, dtype=torch.bool)
    m[prefix:prefix + g, prefix:prefix + g] = grid_mask
    return m


def qkv(spec, b=1, h=2, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, spec.num_tokens, d, generator=g).to(dtype) for _ in range(3)]


GNA_1D_CASES = [
    (L, k, s, d, c)
    for L in (1, 7, 12, 13)
    for k in (1, 2, 3, 4, 5)
    for s in (1, 2, 3, 5)
    for d in (1, 2, 3)
    for c in (False, True)
    if k * d <= L and s <= k
]


def test_gna_1d_matches_loop_transcription():
    assert len(GNA_1D_CASES) > 100
    for L, k, s, d, c in GNA_1D_CASES:
        spec = NeighborhoodMask((L,), k, stride=s, dilation=d, causal=c)
        expected = gna_1d_naive(L, k, s, d, c)
        assert torch.equal(spec.dense_mask(), expected), (L, k, s, d, c)
        # every token sees itself, so no softmax row is empty
        assert spec.dense_mask().diagonal().all()


@pytest.mark.parametrize(
    "grid,window,stride,dilation,causal,prefix,suffix",
    [
        ((6, 7), (3, 4), (1, 2), (1, 1), False, 0, 0),
        ((9, 10), (3, 4), (3, 4), (1, 1), False, 3, 0),  # blocked (Swin-like)
        ((3, 6, 7), (2, 3, 3), (1, 2, 1), (1, 2, 1), (True, False, False), 0, 2),
        ((5, 4, 6), (3, 2, 3), (2, 1, 3), (1, 2, 2), (False, False, False), 2, 2),
    ],
)
def test_gna_nd_is_and_over_dims_plus_dense_extras(grid, window, stride, dilation, causal, prefix, suffix):
    spec = NeighborhoodMask(grid, window, stride, dilation, causal, prefix=prefix, suffix=suffix)
    causal_t = causal if isinstance(causal, tuple) else (causal,) * len(grid)
    tables = [gna_1d_naive(*a) for a in zip(grid, window, stride, dilation, causal_t)]
    expected = with_extras(product_mask(tables, grid), prefix, suffix)
    assert torch.equal(spec.dense_mask(), expected)
    assert spec.density() == pytest.approx(expected.float().mean().item())
    assert spec.num_tokens == prefix + math.prod(grid) + suffix


def test_other_patterns_match_their_definitions():
    T, H, W = 4, 3, 5
    coords = torch.stack(torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")).reshape(3, -1)
    t, h, w = coords
    same = lambda a: a[:, None] == a[None, :]  # noqa: E731

    ft = FrameTileMask((T, H, W), global_frames=(0, 2))
    exp = same(t) | (t[None, :] == 0) | (t[None, :] == 2)
    assert torch.equal(ft.dense_mask(), exp)

    md = MultiDiagonalMask((T, H, W), spatial_window=1, own_frame=False)
    assert torch.equal(md.dense_mask(), same(h) & same(w))
    md2 = MultiDiagonalMask((T, H, W), spatial_window=1)
    assert torch.equal(md2.dense_mask(), (same(h) & same(w)) | same(t))

    st = StripesMask((T, H, W), columns=(0, 17))
    exp = torch.zeros(T * H * W, T * H * W, dtype=torch.bool)
    exp[:, [0, 17]] = True
    assert torch.equal(st.dense_mask(), exp)

    cc = CrissCrossMask((T, H, W), group=(2, 3, 2))
    gt, gh, gw = t // 2, h // 3, w // 2
    assert torch.equal(cc.dense_mask(), same(gt) | same(gh) | same(gw))

    un = UnionMask((NeighborhoodMask((T, H, W), (1, 3, 3)), st))
    assert torch.equal(un.dense_mask(), un.parts[0].dense_mask() | exp)

    for spec in (ft, md, md2, st, cc, un):
        assert spec.density() == pytest.approx(spec.dense_mask().float().mean().item())


def test_window_covering_grid_is_dense():
    for grid in [(9,), (5, 7), (3, 4, 5)]:
        spec = NeighborhoodMask(grid, grid, prefix=2)
        assert spec.dense_mask().all() and spec.density() == 1.0
        q, k, v = qkv(spec)
        out, _ = attention(q, k, v, spec, backend="reference")
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
        out, _ = attention(q, k, v, spec, backend="flex_eager")
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)
    assert DenseMask((4, 4)).dense_mask().all()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: NeighborhoodMask((8, 8), (9, 3)), r"window\[0\]=9 must be in \[1, 8\]"),
        (lambda: NeighborhoodMask((8, 8), 0), r"window\[0\]=0"),
        (lambda: NeighborhoodMask((8, 8), 4, stride=5), r"stride\[0\]=5 must be in \[1, window\[0\]=4\]"),
        (lambda: NeighborhoodMask((8, 8), 4, stride=0), r"stride\[0\]=0"),
        (lambda: NeighborhoodMask((8, 8), 5, dilation=2), r"window\[0\]=5 must be in \[1, 4\]"),
        (lambda: NeighborhoodMask((8, 8), 2, dilation=(1, 9)), r"dilation\[1\]=9"),
        (lambda: NeighborhoodMask((8, 8), (3, 3, 3)), r"window must be .* one per grid dimension"),
        (lambda: NeighborhoodMask((8, 0), 1), r"grid\[1\]=0"),
        (lambda: NeighborhoodMask((2, 2, 2, 2), 1), r"grid must have 1 to 3 dimensions"),
        (lambda: NeighborhoodMask((8,), 3, prefix=-1), r"prefix=-1"),
        (lambda: FrameTileMask((4, 4, 4), global_frames=(4,)), r"global_frames entry 4 must be in \[0, 3\]"),
        (lambda: FrameTileMask((16,), ()), r"grid=\(16,\) must have a time axis"),
        (lambda: MultiDiagonalMask((4, 4, 4), spatial_window=(5, 1)), r"spatial_window\[0\]=5"),
        (lambda: StripesMask((4, 4), columns=(16,)), r"columns entry 16 must be in \[0, 15\]"),
        (lambda: CrissCrossMask((4, 4, 4), group=(2, 5, 2)), r"group\[1\]=5 must be in \[1, grid\[1\]=4\]"),
        (lambda: UnionMask((DenseMask((4, 4)), DenseMask((4, 5)))), r"parts\[1\] has grid=\(4, 5\)"),
        (lambda: block_layout(DenseMask((4, 4)), 16, 16, (2, 2, 2)), r"tile=\(2, 2, 2\)"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_token_count_mismatch_raises():
    spec = NeighborhoodMask((4, 4), 3, prefix=2)
    q = torch.randn(1, 1, 16, 8)
    with pytest.raises(ValueError, match=r"grid=\(4, 4\) with prefix=2, suffix=0 describes 18 tokens"):
        attention(q, q, q, spec, backend="reference")
    with pytest.raises(ValueError, match="backend="):
        q = torch.randn(1, 1, 18, 8)
        attention(q, q, q, spec, backend="nope")


LAYOUT_SPECS = [
    NeighborhoodMask((40,), 7),
    NeighborhoodMask((12, 13), (5, 4), stride=(2, 4), prefix=3),
    NeighborhoodMask((12, 13), (3, 4), dilation=(2, 3)),
    NeighborhoodMask((4, 6, 8), (2, 3, 3), causal=(True, False, False), prefix=5, suffix=3),
    NeighborhoodMask((16, 16), (8, 8), stride=8),
    FrameTileMask((4, 5, 6), (0, 2), suffix=7),
    MultiDiagonalMask((4, 5, 6), 3),
    CrissCrossMask((4, 8, 8), (2, 4, 4), prefix=3),
    UnionMask((NeighborhoodMask((16, 16), 5), StripesMask((16, 16), (0, 100)))),
    DenseMask((5, 5), suffix=4),
]


@pytest.mark.parametrize("spec", LAYOUT_SPECS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("bq,bk", [(16, 16), (32, 16)])
def test_block_tables_cover_mask_and_full_blocks_are_full(spec, bq, bk):
    lay = layout_for(spec, bq, bk)
    n = spec.num_tokens
    perm, inv = lay.perm, lay.inv_perm
    assert torch.equal(torch.sort(perm).values, torch.arange(n))
    assert torch.equal(perm[inv], torch.arange(n))
    # same token order whatever the block size: one permutation for every backend
    assert torch.equal(perm, permutation(spec)[0])
    x = torch.randn(1, 1, n, 3)
    assert torch.equal(lay.unpermute(lay.permute(x)), x)

    mp = spec.dense_mask()[perm][:, perm]
    # the kernels' interval-form mask in tiled order is the same mask
    idx = torch.arange(n)
    assert torch.equal(lay.permuted_mask_mod("cpu")(0, 0, idx[:, None], idx[None, :]), mp)
    state = lay.dense_block_mask()
    for i in range(lay.num_q_blocks):
        for j in range(lay.num_kv_blocks):
            blk = mp[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
            if blk.any():
                assert state[i, j] > 0, (i, j)  # never skip a needed block
            if state[i, j] == 2:
                assert blk.all(), (i, j)  # "full" blocks need no mask
    assert 0 < lay.block_density <= 1


def test_tiled_layout_beats_row_major_for_2d_windows():
    # the tile search includes row-major order, so it is never worse
    spec = NeighborhoodMask((32, 32), (8, 8))
    assert block_layout(spec, 64, 64).block_density <= block_layout(spec, 64, 64, tile=(32, 32)).block_density
    blocked = NeighborhoodMask((32, 32), (8, 8), stride=8)
    tiled = block_layout(blocked, 64, 64)
    row_major = block_layout(blocked, 64, 64, tile=(32, 32))
    # blocked windows aligned with tiles: block sparsity equals token sparsity
    assert tiled.block_density == pytest.approx(blocked.density()) == pytest.approx(1 / 16)
    assert row_major.block_density == pytest.approx(4 / 16)


REF_SPECS = LAYOUT_SPECS + [
    NeighborhoodMask((7, 9), (7, 9)),  # whole grid
    NeighborhoodMask((11,), 4, stride=4, causal=True, prefix=1, suffix=2),
    NeighborhoodMask((5, 7, 6), (3, 3, 2), stride=(3, 2, 2), dilation=(1, 2, 3), causal=(True, False, False)),
]


@pytest.mark.parametrize("spec", REF_SPECS, ids=lambda s: type(s).__name__)
def test_reference_matches_naive_softmax(spec):
    q, k, v = qkv(spec, d=8)
    torch.testing.assert_close(reference_attention(q, k, v, spec), naive_attention(q, k, v, spec),
                               atol=1e-5, rtol=1e-5)
    scale = 0.3
    torch.testing.assert_close(reference_attention(q, k, v, spec, scale),
                               naive_attention(q, k, v, spec, scale), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", REF_SPECS, ids=lambda s: type(s).__name__)
def test_flex_eager_matches_reference(spec):
    q, k, v = qkv(spec, b=2, h=2, d=16)
    ref = reference_attention(q, k, v, spec)
    out, used = attention(q, k, v, spec, backend="flex_eager")
    assert used == "flex_eager"
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_permuted_inputs_give_permuted_outputs():
    spec = NeighborhoodMask((10, 12), (3, 5), stride=(1, 2), suffix=3)
    q, k, v = qkv(spec)
    perm, inv = permutation(spec)
    ref = reference_attention(q, k, v, spec)
    qp, kp, vp = (x[:, :, perm] for x in (q, k, v))
    for backend in ("reference", "flex_eager"):
        out, _ = attention(qp, kp, vp, spec, backend=backend, permuted=True)
        torch.testing.assert_close(out[:, :, inv], ref, atol=2e-5, rtol=2e-5)


def test_flex_eager_bf16_head_dim_64():
    spec = NeighborhoodMask((8, 8), 3, prefix=4)
    q, k, v = qkv(spec, d=64, dtype=torch.bfloat16)
    out, _ = attention(q, k, v, spec, backend="flex_eager")
    ref = naive_attention(q.float(), k.float(), v.float(), spec)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


REORDER_SPECS = [  # grids where 8x8 tiles beat rows (on small grids a few rows are compact enough)
    NeighborhoodMask((32, 32), 16),
    NeighborhoodMask((32, 32), 16, stride=8),
    NeighborhoodMask((24, 20), (9, 6), stride=(1, 3), prefix=3),
]


@pytest.mark.parametrize("spec", REORDER_SPECS, ids=["sliding", "strided", "mixed+text"])
def test_tiled_order_gives_the_plain_order_output_with_fewer_blocks(spec):
    q, k, v = qkv(spec, h=2, d=16)
    lay_plain, _ = flex_block_mask(spec, "cpu", 16, 16, tile=spec.grid)      # row-major tokens
    lay_tiled, _ = flex_block_mask(spec, "cpu", 16, 16)
    assert not torch.equal(lay_plain.perm, lay_tiled.perm)
    assert lay_tiled.block_density < lay_plain.block_density
    plain = flex_attention_sparse(q, k, v, spec, compile=False, block_q=16, block_kv=16, tile=spec.grid)
    tiled = flex_attention_sparse(q, k, v, spec, compile=False, block_q=16, block_kv=16)
    torch.testing.assert_close(tiled, plain, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tiled, reference_attention(q, k, v, spec), atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="tile must be None when permuted=True"):
        flex_attention_sparse(q, k, v, spec, compile=False, permuted=True, tile=spec.grid)


@pytest.mark.slow
def test_flex_compiled_tiled_equals_plain_order():
    spec = NeighborhoodMask((32, 32), 16, stride=8)
    q, k, v = qkv(spec, h=2, d=16)
    try:
        plain = flex_attention_sparse(q, k, v, spec, block_q=16, block_kv=16, tile=spec.grid)
    except Exception as e:  # no C++ toolchain for inductor here
        pytest.skip(f"torch.compile unavailable: {e}")
    tiled = flex_attention_sparse(q, k, v, spec, block_q=16, block_kv=16)
    torch.testing.assert_close(tiled, plain, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_flex_compiled_matches_reference():
    # one small compile (several seconds on CPU); the same compiled function serves all
    spec = NeighborhoodMask((9, 11), (3, 4), stride=(1, 2), prefix=2)
    q, k, v = qkv(spec, b=1, h=2, d=16)
    limit = torch._dynamo.config.recompile_limit
    try:
        out, used = attention(q, k, v, spec, backend="flex")
    except Exception as e:  # no C++ toolchain for inductor here
        pytest.skip(f"torch.compile unavailable: {e}")
    assert used == "flex"
    assert torch._dynamo.config.recompile_limit == limit     # raised for flex's own calls only
    torch.testing.assert_close(out, reference_attention(q, k, v, spec), atol=2e-5, rtol=2e-5)


def test_dispatcher_reports_backend(monkeypatch):
    spec = NeighborhoodMask((8, 8), 3)
    q, k, v = qkv(spec)
    session = AttentionSession()
    monkeypatch.setenv("ACCEL_DIFFUSION_FLEX_COMPILE", "0")
    out, used = attention(q, k, v, spec, session=session)
    assert used == "reference" == last_backend()
    assert session.calls == {"reference": 1}
    torch.testing.assert_close(out, reference_attention(q, k, v, spec))
    # dense specs never go to a sparse kernel
    monkeypatch.setenv("ACCEL_DIFFUSION_FLEX_COMPILE", "1")
    assert select_backend(q, NeighborhoodMask((8, 8), 8)) == "reference"
    assert select_backend(q, spec) == "flex"
    assert "reference" in available_backends("cpu") and "flex_eager" in available_backends("cpu")


def test_dispatcher_falls_back_loudly_when_compile_fails(monkeypatch):
    spec = NeighborhoodMask((8, 8), 3)
    q, k, v = qkv(spec)

    def broken(*a, compile=True, **kw):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(dispatch, "flex_attention_sparse", broken)
    session = AttentionSession()
    with pytest.warns(RuntimeWarning, match="compiled FlexAttention failed"):
        out, used = attention(q, k, v, spec, session=session)
    assert used == "reference"
    assert select_backend(q, spec, session=session) == "reference"  # not retried in this session
    assert select_backend(q, spec) == "flex"                        # another owner is not affected
    torch.testing.assert_close(out, reference_attention(q, k, v, spec))


def test_triton_backend_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    spec = NeighborhoodMask((8, 8), 3)
    q, k, v = qkv(spec)
    with pytest.raises(RuntimeError, match="triton"):
        attention(q, k, v, spec, backend="triton")


def test_import_without_triton():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # behave as if triton were not installed
        import torch
        import accelerate_diffusion.kernels as K
        spec = K.NeighborhoodMask((4, 4), 3)
        q = torch.randn(1, 1, 16, 8)
        assert "triton" not in K.available_backends("cpu")
        print(K.attention(q, q, q, spec, backend="reference")[1])
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "reference"


def test_layout_is_computed_without_dense_mask(monkeypatch):
    # a 3D video grid of 16*32*32 tokens: an N^2 mask would be 268M entries
    spec = NeighborhoodMask((16, 32, 32), (4, 8, 8), prefix=7)

    def no_dense(*a, **k):
        raise AssertionError("dense mask used")

    monkeypatch.setattr(type(spec), "dense_mask", no_dense)
    lay = canonical_layout(spec)
    assert lay.num_q_blocks == math.ceil(spec.num_tokens / 64)
    assert 0 < lay.block_density < 0.2
    assert 0 < spec.density() < lay.block_density
