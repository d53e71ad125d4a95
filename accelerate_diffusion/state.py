"""Per-pipeline runtime state and the clock that drives it.

Every diffusers pipeline calls ``scheduler.set_timesteps`` once per generation and
``scheduler.step`` once per denoising step. Wrapping those two methods *on the
scheduler instance* gives a reset and a step counter that do not depend on how the
pipeline passes ``timestep`` (repeated timesteps, order-2 schedulers, img2img
strength). Nothing is patched on a class, so two pipelines never share state.
"""

from __future__ import annotations

import collections
import inspect
import logging
import sys
import threading
import warnings
from typing import Any, Callable

import torch

from .journal import Journal
from .macs import MacCounter

logger = logging.getLogger("accelerate_diffusion")

CLOCK_HOOK = "accelerate_diffusion.clock"


class AccelerationState:
    """The clock plus per-generation counters and per-technique caches of one pipeline.

    ``step`` is the index of the denoising step in progress (0-based); ``num_steps`` the
    number of steps this generation runs. ``counters`` restart at every generation, so
    after a call they describe that call. Techniques keep their caches in ``caches`` and
    register ``on_reset`` callbacks to drop them between generations.
    """

    def __init__(self, measure_macs: bool = False):
        self.measure_macs = measure_macs
        self.generation = 0
        self.step = 0
        self.num_steps = 0
        self.timesteps: torch.Tensor | None = None
        self.call_in_step = 0
        self.expert = 0                 # which of the pipeline's denoisers runs this call (Wan 2.2: 0 or 1)
        self.expert_start: dict[int, int] = {}   # expert -> the step of its first call in this generation
        self.cfg_layout = "unknown"     # "batched" | "separate" | "none" once step 0 is seen
        self._pending_layout = "none"   # what the pipeline's own CFG flag said at step 0
        self.cfg_flag = False           # does this generation use CFG (the pipeline's own flag)
        self.encode_cfg_flag: bool | None = None   # seen in encode_prompt, for pipelines without the property
        self.input_shape: tuple[int, ...] | None = None
        self.in_call = False            # a denoiser call of this pipeline's own generation is running
        self.min_steps: dict[str, int] = {}   # technique -> fewest steps it acts on
        self.paused: dict[str, str] = {}      # techniques sitting this generation out, and why
        self.counters: collections.Counter = collections.Counter()
        self.macs: int | None = None
        self.caches: dict[str, Any] = {}
        self._on_reset: list[Callable[[], None]] = []
        self._on_step_end: list[Callable[[], None]] = []
        self._on_scheduler_step: list[Callable[[Any, Any], None]] = []

    # -- the clock -------------------------------------------------------------------
    def reset(self, timesteps: torch.Tensor | None, begin_index: int = 0) -> None:
        """A new generation starts: step 0, fresh counters, caches dropped."""
        self.generation += 1
        self.step = 0
        self.timesteps = timesteps
        self.num_steps = 0 if timesteps is None else max(len(timesteps) - begin_index, 0)
        self.call_in_step = 0
        self.expert = 0
        self.expert_start = {}
        self.cfg_layout = "unknown"
        self._pending_layout = "none"
        self.input_shape = None
        self.counters = collections.Counter()
        self.macs = 0 if self.measure_macs else None
        for fn in self._on_reset:
            fn()

    def set_begin_index(self, begin_index: int) -> None:
        """img2img-style pipelines skip the first timesteps: fewer steps run."""
        if self.timesteps is not None:
            self.num_steps = max(len(self.timesteps) - begin_index, 0)

    def advance(self) -> None:
        """The scheduler finished a step."""
        if self.step == 0 and self.cfg_layout == "unknown":
            self.cfg_layout = "separate" if self.call_in_step >= 2 else self._pending_layout
        for fn in self._on_step_end:
            fn()
        self.step += 1
        self.call_in_step = 0
        self.counters["steps"] += 1

    def on_reset(self, fn: Callable[[], None]) -> None:
        self._on_reset.append(fn)

    def on_step_end(self, fn: Callable[[], None]) -> None:
        self._on_step_end.append(fn)

    def on_scheduler_step(self, fn: Callable[[Any, Any], None]) -> None:
        """``fn(model_output, scheduler)`` after each ``scheduler.step``, before the clock
        advances: techniques that steer the next step from the guided output (RAS) use it."""
        self._on_scheduler_step.append(fn)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    @property
    def expert_step(self) -> int:
        """The step in progress counted from the first call of the expert running it (Wan 2.2's
        second expert: 0 at the switch, where its caches are empty). ``step`` with one denoiser."""
        return self.step - self.expert_start.get(self.expert, 0)

    @property
    def progress(self) -> float:
        """Fraction of the generation done at the start of this step, in [0, 1)."""
        return self.step / self.num_steps if self.num_steps else 0.0


class ConcurrentUseError(RuntimeError):
    """An accelerated pipeline was entered from a second thread while a first one was running it."""


def pipeline_classes() -> tuple[type, ...]:
    """What accelerate() takes: a ``DiffusionPipeline``, or a ``ModularPipeline`` (Qwen-Image 2.1's
    only diffusers pipeline is modular) whose components include the denoiser and the scheduler."""
    from diffusers import DiffusionPipeline, ModularPipeline

    return DiffusionPipeline, ModularPipeline


def calling_pipeline(frame=None):
    """The innermost diffusers pipeline whose ``__call__`` is on this thread's stack (or on the
    stack ending at ``frame``), or None."""
    classes = pipeline_classes()
    f = frame if frame is not None else sys._getframe(1)
    while f is not None:
        code = f.f_code
        if code.co_name == "__call__" and code.co_argcount and code.co_varnames[0] == "self":
            obj = f.f_locals.get("self")
            if isinstance(obj, classes):
                return obj
        f = f.f_back
    return None


class Clock:
    """Installs the scheduler wrappers and the outermost denoiser hook of one pipeline.

    A call belongs to this pipeline unless it comes from *another* pipeline's ``__call__``
    (one built from the same components with ``from_pipe`` or ``components``): those pass
    through every hook untouched, so a pipeline sharing the denoiser gets the original
    behaviour, never a mix. A second thread entering this pipeline while a first one runs it
    raises :class:`ConcurrentUseError` (diffusers pipelines are not thread-safe either)."""

    def __init__(self, pipe, denoiser, state: AccelerationState, journal: Journal):
        self.pipe = pipe
        self.denoisers = list(denoiser) if isinstance(denoiser, (list, tuple)) else [denoiser]   # experts: several
        self.denoiser = self.denoisers[0]
        self.state = state
        self.journal = journal
        self.scheduler = None
        self._scheduler_changes: list = []
        self._lock = threading.Lock()
        self._owner: int | None = None

    # -- whose call is this ------------------------------------------------------------------
    def is_ours(self) -> bool:
        caller = calling_pipeline(sys._getframe(2))
        return caller is None or caller is self.pipe

    def claim(self) -> None:
        """This thread runs the pipeline now; refuse if another thread is inside its call."""
        me = threading.get_ident()
        with self._lock:
            owner = self._owner
            if owner is not None and owner != me:
                frame = sys._current_frames().get(owner)
                if frame is not None and calling_pipeline(frame) is self.pipe:
                    raise ConcurrentUseError(
                        f"accelerate_diffusion: this accelerated {type(self.pipe).__name__} is already "
                        f"running in another thread; a pipeline (and its acceleration state) serves one "
                        f"generation at a time: use one pipeline per worker, or a lock around pipe(...)")
            self._owner = me

    # -- scheduler ---------------------------------------------------------------------------
    def wrap_scheduler(self) -> None:
        scheduler = self.pipe.scheduler
        state, clock = self.state, self

        def make_set_timesteps(original):
            def set_timesteps(*args, **kwargs):
                out = original(*args, **kwargs)
                if clock.is_ours():
                    clock.claim()
                    state.reset(getattr(scheduler, "timesteps", None))
                return out
            return set_timesteps

        def make_step(original):
            def step(*args, **kwargs):
                out = original(*args, **kwargs)
                if clock.is_ours():
                    clock.claim()
                    if state._on_scheduler_step:
                        model_output = args[0] if args else kwargs.get("model_output")
                        for fn in state._on_scheduler_step:
                            fn(model_output, scheduler)
                    state.advance()
                return out
            return step

        def make_begin_index(original):
            def set_begin_index(begin_index: int = 0, *args, **kwargs):
                out = original(begin_index, *args, **kwargs)
                if clock.is_ours():
                    state.set_begin_index(begin_index)
                return out
            return set_begin_index

        self._scheduler_changes = [
            self.journal.wrap_method(scheduler, "set_timesteps", make_set_timesteps),
            self.journal.wrap_method(scheduler, "step", make_step),
        ]
        if hasattr(scheduler, "set_begin_index"):
            self._scheduler_changes.append(self.journal.wrap_method(scheduler, "set_begin_index", make_begin_index))
        self.scheduler = scheduler

    def unwrap_scheduler(self) -> None:
        for change in reversed(self._scheduler_changes):
            change.undo()
        self._scheduler_changes = []
        self.scheduler = None

    # -- denoiser hook -----------------------------------------------------------------------
    def hook_denoiser(self) -> None:
        for expert, denoiser in enumerate(self.denoisers):
            self.journal.register_hook(denoiser, _ClockHook(self, expert), CLOCK_HOOK)

    def pipeline_cfg_flag(self) -> bool:
        """The pipeline's CFG switch: its `do_classifier_free_guidance` property where it has
        one, else the flag it passed to `encode_prompt` (PixArt has no property)."""
        if hasattr(type(self.pipe), "do_classifier_free_guidance"):
            return getattr(self.pipe, "do_classifier_free_guidance", False) is True
        return bool(self.state.encode_cfg_flag)

    def wrap_encode_prompt(self) -> None:
        encode = getattr(self.pipe, "encode_prompt", None)
        try:
            signature = inspect.signature(encode)
        except (TypeError, ValueError):
            return
        param = signature.parameters.get("do_classifier_free_guidance")
        if param is None:
            return
        state, clock = self.state, self

        def make_encode(original):
            def encode_prompt(*args, **kwargs):
                if clock.is_ours():
                    clock.claim()
                    try:
                        bound = signature.bind(*args, **kwargs)
                        state.encode_cfg_flag = bool(bound.arguments.get(param.name, param.default))
                    except TypeError:
                        state.encode_cfg_flag = None
                return original(*args, **kwargs)
            return encode_prompt

        self.journal.wrap_method(self.pipe, "encode_prompt", make_encode)

    def install(self) -> None:
        self.wrap_scheduler()
        self.wrap_encode_prompt()

    def before_call(self, args, kwargs, expert: int = 0) -> None:
        """Bookkeeping at every denoiser call: scheduler swaps, layout, counters, which expert runs."""
        state = self.state
        if self.pipe.scheduler is not self.scheduler:
            warnings.warn("accelerate_diffusion: the pipeline's scheduler was replaced after "
                          "accelerate(); the step clock now follows the new scheduler.", stacklevel=2)
            self.unwrap_scheduler()
            self.wrap_scheduler()
            state.reset(getattr(self.scheduler, "timesteps", None))
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        if isinstance(sample, torch.Tensor):
            state.input_shape = tuple(sample.shape)
        if state.step == 0 and state.call_in_step == 0:
            # Pipelines set `_num_timesteps` to the steps the loop will run (img2img strength
            # included) just before it starts; prefer it over len(scheduler.timesteps).
            planned = getattr(self.pipe, "_num_timesteps", None)
            if isinstance(planned, int) and planned > 0:
                state.num_steps = planned
            state.cfg_flag = self.pipeline_cfg_flag()
            state._pending_layout = "batched" if state.cfg_flag else "none"
            state.paused = {name: f"{state.num_steps} steps < min_steps {least}: every step ran in full"
                            for name, least in state.min_steps.items() if state.num_steps < least}
        state.expert = expert
        state.expert_start.setdefault(expert, 0 if expert == 0 else state.step)
        state.call_in_step += 1
        state.count("denoiser_calls")


try:
    from diffusers.hooks import ModelHook as _ModelHook
except ImportError:  # pragma: no cover - diffusers is a hard dependency
    _ModelHook = object


class _ClockHook(_ModelHook):
    """Outermost hook on the denoiser: says whether a call is this pipeline's (``state.in_call``,
    which every technique hook checks), counts calls and, when asked, the MACs they run."""

    def __init__(self, clock: Clock, expert: int = 0):
        super().__init__()
        self.clock, self.expert = clock, expert

    def new_forward(self, module, *args, **kwargs):
        # Under torch.compile only the denoiser's own forward is traced: whose call this is and
        # the step bookkeeping run eagerly in _enter/_leave (a frame walk cannot be traced).
        outer, measure = self._enter(args, kwargs)
        if measure:
            out = self._measured(outer, args, kwargs)
        else:
            out = self.fn_ref.original_forward(*args, **kwargs)
        self._leave(outer)
        return out

    @torch.compiler.disable
    def _enter(self, args, kwargs) -> tuple[bool, bool]:
        clock, state = self.clock, self.clock.state
        ours = clock.is_ours()
        outer, state.in_call = state.in_call, ours
        if not ours:
            return outer, False
        try:
            clock.claim()
            clock.before_call(args, kwargs, self.expert)
        except BaseException:
            state.in_call = outer
            raise
        return outer, state.measure_macs

    @torch.compiler.disable
    def _leave(self, outer: bool) -> None:
        self.clock.state.in_call = outer

    @torch.compiler.disable
    def _measured(self, outer: bool, args, kwargs):
        state = self.clock.state
        try:
            with MacCounter() as counter:
                out = self.fn_ref.original_forward(*args, **kwargs)
        except BaseException:
            state.in_call = outer
            raise
        state.macs = (state.macs or 0) + counter.macs
        return out
