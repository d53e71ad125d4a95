"""Every change made to a pipeline, recorded with its exact undo, in one place.

Techniques never write undo code. They ask the :class:`Journal` to register a diffusers hook,
set an instance attribute, wrap a method, swap an attention processor or add a callback; the
journal records how to put back what was there before. ``rollback()`` replays the records in
reverse, so a failed ``apply`` unwinds completely and ``remove()`` restores the pipeline
exactly, including what other libraries installed before or after us: HF Accelerate's offload
hooks (``add_hook_to_module`` wraps ``module.forward`` and calls ``module._old_forward``),
hooks a user registered in diffusers' ``HookRegistry``, and a second accelerated pipeline
sharing a module or a scheduler.
"""

from __future__ import annotations

import copy
import functools
import itertools
import warnings
from typing import Callable

_MISSING = object()
_TAGS = itertools.count(1)
BASE_FORWARD = "_accelerate_diffusion_base_forward"   # on a registry we hooked while empty: the forward before
CREATED = "_accelerate_diffusion_created"              # on a registry we created


class Change:
    """One recorded change; ``undo()`` is idempotent, so a change can be undone early."""

    def __init__(self, undo: Callable[[], None], what: str):
        self._undo, self.what, self.done = undo, what, False

    def undo(self) -> None:
        if not self.done:
            self.done = True
            self._undo()


class Journal:
    """The changes of one acceleration, undone in reverse order."""

    def __init__(self):
        self.tag = next(_TAGS)          # makes hook names unique: two pipelines may share a module
        self.changes: list[Change] = []

    def mark(self) -> int:
        return len(self.changes)

    def rollback(self, mark: int = 0) -> None:
        """Undo every change made after ``mark``, newest first; every undo runs even if one fails."""
        error = None
        while len(self.changes) > mark:
            try:
                self.changes.pop().undo()
            except Exception as exc:   # keep unwinding: a half-undone pipeline is the worst outcome
                error = error or exc
        if error is not None:
            raise error

    def record(self, undo: Callable[[], None], what: str = "") -> Change:
        change = Change(undo, what)
        self.changes.append(change)
        return change

    def hook_name(self, name: str) -> str:
        return f"{name}#{self.tag}"

    # -- diffusers hooks ---------------------------------------------------------------------
    def register_hook(self, module, hook, name: str) -> Change:
        """Register ``hook`` in the module's diffusers ``HookRegistry`` (created if needed)."""
        from diffusers.hooks import HookRegistry

        name = self.hook_name(name)
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            registry = HookRegistry.check_if_exists_or_initialize(module)
            setattr(registry, CREATED, True)
        if not registry.hooks:
            setattr(registry, BASE_FORWARD, vars(module).get("forward", _MISSING))
        registry.register_hook(hook, name)
        return self.record(lambda: _remove_hook(module, name), f"hook {name} on {type(module).__name__}")

    # -- attributes and methods ----------------------------------------------------------------
    def set_attr(self, obj, name: str, value) -> Change:
        """``obj.name = value`` on the instance (never the class)."""
        before = vars(obj).get(name, _MISSING)
        setattr(obj, name, value)

        def undo():
            if vars(obj).get(name, _MISSING) is not value:
                return                      # replaced since by someone else: theirs now
            _restore_attr(obj, name, before)

        return self.record(undo, f"{type(obj).__name__}.{name}")

    def wrap_method(self, obj, name: str, make_wrapper: Callable) -> Change:
        """Replace the bound method ``obj.name`` by ``make_wrapper(original)`` on the instance.

        Wrappers stack (two accelerated pipelines sharing a scheduler): removing one that is
        not on top makes it a pass-through, and whoever unwinds to it later skips over it."""
        original = getattr(obj, name)
        before = vars(obj).get(name, _MISSING)
        wrapper = _InstanceMethod(obj, name, functools.wraps(original)(make_wrapper(original)), before)
        setattr(obj, name, wrapper)

        def undo():
            if vars(obj).get(name, _MISSING) is wrapper:
                _restore_attr(obj, name, _unwind(before))
            else:
                wrapper.bypass = True       # someone wrapped over us: become transparent

        return self.record(undo, f"{type(obj).__name__}.{name}()")

    def set_processor(self, attn, processor) -> Change:
        """Swap an attention module's processor (diffusers' ``set_processor``)."""
        original = attn.processor
        attn.set_processor(processor)

        def undo():
            if attn.processor is processor:
                attn.set_processor(original)

        return self.record(undo, f"processor of {type(attn).__name__}")

    # -- callbacks and caches ------------------------------------------------------------------
    def add_callback(self, callbacks: list, fn) -> Change:
        callbacks.append(fn)
        return self.record(lambda: fn in callbacks and callbacks.remove(fn), "callback")

    def put(self, mapping: dict, key, value) -> Change:
        mapping[key] = value
        return self.record(lambda: mapping.get(key) is value and mapping.pop(key), f"cache {key}")


def _restore_attr(obj, name: str, before) -> None:
    if before is _MISSING:
        vars(obj).pop(name, None)
    else:
        setattr(obj, name, before)


class _InstanceMethod:
    """An instance-level method wrapper. A deep copy of the instance gets the method it had before
    wrapping, not this wrapper: SkyReels-V2 diffusion forcing deep-copies the scheduler once per
    frame, and the copies must step themselves, not the wrapped original."""

    def __init__(self, obj, name: str, fn, before):
        self.obj, self.name, self.fn, self.before = obj, name, fn, before
        self.bypass = False
        self.original = getattr(obj, name)
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        if self.bypass:
            return self.original(*args, **kwargs)
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo):
        clone = memo.get(id(self.obj))
        if clone is None:
            return self
        before = _unwind(self.before)
        if before is not _MISSING:
            return copy.deepcopy(before, memo)
        return getattr(type(clone), self.name).__get__(clone)


def _unwind(value):
    """Skip over wrappers that were removed while something else was wrapped over them."""
    while isinstance(value, _InstanceMethod) and value.bypass:
        value = value.before
    return value


# -- hook removal ----------------------------------------------------------------------------------
def _is_registry_forward(fn) -> bool:
    """Whether ``fn`` is a forward that diffusers' HookRegistry installed."""
    func = getattr(fn, "func", None)
    return isinstance(fn, functools.partial) and "HookRegistry.register_hook" in getattr(func, "__qualname__", "")


def _remove_hook(module, name: str) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or name not in registry.hooks:
        return                                   # already gone (the user removed it)
    outer = vars(module).get("forward", _MISSING)
    index = registry._hook_order.index(name)
    outermost = index == len(registry._hook_order) - 1
    if not outermost:
        _unlink_inner(registry, index, module)
        return
    registry.remove_hook(name, recurse=False)
    if not registry.hooks and hasattr(registry, BASE_FORWARD):
        inner = getattr(registry, BASE_FORWARD)   # empty again: back to the forward before our hooks
        delattr(registry, BASE_FORWARD)
        if getattr(registry, CREATED, False):
            del module._diffusers_hook
    elif outermost:
        inner = vars(module).get("forward", _MISSING)
    else:
        return                                   # an inner hook: the registry relinked the chain
    _set_inner_forward(module, outer, inner)


def _unlink_inner(registry, index: int, module) -> None:
    """Remove the hook at ``index`` from the middle of the chain. The hook above it gets the
    forward below it. (diffusers' ``remove_hook`` sets the next reference's ``forward``, which for
    a hook with ``new_forward`` is that hook itself, so the hook above would be dropped too.)"""
    ref = registry._fn_refs[index]
    below = ref.original_forward if ref.original_forward is not None else ref.forward
    above = registry._fn_refs[index + 1]
    if above.original_forward is not None:
        above.original_forward = below
    else:
        above.forward = below
    name = registry._hook_order.pop(index)
    registry._fn_refs.pop(index)
    registry.hooks.pop(name).deinitalize_hook(module)


def _set_inner_forward(module, outer, inner) -> None:
    """Make ``inner`` the forward below whatever wraps the registry now.

    With nothing over the registry, ``inner`` becomes ``module.forward`` again. When HF
    Accelerate wrapped the module after us (``add_hook_to_module``: ``module.forward`` is its
    wrapper, which calls ``module._old_forward``), its wrapper stays and calls ``inner``."""
    if outer is _MISSING or _is_registry_forward(outer):
        _restore_attr(module, "forward", inner)
        return
    vars(module)["forward"] = outer               # keep the foreign wrapper on top
    if hasattr(module, "_hf_hook") and _is_registry_forward(getattr(module, "_old_forward", None)):
        module._old_forward = inner if inner is not _MISSING else type(module).forward.__get__(module)
        return
    warnings.warn(f"accelerate_diffusion: {type(module).__name__}.forward was wrapped by another library "
                  "after accelerate(); that wrapper still calls the removed hooks' chain (they now pass "
                  "through). Remove that wrapper before accelerate() to restore the module exactly.",
                  stacklevel=4)


def invalidate_hook_caches(module) -> None:
    """diffusers caches each registry's child registries (for ``cache_context``): after hooks
    are added or removed below ``module``, drop those caches."""
    import torch

    for sub in module.modules() if isinstance(module, torch.nn.Module) else ():
        registry = getattr(sub, "_diffusers_hook", None)
        if registry is not None and hasattr(registry, "_child_registries_cache"):
            registry._child_registries_cache = None
