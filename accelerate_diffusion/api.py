"""The one call: ``accelerate(pipe, preset="fast", **overrides)``.

It finds the denoiser's family, builds a plan (technique -> validated, prepared config) from
the preset plus overrides without touching the pipeline, then installs it: the techniques in
the fixed order of ``families.TECHNIQUES``, every change recorded in one journal. A handle at
``pipe.acceleration`` reports what ran and removes everything exactly. Installing is a
transaction: if anything fails, the pipeline is left as it was, previous acceleration included.

``apply_deepcache(pipe, DeepCacheConfig(...))`` and its siblings add one technique to the
pipeline's current acceleration through the same machinery.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

from . import patches
from .families import TECHNIQUES, Family, family_of, find_denoiser, find_denoisers, supported_summary
from .journal import Journal, invalidate_hook_caches
from .macs import format_macs
from .presets import get_preset
from .state import AccelerationState, Clock, pipeline_classes

logger = logging.getLogger("accelerate_diffusion")

GENERIC = Family(name="generic", classes=(), kind="unknown", denoiser_attr="", cfg="",
                 techniques=("guidance",), notes="denoiser not in the family table")


def _check_pipeline(pipe) -> tuple[str, Any]:
    if not isinstance(pipe, pipeline_classes()):
        raise TypeError(f"accelerate(): expected a diffusers DiffusionPipeline or ModularPipeline, got "
                        f"{type(pipe).__name__}")
    found = find_denoiser(pipe)
    if found is None:
        raise ValueError(f"accelerate(): {type(pipe).__name__} has no denoiser (no `unet` or "
                         f"`transformer` module)")
    if getattr(pipe, "scheduler", None) is None:
        raise ValueError(f"accelerate(): {type(pipe).__name__} has no scheduler")
    return found


def build_plan(family: Family, denoiser, preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """technique -> Config for this family: the preset's settings, then the overrides, each
    prepared (front points picked, learned schedules found, files read). Changes nothing."""
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
        user_fields: frozenset = frozenset()
        if override is not None:
            if name not in available:
                raise ValueError(f"{name}: this technique is not available in this version; "
                                 f"available: {', '.join(available) or 'none'}")
            if name not in family.techniques:
                why = family.reason_not(name)
                raise ValueError(f"{name}: does not apply to the {family.name} family "
                                 f"({', '.join(family.classes) or 'unknown denoiser'})"
                                 + (f": {why}" if why else "") + f"; applicable: {', '.join(family.techniques)}")
            config_cls = available[name].Config
            if isinstance(override, config_cls):
                config, user_fields = override, frozenset(config_cls.field_names())
            elif isinstance(override, dict):
                config = config_cls.from_dict({**params.get(name, {}), **override})
                user_fields = frozenset(override)
            elif override is True:
                config = config_cls.from_dict(params.get(name, {}))
            else:
                raise ValueError(f"{name}: override must be a {config_cls.__name__}, a dict, "
                                 f"True or False/None, got {type(override).__name__}")
        elif name in params and name in available and name in family.techniques:
            config = available[name].Config.from_dict(params[name])
        else:
            continue
        prepare = getattr(available[name], "prepare", None)
        if prepare is not None:
            config = prepare(config, patches.Target(denoiser, family, preset, user_fields))
        plan[name] = config
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
    calibration: dict | None = None

    def to_dict(self) -> dict:
        return {"pipeline": self.pipeline, "denoiser": self.denoiser, "family": self.family,
                "preset": self.preset, "applied": self.applied, "skipped": self.skipped,
                "generation": self.generation, "calibration": self.calibration}

    def __str__(self) -> str:
        lines = [f"accelerate-diffusion: {self.pipeline} ({self.denoiser}, family {self.family}), "
                 f"preset {self.preset!r}"]
        cal = self.calibration
        if cal is not None:
            picked = (f"rung {cal['rung'] + 1} of {cal['of']}" if cal["rung"] >= 0
                      else "no rung met it: no acceleration")
            measured = "" if cal["rung"] < 0 else f", measured {cal['measured']:.3f} on the calibration prompts"
            verified = "" if cal["verified"] is None else f", {cal['verified']:.3f} on a held-out seed"
            lines.append(f"  auto: target {cal['target']}: {picked}{measured}{verified}; "
                         f"{cal['generations_run']} generation(s) run; stored in {cal['stored']}")
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
            for technique, why in gen.get("paused", {}).items():
                lines.append(f"  {technique} sat this generation out: {why}")
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
    """The handle at ``pipe.acceleration``: ``report()``, ``stats()``, ``remove()``."""

    def __init__(self, pipe, preset: str, family: Family, denoiser_attr: str, denoiser,
                 plan: dict[str, Any], measure_macs: bool):
        self.pipe = pipe
        self.preset = preset
        self.family = family
        self.denoiser_attr = denoiser_attr
        self.denoiser = denoiser
        self.denoisers = find_denoisers(pipe, family, denoiser_attr, denoiser)   # with Wan 2.2's second expert
        self.plan = plan
        self.measure_macs = measure_macs
        self.calibration: dict | None = None       # preset "auto": what calibration chose and measured
        self.state = AccelerationState(measure_macs=measure_macs)
        self.handles: list[patches.PatchHandle] = []
        self.skipped: list[dict] = []
        self.baseline_macs: int | None = None   # set by benchmarks that ran the baseline
        self._journal: Journal | None = None
        self._active = False

    def _install(self, quiet: bool = False) -> None:
        """Apply the plan; on any failure undo everything done so far and re-raise."""
        journal = self._journal = Journal()
        self.state = AccelerationState(measure_macs=self.measure_macs)
        self.handles, self.skipped = [], []
        # one context per denoiser: a technique is applied to each expert on its own (own hooks and caches)
        contexts = [patches.PatchContext(self.pipe, module, attr, self.family, self.state, journal)
                    for attr, module in self.denoisers]
        clock = Clock(self.pipe, [m for _, m in self.denoisers], self.state, journal)
        try:
            clock.install()
            modules = patches.available()
            # TECHNIQUES lists techniques outermost first; apply innermost first so that each
            # later (outer) hook wraps the earlier ones on a shared module.
            self.state.min_steps = {name: config.min_steps for name, config in self.plan.items()
                                    if getattr(config, "min_steps", 1) > 1}
            for name, config in reversed(list(self.plan.items())):
                mark = journal.mark()
                try:
                    parts = []
                    for ctx in contexts:
                        ctx.technique = name
                        parts.append((ctx.denoiser_attr, modules[name].apply(ctx, config)))
                    handle = _merged(name, parts)
                except patches.NotApplicable as exc:
                    journal.rollback(mark)
                    self.skipped.append({"technique": name, "reason": str(exc)})
                    if not quiet:
                        warnings.warn(f"accelerate_diffusion: {name} not applied: {exc}", stacklevel=4)
                    continue
                self.handles.append(handle)
            clock.hook_denoiser()   # last, so it is the outermost hook
        except BaseException:
            journal.rollback()
            self._invalidate()
            self.handles = []
            raise
        self._invalidate()
        self._active = True

    def _invalidate(self) -> None:
        for _, module in self.denoisers:
            invalidate_hook_caches(module)

    def _uninstall(self) -> None:
        if self._journal is not None:
            self._journal.rollback()
        self._invalidate()
        self.handles = []
        self._active = False

    def remove(self) -> None:
        """Restore the original pipeline exactly; the handle is detached from it."""
        if not self._active:
            return
        self._uninstall()
        if getattr(self.pipe, "acceleration", None) is self:
            del self.pipe.acceleration

    @property
    def active(self) -> bool:
        return self._active

    def _generation(self) -> dict:
        state = self.state
        return {"generations": state.generation, "steps": state.step, "num_steps": state.num_steps,
                "cfg_layout": state.cfg_layout, "counters": dict(state.counters), "macs": state.macs,
                "baseline_macs": self.baseline_macs, "paused": dict(state.paused)}

    def report(self) -> Report:
        paused = self.state.paused
        applied = [{"technique": h.technique, "config": self.plan[h.technique].to_dict(), "targets": h.targets,
                    "stats": {"status": f"sat out: {paused[h.technique]}"} if h.technique in paused else h.statistics()}
                   for h in self.handles]
        return Report(type(self.pipe).__name__, type(self.denoiser).__name__, self.family.name,
                      self.preset, applied, list(self.skipped), self._generation(), self.calibration)

    def stats(self) -> dict:
        """Machine-readable figures of the last generation: ``"generation"`` (steps, counters,
        MACs) and, per applied technique, its report entries plus its detailed data (guidance:
        per-step cos similarity and switch steps; ras: per-step active tokens; kv_cache: the
        cache per chunk; attention: MACs at mask density and backends)."""
        out = {"generation": self._generation()}
        out.update({h.technique: h.data() for h in self.handles})
        return out

    def __enter__(self):
        return self.pipe

    def __exit__(self, *exc):
        self.remove()
        return False

    def __repr__(self) -> str:
        techniques = ", ".join(h.technique for h in self.handles) or "nothing"
        return f"<Acceleration preset={self.preset!r} family={self.family.name} applied: {techniques}>"


def _merged(technique: str, parts: list[tuple[str, patches.PatchHandle]]) -> patches.PatchHandle:
    """One handle for a technique applied to each of several experts: targets named by expert,
    the first expert's figures, and each other expert's where they differ."""
    if len(parts) == 1:
        return parts[0][1]
    first = parts[0][1]
    targets = [t if t == attr else f"{attr}.{t}" for attr, h in parts for t in h.targets]

    def stats() -> dict:
        out = first.statistics()
        for attr, h in parts[1:]:
            out.update({f"{attr}: {k}": v for k, v in h.statistics().items() if out.get(k) != v})
        return out

    def details() -> dict:
        out = first.data()
        out.update({attr: h.data() for attr, h in parts[1:]})
        return out

    return patches.PatchHandle(technique, targets, stats=stats, details=details)


def _current(pipe) -> Acceleration | None:
    handle = getattr(pipe, "acceleration", None)
    return handle if isinstance(handle, Acceleration) and handle.active else None


def _swap_in(pipe, handle: Acceleration) -> None:
    """Replace the pipeline's acceleration by ``handle``; if installing fails, the previous one
    is put back and the error raised."""
    previous = _current(pipe)
    if previous is not None:
        logger.warning("accelerate_diffusion: pipeline was already accelerated (preset %r); "
                       "removing that before applying %r", previous.preset, handle.preset)
        previous._uninstall()
    try:
        handle._install()
    except BaseException:
        if previous is not None:
            previous._install(quiet=True)
        raise
    pipe.acceleration = handle


def _family(denoiser) -> Family:
    family = family_of(denoiser)
    if family is None:
        warnings.warn(
            f"accelerate_diffusion: {type(denoiser).__name__} is not in the model-family table; "
            f"only {', '.join(GENERIC.techniques)} can apply to it.\n{supported_summary()}",
            stacklevel=3)
        family = GENERIC
    return family


AUTO_OPTIONS = ("target_psnr", "target_ssim", "budget", "calibration_prompts", "calibration", "cache_dir",
                "progress")


def accelerate(pipe, preset: str = "balanced", *, measure_macs: bool = False, **overrides):
    """Patch ``pipe`` in place and return it, with a handle at ``pipe.acceleration``.

    ``preset`` is one of ``off, quality, balanced, fast, max``. ``overrides`` maps a
    technique name to a config object, a dict of fields (merged onto the preset's), True
    (the preset's or default settings) or False/None (disabled). ``measure_macs`` counts
    the denoiser's MACs each generation (slower; for reports and benchmarks). A learned
    schedule is a field of its technique: ``block_cache={"schedule": "front/front-03.json"}``
    or ``block_cache={"schedule_dir": "front/", "max_quality_loss": 0.05}`` (DeepCache:
    ``deepcache={"schedule_dir": ...}`` or ``{"point": ...}``).

    ``preset="auto"`` calibrates for a quality target (``target_psnr=`` dB or ``target_ssim=``)
    on this model and remembers the result (see :mod:`accelerate_diffusion.auto`); options:
    ``budget`` (generations calibration may run, default 6), ``calibration_prompts``,
    ``calibration`` (the call arguments to calibrate for: steps, size, guidance), ``cache_dir``.
    """
    denoiser_attr, denoiser = _check_pipeline(pipe)
    auto_options = {k: overrides.pop(k) for k in AUTO_OPTIONS if k in overrides}
    if preset != "auto":
        get_preset(preset)
        if auto_options:
            raise ValueError(f"{next(iter(auto_options))}: only with preset 'auto' (got preset {preset!r})")
    family = _family(denoiser)
    calibration = None
    base = preset
    if preset == "auto":
        calibration = _calibrate(pipe, family, denoiser, auto_options)
        rung = dict(calibration["overrides"])
        base = rung.pop("preset", "off")          # a rung is overrides on a base preset
        overrides = {**rung, **overrides}
    plan = build_plan(family, denoiser, base, overrides)
    if preset not in ("off", "auto") and not plan:
        warnings.warn(
            f"accelerate_diffusion: preset {preset!r} has no technique available for the "
            f"{family.name} family in this version; the pipeline runs unaccelerated.",
            stacklevel=2)
    handle = Acceleration(pipe, preset, family, denoiser_attr, denoiser, plan, measure_macs)
    handle.calibration = calibration
    _swap_in(pipe, handle)
    return pipe


def _calibrate(pipe, family, denoiser, options: dict) -> dict:
    from . import auto
    from .patches.guidance import model_fingerprint

    options = dict(options)
    def trial(rung: dict):
        rung = dict(rung)
        return accelerated(pipe, rung.pop("preset", "off"), **rung)

    return auto.choose(pipe, family, denoiser, trial,
                       target_psnr=options.pop("target_psnr", None), target_ssim=options.pop("target_ssim", None),
                       budget=options.pop("budget", 6), prompts=options.pop("calibration_prompts", None),
                       call=options.pop("calibration", None), cache=options.pop("cache_dir", None),
                       progress=options.pop("progress", True), fingerprint=model_fingerprint(denoiser))


@contextlib.contextmanager
def accelerated(pipe, preset: str = "balanced", **overrides):
    """``with accelerated(pipe, "fast"): pipe(...)``: accelerated inside; afterwards the
    pipeline is as it was before the block (its previous acceleration included)."""
    previous = _current(pipe)
    accelerate(pipe, preset, **overrides)
    try:
        yield pipe
    finally:
        current = _current(pipe)
        if current is not None:
            current.remove()
        if previous is not None and not previous.active:
            previous._install(quiet=True)
            pipe.acceleration = previous


def apply_technique(pipe, technique: str, config=None, **fields):
    """Add (or replace) one technique on the pipeline's current acceleration, keeping the rest;
    ``config`` is the technique's Config object, or give its fields as keywords."""
    if config is not None and fields:
        raise ValueError(f"{technique}: pass a config object or fields, not both")
    denoiser_attr, denoiser = _check_pipeline(pipe)
    current = _current(pipe)
    family = current.family if current is not None else _family(denoiser)
    preset = current.preset if current is not None else "off"
    added = build_plan(family, denoiser, "off", {technique: config if config is not None else (fields or True)})
    plan = dict(current.plan) if current is not None else {}
    plan.update(added)
    plan = {name: plan[name] for name in TECHNIQUES if name in plan}
    measure = current.measure_macs if current is not None else False
    _swap_in(pipe, Acceleration(pipe, preset, family, denoiser_attr, denoiser, plan, measure))
    return pipe


def apply_deepcache(pipe, config=None, **fields):
    """DeepCache on a UNet pipeline (``DeepCacheConfig``), on top of any current acceleration."""
    return apply_technique(pipe, "deepcache", config, **fields)


def apply_block_cache(pipe, config=None, **fields):
    """Block caching on a DiT pipeline (``BlockCacheConfig``)."""
    return apply_technique(pipe, "block_cache", config, **fields)


def apply_guidance(pipe, config=None, **fields):
    """Adaptive / truncated / interval / linear classifier-free guidance (``GuidanceConfig``)."""
    return apply_technique(pipe, "guidance", config, **fields)


def apply_ras(pipe, config=None, **fields):
    """Region-adaptive sampling on SD3 / Flux (``RASConfig``)."""
    return apply_technique(pipe, "ras", config, **fields)


def apply_sparse_attention(pipe, config=None, **fields):
    """Sparse / neighborhood self-attention (``SparseAttentionConfig``)."""
    return apply_technique(pipe, "attention", config, **fields)


def apply_kv_cache(pipe, config=None, **fields):
    """Temporal KV-cache compression for autoregressive video (``KVCacheConfig``)."""
    return apply_technique(pipe, "kv_cache", config, **fields)
