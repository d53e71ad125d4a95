"""Block caching for DiTs: reuse sub-module outputs on a per-step x per-block x per-component schedule.

Each cacheable component of each block (PixArt attn1/attn2/ff, SD3 attn/ff/ff_context, Flux
attn/ff/ff_context and attn/proj_mlp/proj_out, Wan attn1/attn2/ffn; see ``families.py``)
gets a diffusers ``ModelHook``. When the schedule says "reuse", the hook returns the output
the component produced at its last recompute, *without* running it. The block's own code
still applies this step's adaLN gate/shift/scale and the residual add around it, which is
what keeps reuse accurate (ECAD, FORA).

Modes:
- ``schedule``: a :class:`~accelerate_diffusion.schedules.CacheSchedule` (object, JSON dict,
  file, shipped name, or heuristic such as ``"fora:2"``). Fixed schedules made for another
  step count are mapped to it in normalised time (``CacheSchedule.resample``: full ends kept
  over the same span of the noise schedule, each block's density of recomputes kept), with a
  note in the report. ``fallback`` names a heuristic to build instead at the step counts outside
  ``mapped_steps`` (the presets give their learned schedules the range they were measured to
  transfer to, ``learned.served_steps_range``).
- ``forecast`` (either mode): on a reused step, instead of copying the last output, extrapolate
  it in the step index from the last ``forecast + 1`` computed outputs (order 1: linear, order 2:
  quadratic; TaylorSeer-style, by Lagrange extrapolation so unevenly spaced full steps are exact
  for polynomials of that order). Until enough outputs exist it reuses. It keeps ``forecast + 1``
  outputs per component instead of one. ``forecast_check`` (drift check): a forecast that would
  move the output by more than this fraction of the last computed output (mean absolute values)
  is not trusted and the component runs for real instead; 0 turns the check off. The signal is
  per component, block and call, costs one reduction, and catches the extrapolations that
  overshoot (a fast-changing output), where plain reuse would be wrong too.
- ``dynamic``: First-Block-Cache-like. The first block always runs; when its residual
  (output - input) changed less than ``threshold`` (mean abs difference relative to the
  residual at the last full step), every component of the remaining blocks is reused.
  ``threshold=0`` never reuses, so it is exact.

Caches are kept per denoiser call slot (``state.call_in_step``: pipelines that run uncond and
cond as separate calls get one cache each) and keyed on the input shapes: a batch or
resolution change recomputes. If an outer technique (guidance) shrinks a batched
``[uncond, cond]`` call to the cond half, a reused output is sliced to its cond half (the
second half of the batch) rather than recomputed (unless the CFG layout is "separate",
where a batch never holds both halves: then it recomputes). Everything is dropped between generations.
A pipeline with several experts (Wan 2.2) gets one runtime (cache) per expert: an expert never reuses
another's outputs, and its first step is a full compute; the schedule stays indexed by the
generation's step (the noise level), which is what its full first and last steps protect.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..config import TechniqueConfig, check_choice, check_range
from ..schedules import fronts, learned
from ..schedules.cache_schedule import CacheSchedule, ScheduleLayout
from ..schedules.forecast import extrapolate
from ..schedules.heuristics import is_heuristic, resolve_schedule
from . import NotApplicable, PatchContext, PatchHandle, Target, TechniqueHook

NAME = "block_cache"
HOOK = "accelerate_diffusion.block_cache"
PROBE_HOOK = "accelerate_diffusion.block_cache.probe"
MODES = ("schedule", "dynamic")


@dataclass
class Config(TechniqueConfig):
    """``mode``: "schedule" or "dynamic". ``schedule``: CacheSchedule, JSON dict, file path,
    shipped name or heuristic spec ("fora:2", "component:ff,k=6", "tgate:gate=0.5", "full").
    ``schedule_dir``: a searched front (folder, or a shipped front's name); its point is picked by
    ``max_quality_loss`` (the fastest within that loss) or else by the preset's MACs target.
    Dynamic mode: ``threshold`` (relative change of the first block's residual below which the
    other blocks are reused), ``warmup_steps`` (first steps always computed) and ``max_reuse``
    (at most this many consecutive reused steps; 0 = no limit)."""

    NAME = "block_cache"
    mode: str = "schedule"
    schedule: Any = "fora:2"
    threshold: float = 0.1
    warmup_steps: int = 1
    max_reuse: int = 0
    fallback: str = ""                # heuristic used outside mapped_steps instead of mapping a fixed schedule
    mapped_steps: tuple = ()          # (lo, hi): step counts a fixed schedule serves, mapped (no warning, no fallback)
    schedule_dir: str = ""            # a searched front to pick the schedule from
    max_quality_loss: float | None = None
    min_steps: int = 1                # generations with fewer steps run untouched (few-step models)
    forecast: int = 0                 # 0: reuse the last output; 1, 2: extrapolate from the last 2, 3
    forecast_check: float = 0.0       # > 0: recompute where a forecast moves the output more than this (relative)

    def validate(self) -> None:
        check_choice(self.NAME, "mode", self.mode, MODES)
        check_range(self.NAME, "threshold", self.threshold, 0.0, None)
        check_range(self.NAME, "warmup_steps", self.warmup_steps, 1, None, integer=True)
        check_range(self.NAME, "max_reuse", self.max_reuse, 0, None, integer=True)
        check_range(self.NAME, "min_steps", self.min_steps, 1, None, integer=True)
        check_range(self.NAME, "forecast", self.forecast, 0, 2, integer=True)
        check_range(self.NAME, "forecast_check", self.forecast_check, 0.0, None)
        if self.mapped_steps != () and not (
                isinstance(self.mapped_steps, (tuple, list)) and len(self.mapped_steps) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in self.mapped_steps)
                and self.mapped_steps[0] <= self.mapped_steps[1]):
            raise ValueError(f"{self.NAME}.mapped_steps: expected () or (lo, hi) step counts with 1 <= lo <= hi, "
                             f"got {self.mapped_steps!r}")
        if not isinstance(self.fallback, str):
            raise ValueError(f"{self.NAME}.fallback: expected a heuristic name like 'fora:2' or '', "
                             f"got {type(self.fallback).__name__}")
        if not isinstance(self.schedule, (str, dict, CacheSchedule, os.PathLike)):
            raise ValueError(f"{self.NAME}.schedule: expected a CacheSchedule, a dict, a file path or a "
                             f"heuristic name like 'fora:2', got {type(self.schedule).__name__}")
        if not isinstance(self.schedule_dir, (str, os.PathLike)):
            raise ValueError(f"{self.NAME}.schedule_dir: expected a front folder or a shipped front's name, "
                             f"got {type(self.schedule_dir).__name__}")
        if self.max_quality_loss is not None:
            check_range(self.NAME, "max_quality_loss", self.max_quality_loss, 0.0, None)
            if not self.schedule_dir:
                raise ValueError(f"{self.NAME}.max_quality_loss: picks a point of a searched front; set "
                                 f"{self.NAME}.schedule_dir too")

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """For reports: a schedule object or JSON dict is shown by name, not as its whole array."""
        out = {f: getattr(self, f) for f in self.field_names()}
        if isinstance(self.schedule, CacheSchedule):
            out["schedule"] = repr(self.schedule)
        elif isinstance(self.schedule, dict):
            out["schedule"] = f"<schedule {self.schedule.get('name', 'unnamed')!r}>"
        elif isinstance(self.schedule, os.PathLike):
            out["schedule"] = os.fspath(self.schedule)
        return out


def _tensors(args, kwargs):
    for value in list(args) + [kwargs[k] for k in sorted(kwargs)]:
        if isinstance(value, torch.Tensor):
            yield value


def _signature(args, kwargs) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in _tensors(args, kwargs))


def _is_halved(cached: tuple, now: tuple) -> bool:
    """``now`` is ``cached`` with the batch (dim 0 of the main input) halved."""
    if not cached or len(cached) != len(now):
        return False
    (c_shape, c_dtype, _), (n_shape, n_dtype, _) = cached[0], now[0]
    return (len(c_shape) == len(n_shape) and c_shape[1:] == n_shape[1:] and c_dtype == n_dtype
            and n_shape[0] > 0 and c_shape[0] == 2 * n_shape[0])


def _main_tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else next(v for v in value if isinstance(v, torch.Tensor))


def forecast_drift(last, predicted) -> float:
    """How far a forecast moves a component's output: mean |predicted - last| / mean |last|."""
    last, predicted = _main_tensor(last), _main_tensor(predicted)
    return float((predicted - last).abs().mean() / last.abs().mean().clamp_min(1e-12))


def _second_half(value, batch: int):
    """Slice every batch-sized tensor in ``value`` to its second half (the cond rows)."""
    if isinstance(value, torch.Tensor):
        return value[batch // 2:] if value.ndim and value.shape[0] == batch else value
    if isinstance(value, tuple):
        return tuple(_second_half(v, batch) for v in value)
    if isinstance(value, list):
        return [_second_half(v, batch) for v in value]
    return value


class _ComponentHook(TechniqueHook):
    def __init__(self, runtime: "_Runtime", block: int, component: int):
        super().__init__(runtime.state)
        self.runtime, self.block, self.component = runtime, block, component

    def before(self, module, args, kwargs):
        key, signature, cached = self.runtime.lookup(self.block, self.component, args, kwargs)
        if cached is not None:
            return True, cached, args, kwargs, None
        return False, None, args, kwargs, (key, signature)

    def after(self, module, output, token):
        return self.runtime.store(*token, output)


class _ProbeHook(TechniqueHook):
    """On the first block, in dynamic mode: decides whether the other blocks are reused."""

    def __init__(self, runtime: "_Runtime"):
        super().__init__(runtime.state)
        self.runtime = runtime

    def before(self, module, args, kwargs):
        self.runtime._sync()
        hidden_in = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return False, None, args, kwargs, hidden_in

    def after(self, module, output, hidden_in):
        self.runtime.probe(hidden_in, output)
        return output


class _Runtime:
    """Per-pipeline cache state: the schedule for this generation and the cached outputs."""

    def __init__(self, state, config: Config, layout: ScheduleLayout):
        self.state = state
        self.config = config
        self.layout = layout
        self.spec = config.schedule
        self.fixed: CacheSchedule | None = None
        if config.mode == "schedule":
            probe = resolve_schedule(self.spec, layout, 20)   # raises ValueError on a bad or mismatched one
            self.fixed = None if is_heuristic(self.spec) else probe
            if config.fallback:
                if self.fixed is None:
                    raise ValueError(f"block_cache.fallback: only applies to a fixed schedule (object, dict or "
                                     f"file); {self.spec!r} is a heuristic, built for every step count")
                if not is_heuristic(config.fallback):
                    raise ValueError(f"block_cache.fallback: {config.fallback!r} is not a heuristic name "
                                     f"(like 'fora:2,first=3,last=1')")
                resolve_schedule(config.fallback, layout, 20)
        self.by_steps: dict[int, CacheSchedule] = {}
        self.warned: set[int] = set()
        self.schedule: CacheSchedule | None = None
        self.resampled: str = "no"
        self.generation = -1
        self.outputs: dict[tuple, tuple] = {}
        self.dynamic: dict[int, dict] = {}

    # -- generation bookkeeping ---------------------------------------------------------
    def clear(self) -> None:
        self.outputs.clear()
        self.dynamic.clear()

    def _sync(self) -> None:
        """At the first call of a generation: drop caches, pick the schedule for its step count."""
        state = self.state
        if state.generation == self.generation:
            return
        self.generation = state.generation
        self.clear()
        if self.config.mode == "schedule":
            self.schedule = self._schedule_for(max(state.num_steps, 1))

    def _schedule_for(self, num_steps: int) -> CacheSchedule:
        fallback = (self.fixed is not None and self.config.fallback and num_steps != self.fixed.num_steps
                    and not _within(num_steps, self.config.mapped_steps))
        if num_steps not in self.by_steps:
            if self.fixed is None:
                sched = resolve_schedule(self.spec, self.layout, num_steps)
            elif fallback:
                sched = resolve_schedule(self.config.fallback, self.layout, num_steps)
            else:
                sched = self.fixed.resample(num_steps)
            self.by_steps[num_steps] = sched
        sched = self.by_steps[num_steps]
        if fallback:
            served = (f" (mapped to {self.config.mapped_steps[0]}-{self.config.mapped_steps[1]} steps)"
                      if self.config.mapped_steps else "")
            self.resampled = (f"no: {self.fixed.name!r} is for {self.fixed.num_steps} steps{served}; "
                              f"fallback {self.config.fallback!r} at {num_steps}")
        elif self.fixed is not None and sched is not self.fixed:
            self.resampled = f"{self.fixed.num_steps} -> {num_steps} steps (normalised time)"
            if num_steps not in self.warned and not _within(num_steps, self.config.mapped_steps):
                self.warned.add(num_steps)
                warnings.warn(f"accelerate_diffusion: block_cache schedule {self.fixed.name!r} was made for "
                              f"{self.fixed.num_steps} steps; mapped to {num_steps} in normalised time",
                              stacklevel=4)
        else:
            self.resampled = "no"
        return sched

    def _slot(self) -> int:
        return max(self.state.call_in_step - 1, 0)

    # -- decisions ----------------------------------------------------------------------
    def _wants_reuse(self, block: int, component: int, slot: int) -> bool:
        if self.config.mode == "schedule":
            # an expert's first step recomputes: its cache is empty (Wan 2.2's second expert at the switch)
            return self.state.expert_step > 0 and not self.schedule.recompute_at(self.state.step, block, component)
        if block == 0:
            return False
        return self.dynamic.get(slot, {}).get("reuse", False)

    def lookup(self, block: int, component: int, args, kwargs):
        """(key, input signature, output to reuse or None) for this component call."""
        self._sync()
        state, slot = self.state, self._slot()
        key = (slot, block, component)
        signature = _signature(args, kwargs)
        if self._wants_reuse(block, component, slot):
            cached = self.outputs.get(key)
            cached_sig, history = cached if cached is not None else (None, None)
            if cached_sig == signature:
                return key, signature, self._predict(history)
            if _is_halved(cached_sig, signature) and state.cfg_layout != "separate":
                batch = cached_sig[0][0][0]
                return key, signature, self._predict([(s, _second_half(o, batch)) for s, o in history])
            state.count("components_cache_miss")       # reuse planned but nothing valid cached
        return key, signature, None

    def _predict(self, history):
        """The output to use instead of running the component, or None (the drift check refused it)."""
        if self.config.forecast and len(history) > 1:
            predicted = extrapolate(history, self.state.step)
            check = self.config.forecast_check
            if check and forecast_drift(history[-1][1], predicted) > check:   # one host sync, outside any graph
                self.state.count("components_forecast_refused")
                return None
            self.state.count("components_reused")
            self.state.count("components_forecast")
            return predicted
        self.state.count("components_reused")
        return history[-1][1]

    def store(self, key, signature, output):
        """Keep the last ``forecast + 1`` outputs computed with this input signature."""
        cached = self.outputs.get(key)
        history = cached[1] if cached is not None and cached[0] == signature else []
        keep = self.config.forecast + 1
        history = [h for h in history if h[0] != self.state.step]    # a repeated step replaces its entry
        self.outputs[key] = (signature, (history + [(self.state.step, output)])[-keep:])
        self.state.count("components_recomputed")
        return output

    def probe(self, hidden_in, output) -> None:
        """After the first block: decide, from its residual, whether the rest is reused."""
        state, config = self.state, self.config
        hidden_out = output[-1] if isinstance(output, (tuple, list)) else output
        residual = (hidden_out - hidden_in).detach()
        slot = self.dynamic.setdefault(self._slot(), {"prev": None, "run": 0, "reuse": False})
        reuse = False
        prev = slot["prev"]
        if (state.step >= config.warmup_steps and prev is not None
                and (config.max_reuse == 0 or slot["run"] < config.max_reuse)):
            if prev.shape != residual.shape and _is_halved(((tuple(prev.shape), prev.dtype, None),),
                                                           ((tuple(residual.shape), residual.dtype, None),)):
                prev = prev[prev.shape[0] // 2:]
            if prev.shape == residual.shape:
                change = (residual - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12)
                reuse = float(change) < config.threshold      # one host sync per call, outside any graph
        if reuse:
            slot["run"] += 1
            state.count("dynamic_calls_reused")
        else:
            slot["prev"], slot["run"] = residual, 0
        slot["reuse"] = reuse

    def stats(self) -> dict:
        counters = self.state.counters
        run, reused = counters["components_recomputed"], counters["components_reused"]
        out = {"mode": self.config.mode}
        if self.config.mode == "schedule":
            name = self.schedule.name if self.schedule is not None else (
                self.fixed.name if self.fixed is not None else str(self.spec))
            out["schedule"] = name
            if self.schedule is not None:
                out["planned recompute fraction"] = round(self.schedule.recompute_fraction(), 3)
            out["resampled"] = self.resampled
        else:
            out["threshold"] = self.config.threshold
            out["calls with blocks reused"] = counters["dynamic_calls_reused"]
        if self.config.forecast:
            out["forecast"] = f"order {self.config.forecast}: {counters['components_forecast']} reused outputs extrapolated"
            if self.config.forecast_check:
                out["forecast"] += (f"; {counters['components_forecast_refused']} refused by the drift check "
                                    f"(> {self.config.forecast_check:g}) and recomputed")
        out["components recomputed"] = run
        out["components reused"] = reused
        if counters["components_cache_miss"]:
            out["reuse planned but recomputed (shape change or empty cache)"] = counters["components_cache_miss"]
        if run + reused:
            out["reused fraction"] = round(reused / (run + reused), 3)
        return out


def _within(num_steps: int, mapped_steps: tuple) -> bool:
    return bool(mapped_steps) and mapped_steps[0] <= num_steps <= mapped_steps[1]


def prepare(config: Config, target: Target) -> Config:
    """Before anything changes: pick a front point, use this model's learned schedule where one is
    shipped (unless the user chose the schedule), and check the schedule resolves."""
    if isinstance(config.schedule, (str, os.PathLike)) and fronts.is_deepcache(config.schedule):
        raise ValueError(f"{NAME}.schedule: {os.fspath(config.schedule)} is a DeepCache calibration point; "
                         f"pass it as deepcache={{'point': ...}}")
    if config.schedule_dir:
        if fronts.is_deepcache(config.schedule_dir):
            raise ValueError(f"{NAME}.schedule_dir: {config.schedule_dir} is a DeepCache calibration; pass it as "
                             f"deepcache={{'schedule_dir': ...}}")
        point = fronts.pick(config.schedule_dir, config.max_quality_loss, target.preset)
        config = config.replace(mode="schedule", schedule=point)
    elif config.mode == "schedule" and not {"schedule", "mode"} & target.user_fields:
        chosen = learned.preset_schedule(target.denoiser, target.preset)
        if chosen is not None:      # mapped over the step counts it serves; the preset's heuristic elsewhere
            fallback = config.schedule if isinstance(config.schedule, str) else ""
            config = config.replace(schedule=chosen, fallback=fallback,
                                    mapped_steps=learned.served_steps_range(chosen.num_steps))
    if config.mode == "schedule" and target.family.block_groups:
        _Runtime(None, config, ScheduleLayout.of(target.family, target.denoiser))   # raises ValueError
    return config


def apply(ctx: PatchContext, config: Config) -> PatchHandle:
    family = ctx.family
    if not family.block_groups:
        raise NotApplicable(f"the {family.name} family has no transformer blocks in the family table")
    layout = ScheduleLayout.of(family, ctx.denoiser)
    if layout.num_blocks == 0:
        raise NotApplicable(f"{type(ctx.denoiser).__name__} has no blocks to cache")
    runtime = _Runtime(ctx.state, config, layout)
    handle = PatchHandle(NAME, stats=runtime.stats)
    comps = layout.components
    for b, (qualname, block) in enumerate(family.blocks(ctx.denoiser)):
        for c in layout.block_components[b]:
            module = getattr(block, c, None)
            if module is None:           # e.g. SD3's last block has no ff_context
                continue
            ctx.hook(module, _ComponentHook(runtime, b, comps.index(c)), HOOK)
            handle.targets.append(f"{qualname}.{c}")
        if b == 0 and config.mode == "dynamic":
            ctx.hook(block, _ProbeHook(runtime), PROBE_HOOK)
    ctx.on_reset(runtime.clear)
    ctx.on_remove(runtime.clear)
    return handle
