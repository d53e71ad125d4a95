"""xformers backend, tested on CPU: each plan's biases, materialised, must cover the spec's
dense mask exactly once, and the plan run by a masked-softmax executor must equal the
reference. Where xformers' own bias classes import (they need no CUDA to materialise),
their masks must equal our reading of them. The kernels themselves need CUDA."""

import subprocess
import sys
import textwrap

import pytest
import torch

from accelerate_diffusion.kernels import (
    CrissCrossMask,
    DenseMask,
    FrameTileMask,
    NeighborhoodMask,
    UnionMask,
    StripesMask,
    attention,
    available_backends,
    plan_for,
    reference_attention,
    run_plan,
    select_backend,
    xformers_reason,
    xformers_unused_reason,
)
from accelerate_diffusion.kernels.xformers_attention import Bias, materialize

EXPRESSIBLE = [
    ("1D sliding", NeighborhoodMask((40,), 7), "band"),
    ("1D sliding even window + text both sides", NeighborhoodMask((40,), 8, prefix=3, suffix=2), "band"),
    ("1D causal + text", NeighborhoodMask((30,), 5, causal=True, prefix=2), "band"),
    ("2D blocked (Swin)", NeighborhoodMask((16, 16), (8, 8), stride=8), "block_diagonal"),
    ("2D strided + text", NeighborhoodMask((16, 16), 6, stride=3, prefix=5), "block_diagonal"),
    ("2D strided ragged edges", NeighborhoodMask((13, 11), (4, 6), stride=(4, 3), suffix=3), "block_diagonal"),
    ("1D strided", NeighborhoodMask((64,), 16, stride=8), "block_diagonal"),
    ("3D blocked, dilated", NeighborhoodMask((4, 8, 8), (2, 4, 4), stride=(2, 4, 4), dilation=(1, 2, 1)),
     "block_diagonal"),
    ("frame tile + text", FrameTileMask((4, 5, 6), (0, 2), prefix=3), "block_diagonal"),
    ("dense grid + text", DenseMask((5, 5), suffix=2), "block_diagonal"),
]


def coverage_count(spec, plan):
    """How many times each (query, key) pair is computed by the plan's materialised biases."""
    n = spec.num_tokens
    count = torch.zeros(n, n, dtype=torch.int32)
    for part in plan.parts:
        for call in part.calls:
            m = materialize(call.bias, part.q_idx.numel(), call.k_idx.numel())
            qi = part.q_idx[:, None].expand_as(m)[m]
            ki = call.k_idx[None, :].expand_as(m)[m]
            count.index_put_((qi, ki), torch.ones_like(qi, dtype=torch.int32), accumulate=True)
    return count


@pytest.mark.parametrize("name,spec,kind", EXPRESSIBLE, ids=[c[0] for c in EXPRESSIBLE])
def test_plan_covers_the_mask_exactly_once(name, spec, kind):
    plan = plan_for(spec)
    assert plan.kind == kind
    assert xformers_reason(spec) is None
    # every allowed pair once (a pair twice would double its softmax weight), nothing else
    assert torch.equal(coverage_count(spec, plan), spec.dense_mask().int())
    # parts' queries are disjoint and cover every token
    q_all = torch.cat([p.q_idx for p in plan.parts])
    assert torch.equal(torch.sort(q_all).values, torch.arange(spec.num_tokens))


@pytest.mark.parametrize("name,spec,kind", EXPRESSIBLE, ids=[c[0] for c in EXPRESSIBLE])
def test_plan_output_equals_reference(name, spec, kind):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, spec.num_tokens, 16, generator=g) for _ in range(3))
    out = run_plan(q, k, v, plan_for(spec), executor="torch")
    torch.testing.assert_close(out, reference_attention(q, k, v, spec), atol=1e-5, rtol=1e-5)
    out = run_plan(q, k, v, plan_for(spec), 0.2, executor="torch")
    torch.testing.assert_close(out, reference_attention(q, k, v, spec, 0.2), atol=1e-5, rtol=1e-5)


def test_strided_2d_groups_are_stride_tiles_with_window_keys():
    # 64x64, window 24, stride 8: stride groups of 8 per axis, except that the two first
    # (and two last) share one window, shifted inside the grid: 6 key sets per axis
    spec = NeighborhoodMask((64, 64), 24, stride=8)
    plan = plan_for(spec)
    (part,) = plan.parts
    (call,) = part.calls
    per_axis = (16, 8, 8, 8, 8, 16)
    assert call.bias.q_seqlens == tuple(a * b for a in per_axis for b in per_axis)
    assert call.bias.kv_seqlens == (24 * 24,) * 36
    assert plan.gather_factor == 36 * 576 / 4096


@pytest.mark.parametrize(
    "spec,words",
    [
        (NeighborhoodMask((64, 64), 24), "2D sliding window"),
        (NeighborhoodMask((40,), 5, dilation=2), "1D sliding window"),
        (NeighborhoodMask((8, 16, 16), (3, 8, 8)), "3D sliding window"),
        (UnionMask((NeighborhoodMask((16, 16), 5), StripesMask((16, 16), (0, 100)))), "2D sliding window"),
        (CrissCrossMask((8, 16, 16), (1, 4, 4)), "gather more than 16 keys per token"),
    ],
)
def test_inexpressible_patterns_say_why(spec, words):
    reason = xformers_reason(spec)
    assert reason and reason.startswith("not expressible as an xformers bias") and words in reason, reason
    with pytest.raises(ValueError, match="backend='xformers': not expressible"):
        plan_for(spec)


def test_materialize_by_hand():
    # band, 3 queries against 5 keys, aligned bottom-right: query i sees keys i+1 (left 1) .. i+2
    band = materialize(Bias("local", left=1, right=0), 3, 5).int()
    assert band.tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]
    bd = materialize(Bias("block_diagonal", q_seqlens=(1, 2), kv_seqlens=(2, 1)), 3, 3).int()
    assert bd.tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="kind='ring' must be one of"):
        materialize(Bias("ring"), 2, 2)


def test_xformers_is_never_picked_on_cpu_and_says_why():
    spec = NeighborhoodMask((16, 16), 8, stride=8)
    q = torch.randn(1, 1, spec.num_tokens, 16)
    assert "xformers" not in available_backends("cpu")
    assert select_backend(q, spec) != "xformers"
    assert xformers_unused_reason(q, spec) == "xformers needs CUDA tensors"
    with pytest.raises(RuntimeError, match="backend='xformers': xformers needs CUDA"):
        attention(q, q, q, spec, backend="xformers")


def test_kernels_work_without_xformers():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["xformers"] = None  # behave as if xformers were not installed
        import torch
        import accelerate_diffusion.kernels as K
        spec = K.NeighborhoodMask((8, 8), 4, stride=4)
        q = torch.randn(1, 1, 64, 8)
        assert not K.xformers_installed() and K.xformers_reason(spec) is None
        out = K.run_plan(q, q, q, K.plan_for(spec), executor="torch")
        ref, used = K.attention(q, q, q, spec, backend="reference")
        print(used, torch.allclose(out, ref, atol=1e-5))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "reference True"


def test_real_xformers_biases_match_our_reading():
    ab = pytest.importorskip("xformers.ops.fmha.attn_bias")
    from accelerate_diffusion.kernels.xformers_attention import to_xformers_bias

    seen = set()
    for _, spec, _ in EXPRESSIBLE:
        for part in plan_for(spec).parts:
            for call in part.calls:
                nq, nk = part.q_idx.numel(), call.k_idx.numel()
                xb = to_xformers_bias(call.bias, device=torch.device("cpu"))
                if xb is None:
                    continue
                assert isinstance(xb, (ab.LocalAttentionFromBottomRightMask, ab.BlockDiagonalMask))
                real = xb.materialize((nq, nk), dtype=torch.float32, device="cpu")
                assert torch.equal(torch.isfinite(real), materialize(call.bias, nq, nk)), call.bias
                seen.add(type(xb).__name__)
    assert seen == {"LocalAttentionFromBottomRightMask", "BlockDiagonalMask"}
    # batch folded into the sequence: the block-diagonal bias repeats per batch element
    bias = Bias("block_diagonal", q_seqlens=(2, 3), kv_seqlens=(4, 1))
    real = to_xformers_bias(bias, batch=2, device=torch.device("cpu")).materialize((10, 10))
    mine = materialize(Bias("block_diagonal", q_seqlens=(2, 3, 2, 3), kv_seqlens=(4, 1, 4, 1)), 10, 10)
    assert torch.equal(torch.isfinite(real), mine)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="xformers kernels need CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_xformers_backend_on_cuda(dtype):
    pytest.importorskip("xformers.ops")
    for _, spec, _ in EXPRESSIBLE:
        q, k, v = (torch.randn(2, 2, spec.num_tokens, 64, device="cuda", dtype=dtype) for _ in range(3))
        out, used = attention(q, k, v, spec, backend="xformers")
        ref = reference_attention(q.float(), k.float(), v.float(), spec)
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
