"""Triton block-sparse kernel under the Triton CPU interpreter (small sizes, fp32).

Triton's interpreter must be enabled before triton itself is imported (``import torch``
already imports it, and triton's own ``tl.zeros``/``tl.max`` helpers are decorated then).
So unless pytest was started with ``TRITON_INTERPRET=1``, one parent test re-runs this
file in a child pytest process with the variable set; the kernel tests run there.
"""

import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from accelerate_diffusion.kernels import (  # noqa: E402
    CrissCrossMask,
    DenseMask,
    FrameTileMask,
    MultiDiagonalMask,
    NeighborhoodMask,
    StripesMask,
    UnionMask,
    attention,
    available_backends,
    permutation,
    reference_attention,
)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child")


@pytest.mark.skipif(INTERPRETED, reason="already inside the interpreter process")
def test_triton_kernels_in_interpreter_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", __file__],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    m = re.search(r"(\d+) passed", res.stdout)
    assert m and int(m.group(1)) >= 10 and "failed" not in res.stdout, res.stdout[-6000:]


@pytest.fixture(scope="module")
def tk():
    if not INTERPRETED:
        pytest.skip("runs in the TRITON_INTERPRET=1 child")
    from accelerate_diffusion.kernels import triton_attention

    return triton_attention


def qkv(spec, b=1, h=1, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, spec.num_tokens, d, generator=g) for _ in range(3)]


CASES = [
    # (spec, head dim, batch, heads)
    (NeighborhoodMask((50,), 7), 16, 1, 2),  # 1D sliding, ragged last block
    (NeighborhoodMask((12, 13), (5, 4), stride=(2, 4), prefix=3), 16, 1, 1),  # strided, odd, text
    (NeighborhoodMask((9, 10), (3, 5), stride=(3, 5), suffix=4), 24, 2, 1),  # blocked, D not pow2
    (NeighborhoodMask((4, 6, 7), (2, 3, 3), dilation=(1, 2, 2), causal=(True, False, False)), 16, 1, 1),
    (NeighborhoodMask((8, 9), (8, 9)), 16, 1, 1),  # window = grid: dense
    (FrameTileMask((4, 4, 6), (0,), prefix=2), 16, 1, 1),
    (MultiDiagonalMask((4, 5, 6), 3), 16, 1, 1),
    (CrissCrossMask((4, 6, 6), (2, 3, 3)), 16, 1, 1),
    (UnionMask((NeighborhoodMask((10, 10), 3), StripesMask((10, 10), (0, 55)))), 32, 1, 1),
    (DenseMask((5, 5), prefix=1, suffix=2), 16, 1, 1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: type(c[0]).__name__)
def test_triton_matches_reference(tk, case):
    spec, d, b, h = case
    q, k, v = qkv(spec, b, h, d)
    out, used = attention(q, k, v, spec, backend="triton")
    assert used == "triton"
    torch.testing.assert_close(out, reference_attention(q, k, v, spec), atol=1e-5, rtol=1e-5)


def test_triton_block_sizes_scale_and_permuted(tk):
    spec = NeighborhoodMask((10, 12), (3, 5), stride=(1, 2), suffix=3)
    q, k, v = qkv(spec, d=16)
    ref = reference_attention(q, k, v, spec, scale=0.2)
    out = tk.triton_attention(q, k, v, spec, 0.2, block_m=32, block_n=16)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    perm, inv = permutation(spec)
    outp = tk.triton_attention(q[:, :, perm], k[:, :, perm], v[:, :, perm], spec, 0.2, permuted=True)
    torch.testing.assert_close(outp[:, :, inv], ref, atol=1e-5, rtol=1e-5)


def test_triton_non_contiguous_inputs(tk):
    spec = NeighborhoodMask((6, 6), 3)
    g = torch.Generator().manual_seed(1)
    # [B, N, H, D] storage viewed as [B, H, N, D], as attention processors produce
    q, k, v = (torch.randn(1, 36, 2, 16, generator=g).transpose(1, 2) for _ in range(3))
    assert not q.is_contiguous()
    perm, inv = permutation(spec)
    qp, kp, vp = (x.transpose(1, 2)[:, perm].transpose(1, 2) for x in (q, k, v))  # still strided
    assert not qp.is_contiguous()
    out, _ = attention(qp, kp, vp, spec, backend="triton", permuted=True)
    torch.testing.assert_close(out[:, :, inv], reference_attention(q, k, v, spec), atol=1e-5, rtol=1e-5)


def test_triton_listed_when_interpreting(tk):
    assert available_backends("cpu")[0] == "triton"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", [CASES[1], CASES[5], CASES[8]], ids=lambda c: type(c[0]).__name__)
def test_triton_half_precision(tk, dtype, case):
    spec, d, b, h = case
    q, k, v = (x.to(dtype) for x in qkv(spec, b, h, d, seed=3))
    out, used = attention(q, k, v, spec, backend="triton")
    assert used == "triton" and out.dtype == dtype
    ref = reference_attention(q.float(), k.float(), v.float(), spec)
    tol = 2e-3 if dtype == torch.float16 else 2e-2   # P is rounded to the input dtype before P @ V
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


def test_autotune_times_every_fitting_config_and_keeps_the_fastest(tk):
    spec = NeighborhoodMask((12, 13), (5, 4), stride=(2, 4), prefix=3)
    q, k, v = qkv(spec, d=16, seed=4)
    ref = reference_attention(q, k, v, spec)
    configs = tk.configs_for(16, torch.float32)
    assert configs and set(configs) <= set(tk.CONFIGS)
    fake_ms = {c: 10.0 + i for i, c in enumerate(configs)}
    fake_ms[configs[-1]] = 1.0                       # the last one is "fastest"
    timed = []

    def timer(fn):
        out = fn()                                    # every candidate must also be right
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        cfg = configs[len(timed)]
        timed.append(cfg)
        return fake_ms[cfg]

    best = tk.autotune(q, k, v, spec, timer=timer)
    assert best == configs[-1] and timed == configs
    assert tk.autotune(q, k, v, spec, timer=timer) == best and len(timed) == len(configs)  # cached


def test_configs_fit_shared_memory(tk):
    # bf16, head dim 128: a Q tile plus 3 stages of 128-key K and V tiles (224 KiB) does not fit
    fits = tk.configs_for(128, torch.bfloat16)
    assert (128, 128, 8, 3) not in fits and (128, 64, 4, 3) in fits
    assert (128, 128, 8, 3) in tk.configs_for(64, torch.bfloat16)
