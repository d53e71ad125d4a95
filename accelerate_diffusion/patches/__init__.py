"""Patches: one module per technique, each with a ``Config`` dataclass and ``apply()``.

A technique module provides::

    NAME = "guidance"
    class Config(TechniqueConfig): ...           # validated on construction
    def apply(ctx: PatchContext, config) -> PatchHandle

``apply`` raises :class:`NotApplicable` with a reason when it cannot run on this
pipeline; the API then reports it as skipped (loudly), never as applied.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ..families import TECHNIQUES, Family
from ..state import AccelerationState

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
class PatchContext:
    pipe: Any
    denoiser: torch.nn.Module
    denoiser_attr: str
    family: Family
    state: AccelerationState


@dataclass
class PatchHandle:
    """What ``apply`` returns: what it patched, how to undo it, and live statistics."""

    technique: str
    targets: list[str] = field(default_factory=list)   # modules patched, for the report
    undo: list = field(default_factory=list)           # callables run in reverse on remove()
    stats: Any = None                                  # callable -> dict, for the report

    def remove(self) -> None:
        while self.undo:
            self.undo.pop()()

    def statistics(self) -> dict:
        return dict(self.stats()) if callable(self.stats) else {}


def available() -> dict[str, Any]:
    """The implemented techniques, as name -> module, in application order."""
    return {name: importlib.import_module(_MODULES[name]) for name in TECHNIQUES if name in _MODULES}


def register_hook(module: torch.nn.Module, hook, name: str):
    """Register a diffusers ``hook`` on ``module``; return an undo that removes it and, when
    the registry was created here and is left empty, the registry and instance ``forward``."""
    from diffusers.hooks import HookRegistry

    had_registry = hasattr(module, "_diffusers_hook")
    had_forward = "forward" in vars(module)
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)

    def undo():
        registry = module._diffusers_hook
        registry.remove_hook(name, recurse=False)
        if not registry.hooks and not had_registry:
            del module._diffusers_hook
            if "forward" in vars(module) and not had_forward:
                del module.forward

    return undo
