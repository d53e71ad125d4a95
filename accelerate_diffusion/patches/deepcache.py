"""DeepCache: reuse the UNet's deep features on most steps, recompute only a shallow branch.

Adjacent denoising steps change the deep (low-resolution) UNet features very little. On a
*full* step the whole UNet runs and the feature entering the shallow up path from below is
stored; on a *cached* step only ``conv_in``, the shallow down layers, the shallow up layers
(fed with the stored deep feature and the fresh skips) and ``conv_out`` run.

Granularity is **layer level**, as in the original DeepCache. Skip tensors are numbered like
``down_block_res_samples``: 0 is the ``conv_in`` output, then one per down resnet(+attention)
layer and one per downsampler. Branch ``b`` keeps skips ``0..b`` live: the down layers that
produce them and the up layers that consume them (mirrored). Everything else, the mid block
included, is the deep part. For SD-style blocks (2 resnets + downsampler) this numbering is
the ``cache_branch_id`` of the ``DeepCache`` package. Branch -1 keeps no skip live: the whole
body (down, mid and up blocks) is deep and a cached step runs only ``conv_in``, the time
embedding and ``conv_out`` on the stored (or forecast) output of the last up block; with
``forecast`` this is TaylorSeer's whole-UNet prediction, on DeepCache's schedules. A ControlNet's
residuals would then reach no running layer, so (``skip_control``) the pipeline's ControlNet call
before a cached call returns zeros without running (the family row's ``residual_models``).

Mechanism (diffusers hooks only, the UNet forward itself is untouched):
- a controller hook on the UNet decides per call: full or cached;
- every deep module (whole blocks where the block is entirely deep, single layers inside the
  block where the cut falls) gets a hook. On a full step it runs and records its output
  shape; on a cached step it returns zeros of that shape (cheap, no MACs), except the last
  deep module on the up path, which returns the stored deep feature. The UNet forward then
  adds ControlNet/T2I residuals to the fresh shallow skips as usual, and the up block
  concatenates the stored deep feature with the fresh skip itself.

Batch changes inside a generation (the guidance technique may run only the conditional half
of a CFG batch): a cache made on batch 2B with the batched CFG layout is sliced to its second
(conditional) half; any other shape change runs a full step and refreshes the cache.
Separate CFG calls (two denoiser calls per step) keep one cache per call slot.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import TechniqueConfig, check_choice, check_range
from ..schedules import fronts
from ..schedules.forecast import extrapolate
from ..state import calling_pipeline
from . import NotApplicable, PatchContext, PatchHandle, Target, TechniqueHook

NAME = "deepcache"
HOOK = "accelerate_diffusion.deepcache"


@dataclass
class Config(TechniqueConfig):
    """DeepCache settings: which steps run the full UNet and where the shallow branch ends."""

    NAME = "deepcache"
    cache_interval: int = 3            # N: one full step every N (uniform) or n = ceil(T/N) full steps
    cache_branch: int = 0              # last live skip index (0 = conv_in only; -1 = none: the whole
                                       # body is cached); range depends on the UNet
    schedule: str = "uniform"          # "uniform" | "nonuniform" (full steps denser around `center`)
    center: float = 0.3                # non-uniform: where full steps are densest, as a fraction of the steps
    power: float = 1.4                 # non-uniform: initial exponent (lowered by 0.02 until n unique)
    full_steps: tuple | None = None    # explicit full-step indices (replace the schedule)
    always_full_start: int = 1         # the first k steps always run full (step 0 always does)
    always_full_end: int = 0           # the last k steps always run full
    point: str = ""                    # a calibrated point (front-NN.json): its settings replace these
    schedule_dir: str = ""             # a calibration folder: the point is picked from its front
    max_quality_loss: float | None = None   # with schedule_dir: the fastest point within this loss
    min_steps: int = 1                # generations with fewer steps run untouched (few-step models)
    forecast: int = 0                 # 1, 2: cached steps get the deep feature extrapolated in the step
                                      # (linear, quadratic) from the last 2, 3 full steps instead of a copy
    skip_control: bool = True         # branch -1: a cached step skips the ControlNet call too (no layer
                                      # that would take its residuals runs); False runs it anyway

    LOOKUP = ("point", "schedule_dir", "max_quality_loss")   # where settings come from, not settings

    def settings(self) -> dict:
        """The DeepCache settings alone (what a calibration point stores)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.LOOKUP}

    def validate(self) -> None:
        check_range(NAME, "cache_interval", self.cache_interval, 1, 1000, integer=True)
        check_range(NAME, "cache_branch", self.cache_branch, -1, integer=True)
        check_choice(NAME, "schedule", self.schedule, ("uniform", "nonuniform"))
        check_range(NAME, "center", self.center, 0.0, 1.0)
        check_range(NAME, "power", self.power, 1.0, 10.0, lo_open=True)
        check_range(NAME, "always_full_start", self.always_full_start, 0, integer=True)
        check_range(NAME, "always_full_end", self.always_full_end, 0, integer=True)
        check_range(NAME, "forecast", self.forecast, 0, 2, integer=True)
        check_range(NAME, "min_steps", self.min_steps, 1, integer=True)
        if not isinstance(self.skip_control, bool):
            raise ValueError(f"{NAME}.skip_control: expected true or false, got {self.skip_control!r}")
        for name in ("point", "schedule_dir"):
            if not isinstance(getattr(self, name), (str, os.PathLike)):
                raise ValueError(f"{NAME}.{name}: expected a path, got {getattr(self, name)!r}")
        if self.point and self.schedule_dir:
            raise ValueError(f"{NAME}.point / {NAME}.schedule_dir: give one, not both")
        if self.max_quality_loss is not None:
            check_range(NAME, "max_quality_loss", self.max_quality_loss, 0.0, None)
            if not self.schedule_dir:
                raise ValueError(f"{NAME}.max_quality_loss: picks a point of a calibration front; set "
                                 f"{NAME}.schedule_dir too")
        if self.full_steps is not None:
            if not isinstance(self.full_steps, (list, tuple)):
                raise ValueError(f"{NAME}.full_steps: must be a list of step indices or None, "
                                 f"got {self.full_steps!r}")
            for value in self.full_steps:
                check_range(NAME, "full_steps", value, 0, integer=True)
            self.full_steps = tuple(sorted(set(self.full_steps)))


# -- schedule ---------------------------------------------------------------------------

def nonuniform_indices(num_steps: int, n: int, center: float, power: float) -> list[int]:
    """n step indices in [0, T), dense around step ``center * T`` (DeepCache's quadratic-centre
    rule; its default centre, step 15 of 50, is 0.3). Relative, so one setting fits any step count.

    Points ``u = linspace(-c^(1/p), (T-c)^(1/p), n+1)`` are mapped by ``sign(u)|u|^p + c``
    and floored; ``p`` is lowered by 0.02 until the n smallest are unique. (The original code
    raises a negative float to a fractional power, which Python turns complex; the signed
    power is what that expression is meant to compute.)
    """
    T = num_steps
    n = max(1, min(n, T))
    c = min(max(center, 0.0), 1.0) * T
    p = power
    while p > 1.0:
        u = np.linspace(-(c ** (1 / p)), (T - c) ** (1 / p), n + 1)
        idx = np.unique(np.floor(np.sign(u) * np.abs(u) ** p + c + 1e-9).astype(int))
        idx = idx[(idx >= 0) & (idx < T)]
        if len(idx) == n:
            return [int(i) for i in idx]
        p -= 0.02
    return sorted({int(i) for i in np.linspace(0, T - 1, n).round()})


def full_step_indices(config: Config, num_steps: int) -> list[int]:
    """The steps that run the whole UNet in a generation of ``num_steps`` steps."""
    T = num_steps
    if config.full_steps is not None:
        steps = set(config.full_steps)
    elif config.schedule == "uniform":
        steps = set(range(0, T, config.cache_interval))
    else:
        steps = set(nonuniform_indices(T, math.ceil(T / config.cache_interval), config.center,
                                       config.power))
    steps |= set(range(min(config.always_full_start, T)))
    steps |= set(range(max(T - config.always_full_end, 0), T))
    steps.add(0)
    return sorted(s for s in steps if s < T) if T else [0]


# -- the UNet's layer layout ------------------------------------------------------------

@dataclass
class _Layout:
    """Where each skip tensor is made (down) and used (up), for one UNet."""

    down: list[tuple[int, str, list]]   # skip s >= 1 at [s-1]: (down block, name, [(path, module)])
    up: list[tuple[int, int, str, list]]  # up layers in run order: (block, layer, name, [(path, module)])
    up_skip: list[int]                  # skip index each up layer consumes
    num_skips: int
    max_branch: int

    def describe(self) -> str:
        names = ["conv_in"] + [name for _, name, _ in self.down]
        return ", ".join(["-1=none (the whole body)"] + [f"{i}={n}" for i, n in enumerate(names[: self.max_branch + 1])])


def _layout(unet) -> _Layout:
    down, up, up_skip = [], [], []
    for i, block in enumerate(unet.down_blocks):
        resnets = getattr(block, "resnets", None)
        attentions = getattr(block, "attentions", None) or []
        if resnets is None or (attentions and len(attentions) != len(resnets)):
            raise NotApplicable(f"down_blocks.{i} ({type(block).__name__}) has no resnet/attention "
                                f"layer pairs DeepCache can map")
        for k, resnet in enumerate(resnets):
            mods = [(f"down_blocks.{i}.resnets.{k}", resnet)]
            if attentions:
                mods.append((f"down_blocks.{i}.attentions.{k}", attentions[k]))
            down.append((i, mods[-1][0], mods))
        for k, sampler in enumerate(getattr(block, "downsamplers", None) or []):
            name = f"down_blocks.{i}.downsamplers.{k}"
            down.append((i, name, [(name, sampler)]))
    num_skips = 1 + len(down)
    remaining = num_skips
    for j, block in enumerate(unet.up_blocks):
        resnets = getattr(block, "resnets", None)
        attentions = getattr(block, "attentions", None) or []
        if resnets is None or (attentions and len(attentions) != len(resnets)):
            raise NotApplicable(f"up_blocks.{j} ({type(block).__name__}) has no resnet/attention "
                                f"layer pairs DeepCache can map")
        for k, resnet in enumerate(resnets):
            remaining -= 1
            mods = [(f"up_blocks.{j}.resnets.{k}", resnet)]
            if attentions:
                mods.append((f"up_blocks.{j}.attentions.{k}", attentions[k]))
            up.append((j, k, mods[-1][0], mods))
            up_skip.append(remaining)
    if remaining != 0:
        raise NotApplicable(f"the up blocks consume {num_skips - remaining} skip tensors but the "
                            f"down path makes {num_skips}; unknown UNet layout")
    max_branch = num_skips - 1 if unet.mid_block is not None else num_skips - 2
    return _Layout(down, up, up_skip, num_skips, max_branch)


def package_config(unet, cache_interval: int, cache_branch_id: int, **fields) -> "Config":
    """The settings that reproduce the ``DeepCache`` package's ``set_params(cache_interval,
    cache_branch_id)`` (uniform schedule) on this UNet.

    The package numbers branches as ``3 * down block + layer`` (written for SD's three layers
    per down block: two resnets and a downsampler); ours number the skip tensors themselves.
    Its branch (b, l) runs the layers m <= l of the up block mirroring down block b (and the
    down layers feeding them), so the live skips end at the one up layer m = min(l, n - 1)
    consumes, n being that up block's resnets: our branch ``(skips made before block b) +
    min(l, n - 1)``. With three layers per down block (SD 1.x/2.x, SDXL) the numberings agree."""
    layout = _layout(unet)
    block, layer = divmod(cache_branch_id, 3)
    blocks = [b for b, _, _ in layout.down]
    if block >= len(unet.down_blocks):
        raise ValueError(f"{NAME}: package cache_branch_id {cache_branch_id} names down block {block}; this "
                         f"UNet has {len(unet.down_blocks)}")
    before = blocks.index(block) if block in blocks else len(blocks)
    n_up = len(unet.up_blocks[len(unet.up_blocks) - 1 - block].resnets)
    branch = min(before + min(layer, n_up - 1), layout.max_branch)
    return Config(cache_interval=cache_interval, cache_branch=branch, schedule="uniform", **fields)


# -- runtime ----------------------------------------------------------------------------

def _spec(out):
    """Shape (without batch) and type of a module output, to rebuild it as zeros."""
    if isinstance(out, torch.Tensor):
        return ("t", tuple(out.shape[1:]), out.dtype, out.device)
    if isinstance(out, (tuple, list)):       # a list: MultiControlNetModel's summed residuals
        return ("tuple" if isinstance(out, tuple) else "list", tuple(_spec(o) for o in out))
    if dataclasses.is_dataclass(out):   # diffusers BaseOutput, e.g. Transformer2DModelOutput
        return ("obj", type(out), {k: _spec(v) for k, v in out.items()})
    return ("const", out)


def _zeros(spec, batch: int):
    kind = spec[0]
    if kind == "t":
        return torch.zeros((batch, *spec[1]), dtype=spec[2], device=spec[3])
    if kind in ("tuple", "list"):
        parts = [_zeros(s, batch) for s in spec[1]]
        return tuple(parts) if kind == "tuple" else parts
    if kind == "obj":
        return spec[1](**{k: _zeros(s, batch) for k, s in spec[2].items()})
    return spec[1]


def _map(out, fn):
    if isinstance(out, torch.Tensor):
        return fn(out)
    if isinstance(out, tuple):
        return tuple(_map(o, fn) for o in out)
    if dataclasses.is_dataclass(out):
        return type(out)(**{k: _map(v, fn) for k, v in out.items()})
    return out


def _input_key(sample: torch.Tensor) -> tuple:
    """What a cache must have been made on to serve a call (the batch is checked apart)."""
    return tuple(sample.shape[1:]), sample.dtype, sample.device


@dataclass
class _Entry:
    """One cache: made by a full call on inputs of ``key`` with batch ``batch``."""

    key: tuple
    batch: int
    specs: dict = dataclasses.field(default_factory=dict)
    feature: Any = None
    step: int = 0
    history: list = dataclasses.field(default_factory=list)   # (step, feature) of the last full calls
                                                               # on the same inputs, oldest first (forecast)


class _Runtime:
    """Shared by the controller and the deep-module hooks of one pipeline."""

    def __init__(self, ctx: PatchContext, config: Config):
        self.state = ctx.state
        self.config = config
        self.mode: str | None = None      # None (pass through) | "full" | "cached"
        self.batch = 0
        self.entry: _Entry | None = None  # being filled (full) or read (cached)
        self.rows = slice(None)
        self.caches: dict[int, _Entry] = {}
        self._schedule: tuple[int, list[int]] | None = None
        self.reset()

    def reset(self) -> None:
        self.caches = {}
        self.full: set[int] = set()
        self.cached: set[int] = set()
        self.forced = 0
        self.control_skipped: tuple[int, int] | None = None   # (step, call slot) whose ControlNet call was skipped

    def schedule(self) -> list[int]:
        T = self.state.num_steps
        if self._schedule is None or self._schedule[0] != T:
            self._schedule = (T, full_step_indices(self.config, T))
        return self._schedule[1]

    def decide(self, slot: int, sample: torch.Tensor) -> tuple[bool, bool, _Entry | None]:
        """(the schedule wants a full call, slot ``slot``'s cache fits ``sample``, that cache)."""
        state = self.state
        batch = sample.shape[0]
        wants_full = state.num_steps == 0 or state.step in self.schedule()
        entry = self.caches.get(slot)
        usable = entry is not None and entry.key == _input_key(sample) and entry.feature is not None and (
            entry.batch == batch or (entry.batch == 2 * batch and state.cfg_layout == "batched"))
        return wants_full, usable, entry

    def plan_call(self, sample: torch.Tensor) -> None:
        """Full or cached for this denoiser call; pick the cache slot and rows."""
        state = self.state
        slot = state.call_in_step
        batch = sample.shape[0]
        self.batch = batch
        wants_full, usable, entry = self.decide(slot, sample)
        if wants_full or not usable:
            if not wants_full:
                self.forced += 1
            if self.control_skipped == (state.step, slot):
                state.count("deepcache_full_without_control")
            self.mode, self.entry = "full", _Entry(_input_key(sample), batch)
            self.rows = slice(None)
        else:
            self.mode, self.entry = "cached", entry
            self.rows = slice(None) if entry.batch == batch else slice(batch, None)

    def forecast(self):
        """The deep feature for a cached call: the last full call's, or (``forecast`` 1 or 2) the
        polynomial through the last 2 or 3 full calls' features, at this step (TaylorSeer-style)."""
        entry = self.entry
        if len(entry.history) < 2:
            return entry.feature
        self.state.count("deepcache_forecast")
        return extrapolate(entry.history, self.state.step)

    def finish_call(self, slot: int) -> None:
        """After a call that ran to the end (a failed call never reaches here: nothing is cached)."""
        if self.mode == "full":
            before, entry = self.caches.get(slot), self.entry
            entry.step = self.state.step
            if self.config.forecast:
                kept = (before.history[-self.config.forecast:] if before is not None and before.key == entry.key
                        and before.batch == entry.batch and before.step < entry.step else [])
                entry.history = kept + [(entry.step, entry.feature)]
            self.caches[slot] = entry
            self.full.add(self.state.step)
            self.state.count("deepcache_full")
        elif self.mode == "cached":
            self.cached.add(self.state.step)
            self.state.count("deepcache_cached")
        self.mode, self.entry = None, None

    def stats(self) -> dict:
        c = self.config
        if c.full_steps is not None:
            kind = f"explicit full steps {list(c.full_steps)}"
        elif c.schedule == "uniform":
            kind = f"uniform, full every {c.cache_interval}"
        else:
            kind = f"non-uniform 1:{c.cache_interval} (center {c.center}, power {c.power})"
        cached_only = self.cached - self.full
        return {"schedule": f"{kind}, branch {c.cache_branch}",
                "full_steps": len(self.full), "cached_steps": len(cached_only),
                "full_step_indices": sorted(self.full),
                "forced_full_calls": self.forced,
                **({"forecast": f"{self.state.counters['deepcache_forecast']} cached calls got an extrapolated "
                                f"deep feature"} if c.forecast else {}),
                **({"control_calls_skipped": self.state.counters["deepcache_control_skipped"]}
                   if self.state.counters["deepcache_control_skipped"] else {}),
                **({"full_calls_without_control": f"{self.state.counters['deepcache_full_without_control']}: a "
                    f"ControlNet call was skipped, then its denoiser call could not use the cache"}
                   if self.state.counters["deepcache_full_without_control"] else {})}


class _ControllerHook(TechniqueHook):
    """On the UNet: decides full or cached for each call."""

    def __init__(self, runtime: _Runtime):
        super().__init__(runtime.state)
        self.rt = runtime

    def before(self, module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        self.rt.plan_call(sample)
        return False, None, args, kwargs, self.rt.state.call_in_step

    def after(self, module, output, slot):
        self.rt.finish_call(slot)
        return output


class _DeepHook(TechniqueHook):
    """On a deep module: runs and records on full calls; zeros (or the cache) on cached calls."""

    def __init__(self, runtime: _Runtime, name: str, is_cut: bool):
        super().__init__(runtime.state)
        self.rt = runtime
        self.name = name
        self.is_cut = is_cut

    def before(self, module, args, kwargs):
        rt = self.rt
        if rt.mode == "cached":
            if self.is_cut:
                # a copy: FreeU scales the up path's input in place
                return True, _map(rt.forecast(), lambda t: t[rt.rows].clone()), args, kwargs, None
            return True, _zeros(rt.entry.specs[self.name], rt.batch), args, kwargs, None
        return False, None, args, kwargs, None

    def after(self, module, out, token):
        rt = self.rt
        if rt.mode == "full":
            if self.is_cut:
                rt.entry.feature = _map(out, lambda t: t.clone())
            else:
                rt.entry.specs[self.name] = _spec(out)
        return out


class _ControlHook(TechniqueHook):
    """On a ControlNet (branch -1): a call that feeds a cached denoiser call returns zero residuals
    without running, since no layer that would add them runs on that call."""

    def __init__(self, runtime: _Runtime, pipe):
        super().__init__(runtime.state)
        self.rt, self.pipe = runtime, pipe
        self.spec = None

    def _passes(self) -> bool:
        # outside the denoiser call, so ``state.in_call`` does not say whose call this is: the stack does
        return calling_pipeline() is not self.pipe or self.technique in self.state.paused

    def before(self, module, args, kwargs):
        rt, state = self.rt, self.rt.state
        sample = args[0] if args else kwargs.get("sample")
        slot = state.call_in_step + 1          # the denoiser call it feeds: the clock counts calls on entry
        wants_full, usable, _ = rt.decide(slot, sample)
        if wants_full or not usable or self.spec is None:
            return False, None, args, kwargs, None
        rt.control_skipped = (state.step, slot)
        state.count("deepcache_control_skipped")
        return True, _zeros(self.spec, sample.shape[0]), args, kwargs, None

    def after(self, module, out, token):
        self.spec = _spec(out)
        return out


def _deep_modules(unet, layout: _Layout, branch: int) -> list[tuple[str, torch.nn.Module, bool]]:
    """(name, module, is_cut) for every module a cached call skips, whole blocks where possible."""
    b = branch
    out: list[tuple[str, torch.nn.Module, bool]] = []
    # down: skip index s = position + 1
    for i, block in enumerate(unet.down_blocks):
        units = [(s + 1, name, mods) for s, (bi, name, mods) in enumerate(layout.down) if bi == i]
        if units and all(s > b for s, _, _ in units):
            out.append((f"down_blocks.{i}", block, False))
        else:
            for s, name, mods in units:
                if s > b:
                    out += [(m_name, m, False) for m_name, m in mods]
    # the up layer that consumes skip b (for b = -1: conv_norm_out, after the last up block); its
    # input from below is the deep feature
    j_cut, k_cut = layout.up[layout.up_skip.index(b)][:2] if b >= 0 else (len(unet.up_blocks), 0)
    if unet.mid_block is not None:
        out.append(("mid_block", unet.mid_block, k_cut == 0 and j_cut == 0))
    for j, block in enumerate(unet.up_blocks):
        layers = [(n, u) for n, u in enumerate(layout.up) if u[0] == j]
        if all(layout.up_skip[n] > b for n, _ in layers):
            out.append((f"up_blocks.{j}", block, k_cut == 0 and j == j_cut - 1))
        else:
            for n, (_, k, name, mods) in layers:
                if layout.up_skip[n] > b:
                    last = len(mods) - 1
                    out += [(m_name, m, j == j_cut and k == k_cut - 1 and m_i == last)
                            for m_i, (m_name, m) in enumerate(mods)]
    assert sum(is_cut for _, _, is_cut in out) == 1, "DeepCache: exactly one cut module expected"
    return out


def prepare(config: Config, target: Target) -> Config:
    """Before anything changes: a calibrated point (file, or picked from a calibration folder)
    replaces the settings; its file is checked here."""
    if not (config.point or config.schedule_dir):
        return config
    if config.schedule_dir:
        point = fronts.pick_deepcache(config.schedule_dir, config.max_quality_loss, target.preset)
    else:
        path = os.fspath(config.point)
        if not os.path.isfile(path):
            raise ValueError(f"{NAME}.point: file not found: {path}")
        point = fronts.DeepCachePoint.load(path)
    settings = {k: v for k, v in point.config.items() if k not in Config.LOOKUP}
    return Config.from_dict({**settings, "point": os.fspath(point.metrics.get("path", config.point))})


def apply(ctx: PatchContext, config: Config) -> PatchHandle:
    unet = ctx.denoiser
    if not all(hasattr(unet, a) for a in ("conv_in", "down_blocks", "up_blocks", "mid_block")):
        raise NotApplicable(f"{type(unet).__name__} is not a UNet2DConditionModel-style UNet")
    layout = _layout(unet)
    if layout.max_branch < 0:
        raise NotApplicable("this UNet has no deep part to cache")
    if config.cache_branch > layout.max_branch:
        raise ValueError(f"{NAME}.cache_branch: {config.cache_branch} is out of range for this UNet; "
                         f"allowed [-1, {layout.max_branch}] (last live skip: {layout.describe()})")
    runtime = _Runtime(ctx, config)
    ctx.on_reset(runtime.reset)
    ctx.on_remove(runtime.reset)
    deep = _deep_modules(unet, layout, config.cache_branch)
    for name, module, is_cut in deep:
        ctx.hook(module, _DeepHook(runtime, name, is_cut), HOOK)
    ctx.hook(unet, _ControllerHook(runtime), HOOK)
    targets = [name for name, _, _ in deep]
    if config.cache_branch == -1 and config.skip_control:
        for attr in ctx.family.residual_models:
            control = getattr(ctx.pipe, attr, None)
            if isinstance(control, torch.nn.Module):
                ctx.hook(control, _ControlHook(runtime, ctx.pipe), HOOK)
                targets.append(f"pipeline.{attr}")
    return PatchHandle(NAME, targets=targets, stats=runtime.stats)
