"""One attention signature over all backends, and the dispatcher that picks one.

``attention(q, k, v, spec, session=...)`` returns ``(out, backend_used)``. What the dispatcher
learns and counts lives in an :class:`AttentionSession` that the caller owns (one per
accelerated pipeline): the calls per backend, and a device where compiled flex failed (not
tried again in that session). Nothing is process-wide. ``auto`` picks:

1. ``reference`` (plain SDPA, no mask) when the spec is dense, or too dense for a
   sparse kernel to pay off (``density > max_sparse_density``);
2. ``xformers`` for CUDA tensors when xformers is installed and the pattern maps to its
   biases (1D bands, block-diagonal query groups: ``xformers_attention``); otherwise
   ``xformers_reason`` says why, and the attention report shows it. The order xformers >
   triton is not measured yet (``benchmarks/bench_attention_gpu.py`` measures it);
3. ``triton`` for CUDA tensors when triton is installed;
4. ``flex`` (compiled FlexAttention) when torch.compile works on this device: the
   first failure is reported once and flex is not tried again on that device in the session;
5. ``reference`` (dense masked SDPA) otherwise.

Eager FlexAttention (``flex_eager``) materialises the full score matrix (~8x slower
than dense on CPU); it is only for correctness checks and is never chosen by ``auto``.
Set ``ACCEL_DIFFUSION_FLEX_COMPILE=0`` to keep ``auto`` away from compiled flex.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from collections import Counter

import torch

from .flex import flex_attention_sparse, flex_available
from .masks import MaskSpec
from .reference import reference_attention
from .xformers_attention import xformers_attention, xformers_installed, xformers_reason

__all__ = [
    "BACKENDS",
    "AttentionSession",
    "attention",
    "available_backends",
    "select_backend",
    "last_backend",
    "xformers_unused_reason",
]

BACKENDS = ("xformers", "triton", "flex", "flex_eager", "reference")
_STATE = threading.local()


class AttentionSession:
    """The dispatcher's memory for one owner: calls per backend and the device types where
    compiled flex failed. Without one, each call gets a fresh session (nothing remembered)."""

    def __init__(self):
        self.calls: Counter = Counter()
        self.flex_broken: dict[str, str] = {}    # device type -> error of the failed compile

    def clear(self) -> None:
        self.calls.clear()
        self.flex_broken.clear()


def triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["triton"] = None
        return False


def _triton_reason(q: torch.Tensor) -> str | None:
    if not triton_installed():
        return "triton is not installed (pip install 'accelerate-diffusion[kernels]')"
    from .triton_attention import triton_supports

    return triton_supports(q)


def xformers_unused_reason(q: torch.Tensor, spec: MaskSpec) -> str | None:
    """Why the xformers backend cannot run ``spec`` on ``q``'s device (None: it can)."""
    if not q.is_cuda:
        return "xformers needs CUDA tensors"
    if not xformers_installed():
        return "xformers is not installed (pip install 'accelerate-diffusion[xformers]')"
    return xformers_reason(spec)


def _flex_compile_enabled() -> bool:
    return os.environ.get("ACCEL_DIFFUSION_FLEX_COMPILE", "1") not in ("0", "false", "False")


def available_backends(device="cpu", session: AttentionSession | None = None) -> list[str]:
    """Backends that can run on ``device`` here, fastest first."""
    broken = session.flex_broken if session is not None else {}
    out = []
    dev = torch.device(device)
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if xformers_installed() and dev.type == "cuda":
        out.append("xformers")
    if triton_installed() and (dev.type == "cuda" or interpreting):
        out.append("triton")
    if flex_available():
        if dev.type not in broken:
            out.append("flex")
        out.append("flex_eager")
    out.append("reference")
    return out


def select_backend(q: torch.Tensor, spec: MaskSpec, max_sparse_density: float = 0.6,
                   session: AttentionSession | None = None) -> str:
    """The backend ``auto`` would use for ``q`` and ``spec``."""
    broken = session.flex_broken if session is not None else {}
    if spec.density() > max_sparse_density:
        return "reference"
    if q.is_cuda and xformers_unused_reason(q, spec) is None:
        return "xformers"
    if q.is_cuda and _triton_reason(q) is None:
        return "triton"
    if flex_available() and _flex_compile_enabled() and q.device.type not in broken:
        return "flex"
    return "reference"


def last_backend() -> str | None:
    """Backend used by this thread's most recent ``attention`` call."""
    return getattr(_STATE, "last", None)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: MaskSpec,
    *,
    backend: str = "auto",
    scale: float | None = None,
    permuted: bool = False,
    max_sparse_density: float = 0.6,
    session: AttentionSession | None = None,
) -> tuple[torch.Tensor, str]:
    """Masked self-attention over ``[B, H, N, D]`` tensors; returns ``(out, backend_used)``.

    ``N`` must equal ``spec.num_tokens`` (prefix extras, then the row-major grid, then
    suffix extras). ``permuted=True``: q, k, v (and the output) are in the canonical tiled
    order ``permutation(spec)[0]``, which saves two gathers per call when a caller keeps
    tokens permuted across layers.
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one shape [B, H, N, D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    spec.check_tokens(q.shape[-2])
    session = session if session is not None else AttentionSession()
    if backend == "auto":
        backend = select_backend(q, spec, max_sparse_density, session)
        if backend == "flex":
            try:
                out = flex_attention_sparse(q, k, v, spec, scale, compile=True, permuted=permuted)
            except Exception as e:  # compile toolchain missing or unsupported: say so once
                session.flex_broken[q.device.type] = f"{type(e).__name__}: {e}"
                warnings.warn(
                    f"compiled FlexAttention failed on {q.device.type} ({type(e).__name__}: "
                    f"{str(e)[:200]}); using the dense masked reference from now on in this session",
                    RuntimeWarning,
                    stacklevel=2,
                )
                backend = "reference"
            else:
                return _done(out, "flex", session)
    if backend == "xformers":
        reason = xformers_unused_reason(q, spec)
        if reason:
            raise RuntimeError(f"backend='xformers': {reason}")
        out = xformers_attention(q, k, v, spec, scale, permuted=permuted)
    elif backend == "triton":
        reason = _triton_reason(q)
        if reason:
            raise RuntimeError(reason)
        from .triton_attention import triton_attention

        out = triton_attention(q, k, v, spec, scale, permuted=permuted)
    elif backend == "flex":
        out = flex_attention_sparse(q, k, v, spec, scale, compile=True, permuted=permuted)
    elif backend == "flex_eager":
        out = flex_attention_sparse(q, k, v, spec, scale, compile=False, permuted=permuted)
    elif backend == "reference":
        out = reference_attention(q, k, v, spec, scale, permuted=permuted)
    else:
        raise ValueError(f"backend={backend!r} must be one of {('auto',) + BACKENDS}")
    return _done(out, backend, session)


def _done(out: torch.Tensor, backend: str, session: AttentionSession) -> tuple[torch.Tensor, str]:
    session.calls[backend] += 1
    _STATE.last = backend
    return out, backend
