"""Per-pipeline runtime state and the clock that drives it.

Every diffusers pipeline calls ``scheduler.set_timesteps`` once per generation and
``scheduler.step`` once per denoising step. Wrapping those two methods *on the
scheduler instance* gives a reset and a step counter that do not depend on how the
pipeline passes ``timestep`` (repeated timesteps, order-2 schedulers, img2img
strength). Nothing is patched on a class, so two pipelines never share state.
"""

from __future__ import annotations

import collections
import copy
import functools
import inspect
import logging
import warnings
from typing import Any, Callable

import torch

from .eval.macs import MacCounter

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
        self.cfg_layout = "unknown"     # "batched" | "separate" | "none" once step 0 is seen
        self._pending_layout = "none"   # what the pipeline's own CFG flag said at step 0
        self.cfg_flag = False           # does this generation use CFG (the pipeline's own flag)
        self.encode_cfg_flag: bool | None = None   # seen in encode_prompt, for pipelines without the property
        self.input_shape: tuple[int, ...] | None = None
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
    def progress(self) -> float:
        """Fraction of the generation done at the start of this step, in [0, 1)."""
        return self.step / self.num_steps if self.num_steps else 0.0


class _InstanceMethod:
    """An instance-level method replacement. A deep copy of the instance gets the method it had
    before wrapping, not this wrapper: SkyReels-V2 diffusion forcing deep-copies the scheduler
    once per frame, and the copies must step themselves, not the wrapped original."""

    def __init__(self, obj, name: str, fn, had_own: bool, own):
        self.obj, self.name, self.fn, self.had_own, self.own = obj, name, fn, had_own, own
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo):
        clone = memo.get(id(self.obj))
        if clone is None:
            return self
        if self.had_own:
            return copy.deepcopy(self.own, memo)
        return getattr(type(clone), self.name).__get__(clone)


def set_on_instance(obj, name: str, value) -> Callable[[], None]:
    """Set ``obj.name = value`` on the instance (never the class); return an undo that puts back
    the instance's own attribute, or removes it when the class's was in use."""
    had_own = name in vars(obj)
    own = vars(obj).get(name)
    setattr(obj, name, value)

    def undo():
        if had_own:
            setattr(obj, name, own)
        else:
            vars(obj).pop(name, None)

    return undo


def _wrap_method(obj, name: str, make_wrapper) -> Callable[[], None]:
    """Replace ``obj.name`` on the instance by ``make_wrapper(original)``; return an undo."""
    original = getattr(obj, name)
    wrapper = functools.wraps(original)(make_wrapper(original))
    return set_on_instance(obj, name, _InstanceMethod(obj, name, wrapper, name in vars(obj), vars(obj).get(name)))


class Clock:
    """Installs the scheduler wrappers and the outermost denoiser hook of one pipeline."""

    def __init__(self, pipe, denoiser: torch.nn.Module, state: AccelerationState):
        self.pipe = pipe
        self.denoiser = denoiser
        self.state = state
        self.scheduler = None
        self._undo_scheduler: list[Callable[[], None]] = []
        self._undo_pipe: list[Callable[[], None]] = []
        self._hooked = False

    # -- scheduler -------------------------------------------------------------------
    def wrap_scheduler(self) -> None:
        scheduler = self.pipe.scheduler
        state = self.state

        def make_set_timesteps(original):
            def set_timesteps(*args, **kwargs):
                out = original(*args, **kwargs)
                state.reset(getattr(scheduler, "timesteps", None))
                return out
            return set_timesteps

        def make_step(original):
            def step(*args, **kwargs):
                out = original(*args, **kwargs)
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
                state.set_begin_index(begin_index)
                return out
            return set_begin_index

        self._undo_scheduler = [
            _wrap_method(scheduler, "set_timesteps", make_set_timesteps),
            _wrap_method(scheduler, "step", make_step),
        ]
        if hasattr(scheduler, "set_begin_index"):
            self._undo_scheduler.append(_wrap_method(scheduler, "set_begin_index", make_begin_index))
        self.scheduler = scheduler

    def unwrap_scheduler(self) -> None:
        for undo in reversed(self._undo_scheduler):
            undo()
        self._undo_scheduler = []
        self.scheduler = None

    # -- denoiser hook ---------------------------------------------------------------
    def hook_denoiser(self) -> None:
        from diffusers.hooks import HookRegistry

        registry = HookRegistry.check_if_exists_or_initialize(self.denoiser)
        registry.register_hook(_ClockHook(self), CLOCK_HOOK)
        self._hooked = True

    def unhook_denoiser(self) -> None:
        if self._hooked:
            self.denoiser._diffusers_hook.remove_hook(CLOCK_HOOK, recurse=False)
            self._hooked = False

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
        state = self.state

        def make_encode(original):
            def encode_prompt(*args, **kwargs):
                try:
                    bound = signature.bind(*args, **kwargs)
                    state.encode_cfg_flag = bool(bound.arguments.get(param.name, param.default))
                except TypeError:
                    state.encode_cfg_flag = None
                return original(*args, **kwargs)
            return encode_prompt

        self._undo_pipe.append(_wrap_method(self.pipe, "encode_prompt", make_encode))

    def install(self) -> None:
        self.wrap_scheduler()
        self.wrap_encode_prompt()

    def uninstall(self) -> None:
        self.unhook_denoiser()
        self.unwrap_scheduler()
        while self._undo_pipe:
            self._undo_pipe.pop()()

    def before_call(self, args, kwargs) -> None:
        """Bookkeeping at every denoiser call: scheduler swaps, layout, counters."""
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
        state.call_in_step += 1
        state.count("denoiser_calls")


try:
    from diffusers.hooks import ModelHook as _ModelHook
except ImportError:  # pragma: no cover - diffusers is a hard dependency
    _ModelHook = object


class _ClockHook(_ModelHook):
    """Outermost hook on the denoiser: counts calls and, when asked, the MACs they run."""

    def __init__(self, clock: Clock):
        super().__init__()
        self.clock = clock

    def new_forward(self, module, *args, **kwargs):
        self.clock.before_call(args, kwargs)
        state = self.clock.state
        if not state.measure_macs:
            return self.fn_ref.original_forward(*args, **kwargs)
        with MacCounter() as counter:
            out = self.fn_ref.original_forward(*args, **kwargs)
        state.macs = (state.macs or 0) + counter.macs
        return out
