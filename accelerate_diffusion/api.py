"""The one call: ``accelerate(pipe, preset="fast", **overrides)``.

It finds the denoiser's family, builds a plan (technique -> validated config) from the
preset plus overrides, applies the patches in the fixed order of
``families.TECHNIQUES``, and attaches a handle at ``pipe.acceleration`` that reports
what ran and removes everything exactly.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

from . import patches
from .eval.macs import format_macs
from .families import TECHNIQUES, Family, family_of, find_denoiser, supported_summary
from .presets import get_preset
from .state import AccelerationState, Clock

logger = logging.getLogger("accelerate_diffusion")

GENERIC = Family(name="generic", classes=(), kind="unknown", denoiser_attr="",
                 techniques=("guidance",), notes="denoiser not in the family table")


def _check_pipeline(pipe) -> tuple[str, Any]:
    from diffusers import DiffusionPipeline

    if not isinstance(pipe, DiffusionPipeline):
        raise TypeError(f"accelerate(): expected a diffusers DiffusionPipeline, got "
                        f"{type(pipe).__name__}")
    found = find_denoiser(pipe)
    if found is None:
        raise ValueError(f"accelerate(): {type(pipe).__name__} has no denoiser (no `unet` or "
                         f"`transformer` module)")
    if getattr(pipe, "scheduler", None) is None:
        raise ValueError(f"accelerate(): {type(pipe).__name__} has no scheduler")
    return found


def build_plan(family: Family, preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """technique -> Config for this family: the preset's settings, then the overrides."""
    available = patches.available()
    unknown = sorted(set(overrides) - set(TECHNIQUES))
    if unknown:
        raise ValueError(f"accelerate(): unknown override(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(TECHNIQUES)}, measure_macs")
    params = get_preset(preset).for_family(family)
    plan: dict[str, Any] = {}
    for name in TECHNIQUES:
        override = overrides.get(name)
        if name in overrides and override in (None, False):
            continue                                   # explicitly disabled
        if override is not None:
            if name not in available:
                raise ValueError(f"{name}: this technique is not available in this version; "
                                 f"available: {', '.join(available) or 'none'}")
            if name not in family.techniques:
                raise ValueError(f"{name}: does not apply to the {family.name} family "
                                 f"({', '.join(family.classes) or 'unknown denoiser'}); "
                                 f"applicable: {', '.join(family.techniques)}")
            config_cls = available[name].Config
            if isinstance(override, config_cls):
                plan[name] = override
            elif isinstance(override, dict):
                plan[name] = config_cls.from_dict({**params.get(name, {}), **override})
            elif override is True:
                plan[name] = config_cls.from_dict(params.get(name, {}))
            else:
                raise ValueError(f"{name}: override must be a {config_cls.__name__}, a dict, "
                                 f"True or False/None, got {type(override).__name__}")
        elif name in params and name in available and name in family.techniques:
            plan[name] = available[name].Config.from_dict(params[name])
    return plan


@dataclass
class Report:
    """What was applied, what was skipped and why, and what the last generation did."""

    pipeline: str
    denoiser: str
    family: str
    preset: str
    applied: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    generation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"pipeline": self.pipeline, "denoiser": self.denoiser, "family": self.family,
                "preset": self.preset, "applied": self.applied, "skipped": self.skipped,
                "generation": self.generation}

    def __str__(self) -> str:
        lines = [f"accelerate-diffusion: {self.pipeline} ({self.denoiser}, family {self.family}), "
                 f"preset {self.preset!r}"]
        if not self.applied:
            lines.append("  applied: nothing (outputs identical to the original pipeline)")
        for item in self.applied:
            lines.append(f"  applied {item['technique']}: {item['config']}")
            if item["targets"]:
                lines.append(f"    on {len(item['targets'])} module(s): {', '.join(item['targets'][:6])}"
                             + (" ..." if len(item["targets"]) > 6 else ""))
            for key, value in item.get("stats", {}).items():
                lines.append(f"    {key}: {value}")
        for item in self.skipped:
            lines.append(f"  skipped {item['technique']}: {item['reason']}")
        gen = self.generation
        if gen.get("generations", 0) == 0:
            lines.append("  no generation run yet")
        else:
            counters = ", ".join(f"{k} {v}" for k, v in sorted(gen["counters"].items()))
            lines.append(f"  last generation: {gen['steps']} steps, {counters}")
            if gen.get("macs") is not None:
                ratio = ""
                if gen.get("baseline_macs"):
                    ratio = (f" vs baseline {format_macs(gen['baseline_macs'])} "
                             f"({gen['baseline_macs'] / max(gen['macs'], 1):.2f}x fewer)")
                lines.append(f"  denoiser MACs executed: {format_macs(gen['macs'])}{ratio}")
            else:
                lines.append("  denoiser MACs: not counted (accelerate(..., measure_macs=True) "
                             "or `accelerate-diffusion bench` counts them)")
        return "\n".join(lines)


class Acceleration:
    """The handle at ``pipe.acceleration``: ``report()``, ``remove()``, context manager."""

    def __init__(self, pipe, preset: str, family: Family, denoiser_attr: str, denoiser,
                 plan: dict[str, Any], measure_macs: bool):
        self.pipe = pipe
        self.preset = preset
        self.family = family
        self.denoiser = denoiser
        self.plan = plan
        self.state = AccelerationState(measure_macs=measure_macs)
        self.clock = Clock(pipe, denoiser, self.state)
        self.handles: list[patches.PatchHandle] = []
        self.skipped: list[dict] = []
        self.baseline_macs: int | None = None   # set by benchmarks that ran the baseline
        self._ctx = patches.PatchContext(pipe, denoiser, denoiser_attr, family, self.state)
        self._active = False

    def _apply(self) -> None:
        self.clock.install()
        try:
            modules = patches.available()
            # TECHNIQUES lists techniques outermost first; apply innermost first so that each
            # later (outer) hook wraps the earlier ones on a shared module.
            for name, config in reversed(list(self.plan.items())):
                try:
                    handle = modules[name].apply(self._ctx, config)
                except patches.NotApplicable as exc:
                    self.skipped.append({"technique": name, "reason": str(exc)})
                    warnings.warn(f"accelerate_diffusion: {name} not applied: {exc}", stacklevel=3)
                    continue
                self.handles.append(handle)
            self.clock.hook_denoiser()   # last, so it is the outermost hook
        except BaseException:
            self._undo()
            raise
        self._active = True

    def _undo(self) -> None:
        self.clock.unhook_denoiser()
        while self.handles:
            self.handles.pop().remove()
        self.clock.uninstall()
        _drop_empty_registry(self.denoiser)

    def remove(self) -> None:
        """Restore the original pipeline exactly; the handle is detached from it."""
        if not self._active:
            return
        self._undo()
        self._active = False
        if getattr(self.pipe, "acceleration", None) is self:
            del self.pipe.acceleration

    @property
    def active(self) -> bool:
        return self._active

    def report(self) -> Report:
        state = self.state
        applied = [{"technique": h.technique, "config": self.plan[h.technique].to_dict(),
                    "targets": h.targets, "stats": h.statistics()} for h in self.handles]
        generation = {"generations": state.generation, "steps": state.step,
                      "num_steps": state.num_steps, "cfg_layout": state.cfg_layout,
                      "counters": dict(state.counters), "macs": state.macs,
                      "baseline_macs": self.baseline_macs}
        return Report(type(self.pipe).__name__, type(self.denoiser).__name__, self.family.name,
                      self.preset, applied, list(self.skipped), generation)

    def __enter__(self):
        return self.pipe

    def __exit__(self, *exc):
        self.remove()
        return False

    def __repr__(self) -> str:
        techniques = ", ".join(h.technique for h in self.handles) or "nothing"
        return f"<Acceleration preset={self.preset!r} family={self.family.name} applied: {techniques}>"


def _drop_empty_registry(module) -> None:
    """Leave no trace of diffusers' hook registry when no hook is left on the module."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and not registry.hooks:
        del module._diffusers_hook
        if "forward" in vars(module):
            del module.forward


def _use_learned_schedule(plan: dict, denoiser, preset: str, overrides: dict) -> None:
    """Swap the preset's heuristic block-cache schedule for the one learned on this model, when
    one is shipped (schedules/learned.py) and the user did not choose a schedule or mode."""
    config, user = plan.get("block_cache"), overrides.get("block_cache")
    if config is None or config.mode != "schedule":
        return
    if not (user is None or user is True or (isinstance(user, dict) and not {"schedule", "mode"} & user.keys())):
        return
    from .schedules.learned import preset_schedule

    learned = preset_schedule(denoiser, preset)
    if learned is not None:     # at other step counts the preset's heuristic runs (no resampling)
        fallback = config.schedule if isinstance(config.schedule, str) else ""
        plan["block_cache"] = config.replace(schedule=learned, fallback=fallback)


def accelerate(pipe, preset: str = "balanced", *, measure_macs: bool = False, schedule=None,
               schedule_dir=None, max_quality_loss: float | None = None, **overrides):
    """Patch ``pipe`` in place and return it, with a handle at ``pipe.acceleration``.

    ``preset`` is one of ``off, quality, balanced, fast, max``. ``overrides`` maps a
    technique name to a config object, a dict of fields (merged onto the preset's), True
    (the preset's or default settings) or False/None (disabled). ``measure_macs`` counts
    the denoiser's MACs each generation (slower; for reports and benchmarks).
    ``schedule`` (a block-cache schedule file or object) or ``schedule_dir`` (a searched
    Pareto front; ``max_quality_loss`` or the preset picks the point) set block_cache's schedule.
    """
    if schedule is not None or schedule_dir is not None or max_quality_loss is not None:
        from .schedules.search import schedule_override   # docs: schedules/search.py

        overrides = schedule_override(overrides, preset, schedule, schedule_dir, max_quality_loss)
    denoiser_attr, denoiser = _check_pipeline(pipe)
    get_preset(preset)
    family = family_of(denoiser)
    if family is None:
        family = GENERIC
        warnings.warn(
            f"accelerate_diffusion: {type(denoiser).__name__} is not in the model-family table; "
            f"only {', '.join(GENERIC.techniques)} can apply to it.\n{supported_summary()}",
            stacklevel=2)
    plan = build_plan(family, preset, overrides)
    _use_learned_schedule(plan, denoiser, preset, overrides)
    existing = getattr(pipe, "acceleration", None)
    if isinstance(existing, Acceleration):
        logger.warning("accelerate_diffusion: pipeline was already accelerated (preset %r); "
                       "removing that before applying %r", existing.preset, preset)
        existing.remove()
    handle = Acceleration(pipe, preset, family, denoiser_attr, denoiser, plan, measure_macs)
    if preset != "off" and not plan:
        warnings.warn(
            f"accelerate_diffusion: preset {preset!r} has no technique available for the "
            f"{family.name} family in this version; the pipeline runs unaccelerated.",
            stacklevel=2)
    handle._apply()
    pipe.acceleration = handle
    return pipe


@contextlib.contextmanager
def accelerated(pipe, preset: str = "balanced", **overrides):
    """``with accelerated(pipe, "fast"): pipe(...)``: accelerated inside, original after."""
    accelerate(pipe, preset, **overrides)
    try:
        yield pipe
    finally:
        pipe.acceleration.remove()
