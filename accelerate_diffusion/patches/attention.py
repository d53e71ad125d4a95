"""Sparse / neighborhood attention as a drop-in: image or video self-attention restricted
to a mask over the token grid, run by the kernels' ``attention()`` dispatcher.

How it plugs in, without copying any diffusers processor:

* a hook on the denoiser reads the token grid from its input (latent ``H, W`` / patch
  size for PixArt and SD3, Flux's ``img_ids`` for its 2x2-packed latents, ``(F, H, W)`` /
  patch for Wan) and keeps it for the duration of the call;
* a hook on each image self-attention module (PixArt/Wan ``attn1``, SD3/Flux joint
  ``attn``, SD3.5 ``attn2``) runs the module's *own* processor unchanged (projections,
  QK-norm, RoPE, joint concat, output projections) inside a ``TorchFunctionMode`` that
  redirects its one ``scaled_dot_product_attention`` call to ``kernels.attention`` with the
  mask spec for this grid. Joint text tokens are dense extra tokens: a *prefix* for Flux
  (text first), a *suffix* for SD3 (image first, text appended).

Processors are never replaced, so ``remove()`` only deletes the hooks, and a processor a
user set (or diffusers' kwargs filtering by processor signature) is left as it is. A
wrapped forward that never reaches SDPA (a non-native diffusers attention backend) raises
instead of silently running dense. Cross-attention (``attn2`` of PixArt/Wan) stays dense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .. import kernels
from ..config import TechniqueConfig, check_choice, check_range
from ..macs import format_macs
from . import NotApplicable, PatchContext, PatchHandle, TechniqueHook

NAME = "attention"
HOOK = "accel_attention"
PATTERNS = ("neighborhood", "strided", "blocked", "frame_tile", "criss_cross")
BACKENDS = ("auto", "flex", "flex_eager", "reference", "triton", "xformers")


def _tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


@dataclass
class Config(TechniqueConfig):
    """``window``: tokens (int) or a fraction of each grid side (float in (0, 1], rounded to
    the nearest token count, at least 1; 1.0 = dense); one value or one per grid dimension
    ((t, h, w) for video); for ``criss_cross`` it is the group size. ``stride``: None = the
    pattern's own (1 neighborhood, window // 2 strided, window blocked). ``dense_steps``:
    first steps run dense (an int count, or a float fraction of the steps, rounded up).
    ``dense_layers``: block indices (``family.blocks`` order, Flux double then single
    blocks; negatives from the end) kept dense. ``backend``: see ``kernels.dispatch``."""

    NAME = NAME
    pattern: str = "neighborhood"
    window: Any = 0.5
    stride: Any = None
    global_frames: Any = (0,)     # frame_tile: key frames every frame sees
    dense_steps: float = 0
    dense_layers: Any = ()
    backend: str = "auto"
    min_steps: int = 1               # generations with fewer steps run dense (few-step models)

    def validate(self) -> None:
        check_choice(NAME, "pattern", self.pattern, PATTERNS)
        check_choice(NAME, "backend", self.backend, BACKENDS)
        check_range(NAME, "min_steps", self.min_steps, 1, integer=True)
        self.window = _tuple(self.window)
        windows = self.window if isinstance(self.window, tuple) else (self.window,)
        if not 1 <= len(windows) <= 3:
            raise ValueError(f"{NAME}.window: one value or one per grid dimension (1 to 3), got {self.window!r}")
        for w in windows:
            if isinstance(w, float):
                check_range(NAME, "window", w, 0, 1, lo_open=True)
            else:
                check_range(NAME, "window", w, 1, integer=True)
        self.stride = _tuple(self.stride)
        if self.stride is not None:
            for s in self.stride if isinstance(self.stride, tuple) else (self.stride,):
                check_range(NAME, "stride", s, 1, integer=True)
        self.global_frames = _tuple(self.global_frames)
        for f in self.global_frames if isinstance(self.global_frames, tuple) else (self.global_frames,):
            check_range(NAME, "global_frames", f, 0, integer=True)
        if isinstance(self.dense_steps, float):
            check_range(NAME, "dense_steps", self.dense_steps, 0, 1)
        else:
            check_range(NAME, "dense_steps", self.dense_steps, 0, integer=True)
        dl = self.dense_layers
        self.dense_layers = (dl,) if isinstance(dl, int) else tuple(dl or ())
        for i in self.dense_layers:
            check_range(NAME, "dense_layers", i, integer=True)


# -- mask specs -----------------------------------------------------------------------------
def _sizes(name: str, value, grid: tuple[int, ...]) -> tuple[int, ...]:
    """Per-dimension token counts: ints kept, fractions of each grid side rounded (>= 1)."""
    values = value if isinstance(value, tuple) else (value,) * len(grid)
    if len(values) != len(grid):
        raise ValueError(f"{NAME}.{name}: {value!r} gives {len(values)} values for a "
                         f"{len(grid)}-d token grid {grid}")
    return tuple(max(1, round(v * L)) if isinstance(v, float) else int(v) for v, L in zip(values, grid))


def build_spec(config: Config, grid: tuple[int, ...], prefix: int = 0, suffix: int = 0) -> kernels.MaskSpec:
    """The kernels' mask spec for this config on this token grid; spec errors come back as
    ValueError naming the config field."""
    extra = dict(prefix=prefix, suffix=suffix)
    try:
        if config.pattern == "frame_tile":
            return kernels.FrameTileMask(grid, config.global_frames, **extra)
        window = _sizes("window", config.window, grid)
        if config.pattern == "criss_cross":
            return kernels.CrissCrossMask(grid, window, **extra)
        if config.stride is not None:
            stride = config.stride
        elif config.pattern == "blocked":
            stride = window
        elif config.pattern == "strided":
            stride = tuple(max(1, w // 2) for w in window)
        else:
            stride = 1
        return kernels.NeighborhoodMask(grid, window, stride, **extra)
    except ValueError as e:
        msg = str(e)
        head = msg.split("[")[0].split("=")[0].split(" ")[0]
        name = {"group": "window", "spatial_window": "window"}.get(head, head)
        if name not in Config.field_names():
            name = "grid"
        raise ValueError(f"{NAME}.{name}: pattern={config.pattern!r}, window={config.window!r}, "
                         f"stride={config.stride!r} does not fit the token grid {grid}: {msg}") from None


# -- runtime ----------------------------------------------------------------------------------
@dataclass
class _Layer:
    name: str
    index: int
    side: str                  # where joint text tokens sit: "prefix", "suffix" or "none"
    density: float | None = None
    backend: str | None = None
    sparse_calls: int = 0
    dense_calls: int = 0


class _Runtime:
    def __init__(self, ctx: PatchContext, config: Config):
        self.ctx = ctx
        self.config = config
        self.grid: tuple[int, ...] | None = None       # during a denoiser call
        self.last_grid: tuple[int, ...] | None = None  # for the report
        self.layers: list[_Layer] = []
        self.dense_layers: set[int] = set()
        self._specs: dict = {}
        self.xformers_notes: dict[str, str] = {}   # spec -> why auto did not use xformers (CUDA)
        self.macs_dense = 0      # attention-core MACs of the sparse calls if they ran dense
        self.macs_kernel = 0.0   # the same calls at the mask's density (what a sparse kernel needs)
        self.session = kernels.AttentionSession()   # this pipeline's dispatcher memory (no global state)

    def reset(self) -> None:
        self.session.calls.clear()           # calls per backend, per generation
        self.macs_dense, self.macs_kernel = 0, 0.0
        for layer in self.layers:
            layer.sparse_calls = layer.dense_calls = 0

    def forget(self) -> None:
        """On remove(): free the mask specs built for this pipeline and the kernels' cached masks."""
        self.reset()
        self._specs.clear()
        self.xformers_notes.clear()
        self.session.clear()
        kernels.clear_caches()

    def details(self) -> dict:
        """Attention-core MACs of the sparse calls dense vs at mask density, the backends that
        ran, and the mask specs built (token grid, extra tokens, text side -> spec)."""
        return {"macs_dense": self.macs_dense, "macs_kernel": self.macs_kernel,
                "backend_calls": dict(self.session.calls), "specs": dict(self._specs),
                "layers": [{"name": l.name, "block": l.index, "sparse_calls": l.sparse_calls,
                            "dense_calls": l.dense_calls, "density": l.density} for l in self.layers]}

    def dense_steps(self) -> int:
        n = self.config.dense_steps
        return math.ceil(n * self.ctx.state.num_steps - 1e-9) if isinstance(n, float) else n

    def is_dense(self, layer: _Layer) -> bool:
        return layer.index in self.dense_layers or self.ctx.state.step < self.dense_steps()

    def spec(self, n: int, layer: _Layer) -> kernels.MaskSpec:
        if self.grid is None:
            raise RuntimeError(f"{NAME}: {layer.name} ran outside a denoiser call; the token grid is unknown")
        extra = n - math.prod(self.grid)
        if extra < 0 or (extra and layer.side == "none"):
            raise ValueError(f"{NAME}.grid: token grid {self.grid} ({math.prod(self.grid)} tokens) does not "
                             f"match the {n} tokens attending in {layer.name}"
                             + ("" if layer.side == "none" else " (image tokens + joint text tokens)"))
        key = (self.grid, extra, layer.side)
        if key not in self._specs:
            self._specs[key] = build_spec(self.config, self.grid, prefix=extra if layer.side == "prefix" else 0,
                                          suffix=extra if layer.side == "suffix" else 0)
        return self._specs[key]

    def sdpa(self, layer: _Layer, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
             scale=None, enable_gqa=False):
        """Stands in for ``F.scaled_dot_product_attention`` inside a sparse layer."""
        if attn_mask is not None or is_causal or dropout_p or enable_gqa or key.shape != query.shape:
            raise NotImplementedError(
                f"{NAME}: {layer.name} called attention with a mask, causal flag, dropout, GQA or "
                "different key length; sparse attention only replaces plain self-attention "
                f"(use {NAME}.dense_layers or attention=False)")
        spec = self.spec(query.shape[-2], layer)
        out, used = kernels.attention(query, key, value, spec, backend=self.config.backend, scale=scale,
                                       session=self.session)
        layer.density, layer.backend = spec.density(), used
        if query.is_cuda and used != "xformers" and self.config.backend == "auto":
            reason = kernels.xformers_unused_reason(query, spec)
            if reason:
                self.xformers_notes[repr(spec)] = reason
        b, h, n, d = query.shape
        self.macs_dense += 2 * b * h * n * n * d          # QK^T and PV, as FlopCounterMode counts SDPA
        self.macs_kernel += layer.density * 2 * b * h * n * n * d
        layer.sparse_calls += 1
        self.ctx.state.count("attention_sparse_calls")
        return out

    def stats(self) -> dict:
        per_layer, run = [], None
        for layer in self.layers:
            if layer.sparse_calls:
                what = f"{layer.density:.2f} ({layer.backend})"
            elif layer.dense_calls:
                what = "1.00 (dense, original)"
            else:
                what = "not run"
            block = layer.index
            if run and run[2] == what and run[1] + 1 >= block:
                run[1] = block
            else:
                run = [block, block, what]
                per_layer.append(run)
        text = "; ".join(f"{a}-{b}: {w}" if a != b else f"{a}: {w}" for a, b, w in per_layer)
        sparse = sum(l.sparse_calls for l in self.layers)
        dense = sum(l.dense_calls for l in self.layers)
        weighted = sum(l.sparse_calls * (l.density or 1.0) for l in self.layers) + dense
        notes = {"xformers not used": "; ".join(sorted(set(self.xformers_notes.values())))} \
            if self.xformers_notes else {}
        return {
            "token grid": self.last_grid,
            "density per block": text or "no call yet",
            "backends": dict(self.session.calls, dense=dense) if dense else dict(self.session.calls),
            "attention calls sparse/dense": f"{sparse}/{dense}",
            "mean attention density": round(weighted / max(sparse + dense, 1), 4),
            "attention MACs of sparse calls": f"{format_macs(self.macs_kernel)} at mask density "
                                              f"(dense: {format_macs(self.macs_dense)})",
            **notes,
        }


class _SparseSDPA(TorchFunctionMode):
    """Redirects ``scaled_dot_product_attention`` (diffusers' native backend and the
    ``AttnProcessor2_0`` family both end there) to the sparse kernels; all else unchanged."""

    def __init__(self, runtime: _Runtime, layer: _Layer):
        super().__init__()
        self.runtime, self.layer, self.calls = runtime, layer, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls += 1
            return self.runtime.sdpa(self.layer, *args, **kwargs)
        return func(*args, **kwargs)


class _GridHook(TechniqueHook):
    """On the denoiser: the token grid of the call in progress."""

    def __init__(self, runtime: _Runtime):
        super().__init__(runtime.ctx.state)
        self.runtime = runtime

    def before(self, module, args, kwargs):
        rt = self.runtime
        previous, rt.grid = rt.grid, rt.ctx.family.token_grid_of(module, args, kwargs)
        return False, None, args, kwargs, previous

    def after(self, module, output, previous):
        rt = self.runtime
        rt.last_grid, rt.grid = rt.grid, previous
        return output


class _AttnHook(TechniqueHook):
    """On one self-attention module: its own forward, with SDPA swapped when sparse."""

    eager = True    # the swap is a torch-function mode around the forward

    def __init__(self, runtime: _Runtime, layer: _Layer):
        super().__init__(runtime.ctx.state)
        self.runtime, self.layer = runtime, layer

    def run(self, module, forward, args, kwargs):
        rt, layer = self.runtime, self.layer
        if rt.is_dense(layer):
            layer.dense_calls += 1
            rt.ctx.state.count("attention_dense_calls")
            return forward(*args, **kwargs)
        with _SparseSDPA(rt, layer) as mode:
            out = forward(*args, **kwargs)
        if mode.calls == 0:
            raise RuntimeError(
                f"{NAME}: {layer.name} ({type(module.processor).__name__}) did not call "
                "torch's scaled_dot_product_attention (a non-native diffusers attention backend?); "
                "sparse attention cannot apply there")
        return out


# -- apply ------------------------------------------------------------------------------------
def apply(ctx: PatchContext, config: Config) -> PatchHandle:
    family = ctx.family
    if config.pattern == "frame_tile" and family.grid != "3d":
        raise NotApplicable(f"{NAME}.pattern='frame_tile' needs video tokens; {family.name} has an image grid")
    attentions = family.self_attentions(ctx.denoiser)
    if not attentions:
        raise NotApplicable(f"{NAME}: the family table lists no image self-attention for {family.name}")
    n_blocks = len(family.blocks(ctx.denoiser))
    for i in config.dense_layers:
        if not -n_blocks <= i < n_blocks:
            raise ValueError(f"{NAME}.dense_layers: {i} is out of range; this {family.name} transformer has "
                             f"{n_blocks} blocks (allowed {-n_blocks} to {n_blocks - 1})")

    runtime = _Runtime(ctx, config)
    runtime.dense_layers = {i % n_blocks for i in config.dense_layers}
    for index, name, attn, side in attentions:
        layer = _Layer(name, index, side)
        runtime.layers.append(layer)
        ctx.hook(attn, _AttnHook(runtime, layer), HOOK)
    ctx.hook(ctx.denoiser, _GridHook(runtime), HOOK)
    ctx.on_reset(runtime.reset)
    ctx.on_remove(runtime.forget)
    return PatchHandle(NAME, targets=[n for _, n, _, _ in attentions], stats=runtime.stats, details=runtime.details)
