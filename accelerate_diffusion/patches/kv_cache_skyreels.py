"""TempCache adapter for SkyReels-V2 diffusion forcing (dispatched from ``kv_cache.apply``).

``SkyReelsV2DiffusionForcingPipeline`` denoises a video window with a per-frame timestep
matrix: with ``ar_step > 0`` each causal block of ``causal_block_size`` frames lags the one
before it, and every step the transformer runs the whole window again, finished frames
(timestep 0, latents final) and not-yet-started frames (pure noise, not updated) included.
With ``causal_block_size > 1`` attention is block-causal, so a finished frame's keys and
values never change: they are history, re-attended at every step.

This adapter gives that history the TempCache of ``kernels/kv.py``: per call, only the
frames the scheduler updates run through the transformer (``encode="incremental"``);
finished frames enter the cache once (merged by ANN above ``merge_threshold``, with the
``log(count)`` bias, evicted to ``budget_frames``), trailing frames that are not updated
this step are skipped (their output is unused and, causally, they affect no other frame).
The pass layout comes from the pipeline's own ``generate_timestep_matrix``, wrapped on the
instance; a call that does not match it runs unchanged. A finished frame's input is checked
against the one committed: if it changed (``addnoise_condition > 0`` re-noises the prefix
each step, or a callback edited latents) the cache is rebuilt, exactly.

With nothing merged or evicted the output equals the pipeline's (same computation on fewer
tokens; last-bit differences from the shorter matmuls). ``encode="pipeline"`` (every frame
re-run, the original processors) and AnnCA/AnnSA are FAR-only: they raise here.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kernels import kv
from . import NotApplicable, PatchContext, PatchHandle, TechniqueHook

CLASSES = ("SkyReelsV2Transformer3DModel",)
HOOK = "accelerate_diffusion.kv_cache.skyreels"


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """SkyReels' rotary embedding on [B, L, H, D] (interleaved pairs)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(x)


@dataclass
class _Plan:
    """The pipeline's timestep matrix for one window (one long-video iteration)."""

    matrix: torch.Tensor       # [passes, frames] timestep per frame
    index: torch.Tensor        # [passes, frames] schedule index; ``done`` = finished
    update: torch.Tensor       # [passes, frames] frames the scheduler steps
    interval: list             # per pass (start, end) frames given to the transformer
    done: int


class _Window:
    """One CFG branch's cache: per-layer slots of the first ``frames`` frames, and their inputs."""

    def __init__(self):
        self.slots: dict[int, kv.Slots] = {}
        self.frames = 0
        self.inputs = None         # latents [B, C, frames, H, W] committed (checked before reuse)
        self.timesteps = None      # [B, frames]

    def reusable(self, x: torch.Tensor, t: torch.Tensor, finished: int) -> bool:
        n = self.frames
        return (n <= finished and self.inputs.shape[0] == x.shape[0]
                and torch.equal(self.inputs, x[:, :, :n]) and torch.equal(self.timesteps, t[:, :n]))

    def commit_inputs(self, x: torch.Tensor, t: torch.Tensor, upto: int) -> None:
        n = self.frames
        new_x, new_t = x[:, :, n:upto].clone(), t[:, n:upto].clone()
        self.inputs = new_x if self.inputs is None else torch.cat([self.inputs, new_x], 2)
        self.timesteps = new_t if self.timesteps is None else torch.cat([self.timesteps, new_t], 1)
        self.frames = upto


@dataclass
class _Run:
    """What the processors need during one transformer call."""

    window: _Window
    offset: int                # first frame computed (= frames reused from the cache)
    commit: int                # frames after ``offset`` that are finished and enter the cache
    rotary: tuple | None       # (cos, sin) of the computed frames at their window positions
    tpf: int                   # tokens per frame
    finished: int = 0          # finished frames at the start of the window
    pipeline: bool = False     # encode="pipeline": every frame runs; the cache is rebuilt per call


class _Controller:
    def __init__(self, config, transformer, pipe, state=None):
        self.config = config
        self.transformer = transformer
        self.pipe = pipe
        self.state = state
        self.plan: _Plan | None = None
        self.calls = 0
        self.windows: dict[int, _Window] = {}
        self.run: _Run | None = None
        self.tpf = 0
        self.rows: dict[int, dict] = {}          # finished frames -> cache row after that commit
        self.counters: dict[str, int] = {}
        self.warned: set[str] = set()

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def warn(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            warnings.warn(f"accelerate_diffusion kv_cache: {message}", stacklevel=3)

    @property
    def budget(self) -> int:
        return int(round(self.config.budget_frames * self.tpf))

    def reset(self) -> None:
        """A new generation: statistics and caches start over."""
        self.new_window(None)
        self.rows = {}
        self.counters = {}
        self.warned = set()

    def new_window(self, plan: _Plan | None) -> None:
        self.plan = plan
        self.calls = 0
        self.windows = {}

    def record(self, finished: int, layer: int, merges: int, evictions: int, window: _Window) -> None:
        row = self.rows.setdefault(finished, {"frames": finished, "cache_tokens": {}, "cache_bytes": 0,
                                              "merges": 0, "evictions": 0})
        row["merges"] += merges
        row["evictions"] += evictions
        if window is self.windows.get(0):
            row["cache_tokens"][layer] = len(window.slots[layer])
            row["cache_bytes"] = sum(s.nbytes for s in window.slots.values())

    def details(self) -> dict:
        """Per commit (finished frame count), the cache row; tokens per frame; per window, the
        frames committed and the slots held per layer; the counters."""
        return {"rows": {k: dict(v) for k, v in self.rows.items()}, "tokens_per_frame": self.tpf,
                "windows": {i: {"frames": w.frames, "slots_per_layer": {layer: len(s) for layer, s in w.slots.items()}}
                            for i, w in self.windows.items()},
                "counters": dict(self.counters)}

    def stats(self) -> dict:
        rows = [self.rows[k] for k in sorted(self.rows)]
        out = {**self.counters, "encode": self.config.encode, "commits": len(rows),
               "budget tokens per layer": self.budget or "unlimited"}
        if rows:
            out.update({
                "cache tokens per layer (last commit)": sorted(set(rows[-1]["cache_tokens"].values())),
                "merges per commit": [r["merges"] for r in rows],
                "evictions per commit": [r["evictions"] for r in rows],
                "cache MiB (last commit)": round(rows[-1]["cache_bytes"] / 2 ** 20, 3),
            })
        return out

    # -- one transformer call ------------------------------------------------------------
    def prepare(self, module, kwargs) -> tuple[_Window, int, int, int] | None:
        """(cache, offset, finished, end) frames for this call, or None to run it unchanged."""
        x, t = kwargs.get("hidden_states"), kwargs.get("timestep")
        if self.plan is None or x is None or t is None or not kwargs.get("enable_diffusion_forcing") or t.dim() != 2:
            self.count("calls_unchanged")
            return None
        block = module.config.num_frame_per_block
        if block <= 1:
            self.warn("bidirectional", "SkyReels-V2 with causal_block_size <= 1 attends bidirectionally: "
                      "finished frames depend on later ones, so there is no history to cache (pass "
                      "causal_block_size > 1 with ar_step > 0); running unchanged.")
            self.count("calls_bidirectional")
            return None
        plan = self.plan
        per_pass = 2 if getattr(self.pipe, "do_classifier_free_guidance", False) else 1
        i, branch = divmod(self.calls, per_pass)
        self.calls += 1
        n = x.shape[2]
        if i >= len(plan.interval) or plan.interval[i][1] - plan.interval[i][0] != n:
            return self._mismatch()
        start, end = plan.interval[i]
        finished = plan.index[i, start:end] == plan.done
        expected = plan.matrix[i, start:end].to(t.device, t.dtype)
        if not torch.equal(t[:, ~finished.to(t.device)], expected[~finished].expand(t.shape[0], -1)):
            return self._mismatch()
        p = self.transformer.config.patch_size
        self.tpf = (x.shape[3] // p[1]) * (x.shape[4] // p[2])
        n_finished = int(finished.int().cumprod(0).sum())
        n_finished -= n_finished % block
        updated = plan.update[i, start:end].nonzero()
        last = int(updated.max()) + 1 if len(updated) else 0
        stop = min(-(-max(last, n_finished) // block) * block, n)
        window = self.windows.setdefault(branch, _Window())
        if self.config.encode == "incremental" and window.frames and not window.reusable(x, t, n_finished):
            self.count("cache_rebuilds")
            self.warn("rebuild", "finished frames changed between steps (addnoise_condition > 0 re-noises them "
                      "every step, or a callback edited latents): the cache is rebuilt from them; with "
                      "addnoise_condition > 0 that happens every step and nothing is saved.")
            window = self.windows[branch] = _Window()
        return window, window.frames, n_finished, stop

    def _mismatch(self):
        self.warn("mismatch", "a transformer call did not match the pipeline's timestep matrix; "
                  "the rest of this window runs unchanged.")
        self.plan = None
        self.count("calls_unchanged")
        return None


class _Forward:
    """Transformer hook: run only the frames that need it, attend the rest through the cache."""

    def __init__(self, ctrl: _Controller):
        self.ctrl = ctrl

    def __call__(self, original, module, args, kwargs):
        ctrl = self.ctrl
        span = None if args else ctrl.prepare(module, kwargs)
        if span is None:
            return original(*args, **kwargs)
        window, offset, finished, stop = span
        x, t = kwargs["hidden_states"], kwargs["timestep"]
        if ctrl.config.encode == "pipeline":    # the pipeline's own computation; attn1 swaps the history
            ctrl.run = _Run(window, 0, 0, None, ctrl.tpf, finished, pipeline=True)
            try:
                return original(*args, **kwargs)
            finally:
                ctrl.run = None
        b, _, n, h, w = x.shape
        ctrl.count("frames_computed", max(stop - offset, 0))
        ctrl.count("frames_reused", offset)
        ctrl.count("frames_skipped", n - max(stop, offset))
        if stop <= offset:                      # nothing this call updates: no output is used
            full = x.new_zeros(b, module.config.out_channels, n, h, w)
        else:
            cos, sin = module.rope(x)
            rows = slice(offset * ctrl.tpf, stop * ctrl.tpf)
            ctrl.run = _Run(window, offset, finished - offset, (cos[:, rows], sin[:, rows]), ctrl.tpf)
            try:
                out = original(**{**kwargs, "hidden_states": x[:, :, offset:stop], "timestep": t[:, offset:stop]})
            finally:
                ctrl.run = None
            sample = out[0] if isinstance(out, tuple) else out.sample
            full = sample.new_zeros(b, sample.shape[1], n, h, w)
            full[:, :, offset:stop] = sample
        if finished > window.frames:
            window.commit_inputs(x, t, finished)
        if kwargs.get("return_dict", True):
            from diffusers.models.modeling_outputs import Transformer2DModelOutput
            return Transformer2DModelOutput(sample=full)
        return (full,)


class TempCacheProcessor:
    """Self-attention of the computed frames over [cached slots (log-count bias), these frames]."""

    def __init__(self, original, ctrl: _Controller, layer: int):
        self.original = original
        self.ctrl = ctrl
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 **kwargs):
        run = self.ctrl.run
        args = (encoder_hidden_states, attention_mask, rotary_emb)
        if run is None or encoder_hidden_states is not None or not self.ctrl.state.in_call:
            return self.original(attn, hidden_states, *args, **kwargs)
        if run.pipeline:
            return self._pipeline(attn, hidden_states, args, kwargs, run)
        if run.offset == 0 and run.commit == 0:          # no history yet: the frames run as they are
            return self.original(attn, hidden_states, *args, **kwargs)
        q, k, v = _project(attn, hidden_states, run.rotary)
        window = run.window
        slots = window.slots.get(self.layer)
        if slots is None:
            slots = kv.Slots.empty(k)
        keys, values = torch.cat([slots.k, k], 2), torch.cat([slots.v, v], 2)
        mask = torch.cat([slots.bias().to(q.dtype).expand(q.shape[2], -1), _local_mask(attention_mask, q)], 1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[None, None])
        if run.commit:
            self._commit(window, slots, q, k, v, keys)
        return _out(attn, out, q)

    def _pipeline(self, attn, hidden_states, args, kwargs, run: _Run):
        """encode="pipeline": rebuild the TempCache from this call's finished-frame keys; the
        other frames attend to it. With nothing merged or evicted the original processor runs."""
        if run.finished == 0:
            return self.original(attn, hidden_states, *args, **kwargs)
        ctrl, cfg = self.ctrl, self.ctrl.config
        q, k, v = _project(attn, hidden_states, args[2])
        n = run.finished * run.tpf
        slots, merges = cfg.insert_frames(kv.Slots.empty(k), k, v,
                                          [(f, f * run.tpf, run.tpf) for f in range(run.finished)])
        evicted = 0
        if ctrl.budget and len(slots) > ctrl.budget:
            if cfg.evict == "attention":
                slots.mass = kv.attention_mass(q[:, :, n:], slots.k, slots.bias(), len(slots), cfg.mass_samples)
            slots, evicted = kv.evict(slots, ctrl.budget, cfg.evict)
        if run.window.frames != run.finished:           # statistics once per new set of finished frames
            run.window.slots[self.layer] = slots
            ctrl.record(run.finished, self.layer, merges, evicted, run.window)
            if self.layer == len(ctrl.transformer.blocks) - 1:
                run.window.frames = run.finished
        if not (merges or evicted):
            return self.original(attn, hidden_states, *args, **kwargs)
        local = _local_mask(args[1], q)
        done = F.scaled_dot_product_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n],
                                              attn_mask=local[None, None, :n, :n])
        mask = torch.cat([slots.bias().to(q.dtype).expand(q.shape[2] - n, -1), local[n:, n:]], 1)
        rest = F.scaled_dot_product_attention(q[:, :, n:], torch.cat([slots.k, k[:, :, n:]], 2),
                                              torch.cat([slots.v, v[:, :, n:]], 2), attn_mask=mask[None, None])
        return _out(attn, torch.cat([done, rest], 2), q)

    def _commit(self, window: _Window, slots: kv.Slots, q, k, v, keys) -> None:
        """The finished frames at the start of this call enter the cache (merge, then evict)."""
        ctrl, cfg, tpf = self.ctrl, self.ctrl.config, self.ctrl.run.tpf
        first, n_new = ctrl.run.offset, ctrl.run.commit * tpf
        if q.shape[2] > n_new:              # queries other than the committed frames attend now
            cfg.add_mass(slots, q[:, :, n_new:], keys, torch.cat([slots.bias(), slots.count.new_zeros(k.shape[2])]))
        slots, merges = cfg.insert_frames(slots, k, v, [(first + f, f * tpf, tpf) for f in range(ctrl.run.commit)])
        slots, evicted = kv.evict(slots, ctrl.budget, cfg.evict, protect_from=first)
        window.slots[self.layer] = slots
        ctrl.record(first + ctrl.run.commit, self.layer, merges, evicted, window)


def _project(attn, hidden_states, rotary):
    """q, k, v in [B, H, L, D] as SkyReels' processor computes them (rotary applied to q, k)."""
    from diffusers.models.transformers.transformer_skyreels_v2 import _get_qkv_projections

    q, k, v = _get_qkv_projections(attn, hidden_states, None)
    q, k = attn.norm_q(q), attn.norm_k(k)
    q, k, v = (s.unflatten(2, (attn.heads, -1)) for s in (q, k, v))
    q, k = _rope(q, *rotary), _rope(k, *rotary)
    return tuple(s.transpose(1, 2) for s in (q, k, v))


def _local_mask(attention_mask, q) -> torch.Tensor:
    """The block-causal boolean mask of these frames as an additive [L, L] mask."""
    lq = q.shape[2]
    local = torch.zeros(lq, lq, dtype=q.dtype, device=q.device)
    if attention_mask is not None:
        local = local.masked_fill(~attention_mask.reshape(lq, lq), -float("inf"))
    return local


def _out(attn, out, q):
    out = out.transpose(1, 2).flatten(2, 3).type_as(q)
    return attn.to_out[1](attn.to_out[0](out))


def _wrap_plan(pipe, ctrl: _Controller):
    """Instance replacement for ``generate_timestep_matrix`` that records the plan it returns."""
    original = pipe.generate_timestep_matrix
    signature = inspect.signature(original)

    def generate_timestep_matrix(*args, **kwargs):
        out = original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        step_matrix, step_index, update_mask, interval = out
        ctrl.new_window(_Plan(step_matrix, step_index, update_mask, list(interval),
                              len(bound.arguments["step_template"]) + 1))
        return out

    return generate_timestep_matrix


class _Hook(TechniqueHook):
    eager = True      # re-runs the history frames around the forward: not one traced call

    def __init__(self, ctrl: _Controller):
        super().__init__(ctrl.state)
        self.forward_fn = _Forward(ctrl)

    def run(self, module, forward, args, kwargs):
        return self.forward_fn(forward, module, args, kwargs)


def apply(ctx: PatchContext, config) -> PatchHandle:
    pipe = ctx.pipe
    if not callable(getattr(pipe, "generate_timestep_matrix", None)):
        raise NotApplicable(f"{type(pipe).__name__} is not a SkyReels-V2 diffusion-forcing pipeline "
                            f"(no generate_timestep_matrix): no finished frames to cache")
    for field, why in (("cross_topk", "AnnCA"), ("self_topk", "AnnSA")):
        if getattr(config, field):
            raise ValueError(f"kv_cache.{field}: {why} is implemented for AnyFlow-FAR only; allowed on "
                             f"SkyReels-V2: 0")
    if config.encode == "compressed":
        raise ValueError("kv_cache.encode: 'compressed' is AnyFlow-FAR's compressed history; allowed on "
                         "SkyReels-V2: incremental, pipeline")
    denoiser = ctx.denoiser
    for i, block in enumerate(denoiser.blocks):
        if isinstance(block.attn1.processor, TempCacheProcessor):
            raise NotApplicable(f"blocks.{i}.attn1 already runs a TempCache (another pipeline sharing this "
                                f"transformer is accelerated with kv_cache)")
    ctrl = _Controller(config, denoiser, pipe, ctx.state)
    handle = PatchHandle("kv_cache", stats=ctrl.stats, details=ctrl.details)
    ctx.hook(denoiser, _Hook(ctrl), HOOK)
    for i, block in enumerate(denoiser.blocks):
        ctx.set_processor(block.attn1, TempCacheProcessor(block.attn1.processor, ctrl, i))
        handle.targets.append(f"blocks.{i}.attn1")
    ctx.set_attr(pipe, "generate_timestep_matrix", _wrap_plan(pipe, ctrl))
    handle.targets.append("pipeline.generate_timestep_matrix")
    ctx.on_reset(ctrl.reset)
    ctx.on_remove(ctrl.reset)
    return handle
