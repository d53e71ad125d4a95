"""Patches: one module per technique, each with a ``Config`` dataclass and ``apply()``.

A technique module provides::

    NAME = "guidance"
    class Config(TechniqueConfig): ...           # validated on construction
    def prepare(config, target: Target) -> Config   # optional: resolve files, learned schedules
    def apply(ctx: PatchContext, config) -> PatchHandle

``prepare`` runs before anything is changed (it may read files and raise ValueError).
``apply`` makes every change through ``ctx`` (hooks, attributes, processors, callbacks),
which records it with its undo in the acceleration's journal: techniques write no undo code,
and a failure part-way unwinds everything. ``apply`` raises :class:`NotApplicable` with a
reason when it cannot run on this pipeline; the API then reports it as skipped (loudly).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..families import TECHNIQUES, Family
from ..journal import Journal
from ..state import AccelerationState

try:
    from diffusers.hooks import ModelHook
except ImportError:  # pragma: no cover - diffusers is a hard dependency
    ModelHook = object

# technique name -> module implementing it. Order of application is families.TECHNIQUES.
_MODULES: dict[str, str] = {
    "kv_cache": "accelerate_diffusion.patches.kv_cache",
    "ras": "accelerate_diffusion.patches.ras",
    "block_cache": "accelerate_diffusion.patches.block_cache",
    "deepcache": "accelerate_diffusion.patches.deepcache",
    "guidance": "accelerate_diffusion.patches.guidance",
    "attention": "accelerate_diffusion.patches.attention",
}


class NotApplicable(Exception):
    """Raised by ``apply`` when a technique cannot run on this pipeline; the message says why."""


@dataclass
class Target:
    """What ``prepare`` may look at: the denoiser, its family row, the preset asked for, and the
    config fields the user set explicitly (so a preset default can be told from a choice)."""

    denoiser: torch.nn.Module
    family: Family
    preset: str
    user_fields: frozenset = frozenset()


@dataclass
class PatchContext:
    """The pipeline being accelerated and the only way a technique changes it."""

    pipe: Any
    denoiser: torch.nn.Module
    denoiser_attr: str
    family: Family
    state: AccelerationState
    journal: Journal
    technique: str = ""                 # the technique being applied (set by the API)

    def hook(self, module: torch.nn.Module, hook, name: str) -> None:
        """Register a diffusers ``hook`` on ``module``."""
        hook.technique = self.technique
        self.journal.register_hook(module, hook, name)

    def set_attr(self, obj, name: str, value) -> None:
        """Set an instance attribute (a pipeline method replacement, a marker)."""
        self.journal.set_attr(obj, name, value)

    def set_processor(self, attn: torch.nn.Module, processor) -> None:
        self.journal.set_processor(attn, processor)

    def on_reset(self, fn: Callable[[], None]) -> None:
        """``fn()`` when a generation starts (drop caches)."""
        self.journal.add_callback(self.state._on_reset, fn)

    def on_step_end(self, fn: Callable[[], None]) -> None:
        self.journal.add_callback(self.state._on_step_end, fn)

    def on_scheduler_step(self, fn: Callable[[Any, Any], None]) -> None:
        """``fn(model_output, scheduler)`` after each scheduler step (RAS steers the next step)."""
        self.journal.add_callback(self.state._on_scheduler_step, fn)

    def on_remove(self, fn: Callable[[], None]) -> None:
        """``fn()`` on removal (free caches held for the pipeline)."""
        self.journal.record(fn, "free caches")


@dataclass
class PatchHandle:
    """What ``apply`` returns: what it patched and its statistics.

    ``stats()`` gives the report's lines; ``details()`` the machine-readable figures
    (per-step selections, per-chunk cache sizes...) that ``Acceleration.stats()`` returns."""

    technique: str
    targets: list[str] = field(default_factory=list)   # modules patched, for the report
    stats: Callable[[], dict] | None = None
    details: Callable[[], dict] | None = None

    def statistics(self) -> dict:
        return dict(self.stats()) if callable(self.stats) else {}

    def data(self) -> dict:
        out = self.statistics()
        if callable(self.details):
            out.update(self.details())
        return out


class TechniqueHook(ModelHook):
    """Base of every technique's hook. Calls that are not this pipeline's own (another pipeline
    sharing the module), and every call of a generation the technique sits out (fewer steps
    than its ``min_steps``), pass through untouched.

    A hook says what it does around the module's own forward in :meth:`before` and :meth:`after`.
    Under ``torch.compile`` those two run eagerly (``torch.compiler.disable``): cache decisions,
    counters and Python state never enter the graph, and only the module's forward between them
    is traced, the same graph for every step. A hook whose work cannot be split so overrides
    :meth:`run` and sets ``eager = True``: it and its module then run uncompiled."""

    technique = ""
    eager = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "run" in vars(cls) and not cls.eager:      # run() is only called for eager hooks
            raise TypeError(f"{cls.__name__} overrides run(): set eager = True, or use before()/after()")

    def __init__(self, state: AccelerationState):
        super().__init__()
        self.state = state

    def new_forward(self, module, *args, **kwargs):
        if self.eager:
            return self._run_eager(module, args, kwargs)
        done, out, args, kwargs, token = self._before(module, args, kwargs)
        if done:
            return out
        out = self.fn_ref.original_forward(*args, **kwargs)
        return self._after(module, out, token)

    def before(self, module, args, kwargs):
        """Returns ``(done, output, args, kwargs, token)``: ``done`` skips the module and returns
        ``output``; otherwise the module runs on ``args``/``kwargs`` and ``token`` goes to after."""
        return False, None, args, kwargs, None

    def after(self, module, output, token):
        return output

    def run(self, module, forward, args, kwargs):
        """For ``eager`` hooks: the whole call, with ``forward`` the module's own."""
        return forward(*args, **kwargs)

    def _passes(self) -> bool:
        return _passes_through(self.state, self.technique)

    @torch.compiler.disable
    def _before(self, module, args, kwargs):
        if self._passes():
            return False, None, args, kwargs, _PASS
        return self.before(module, args, kwargs)

    @torch.compiler.disable
    def _after(self, module, output, token):
        return output if token is _PASS else self.after(module, output, token)

    @torch.compiler.disable
    def _run_eager(self, module, args, kwargs):
        if self._passes():
            return self.fn_ref.original_forward(*args, **kwargs)
        return self.run(module, self.fn_ref.original_forward, args, kwargs)


_PASS = object()   # token of a call the hook passes through


def _passes_through(state: AccelerationState, technique: str) -> bool:
    """Another pipeline's call through a shared module, or a generation the technique sits out."""
    return not state.in_call or technique in state.paused


class OutputHook(ModelHook):
    """A hook that edits a module's output with ``fn(module, output)`` in this pipeline's calls
    (eagerly under ``torch.compile``: the edit is a decision, like every hook's)."""

    technique = ""

    def __init__(self, state: AccelerationState, fn: Callable):
        super().__init__()
        self.state, self.fn = state, fn

    @torch.compiler.disable
    def post_forward(self, module, output):
        if _passes_through(self.state, self.technique):
            return output
        return self.fn(module, output)


def available() -> dict[str, Any]:
    """The implemented techniques, as name -> module, in application order."""
    return {name: importlib.import_module(_MODULES[name]) for name in TECHNIQUES if name in _MODULES}
