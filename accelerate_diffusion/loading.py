"""Pipelines by name, for the command line, the app, eval and search.

A name is a tiny built-in test pipeline (``sd``, ``sdxl``, ``pixart``, ``sd3``, ``flux``,
``wan``), a shipped demo model (``demo-dit``, ``demo-unet``, ``demo-ar_video``), a local
folder, or a diffusers model id in the local Hugging Face cache. A name that is none of these
is refused in one line that lists what is allowed.
"""

from __future__ import annotations

import json
import os

import torch

from .families import TECHNIQUES


def demo_names() -> list[str]:
    from . import demo

    return [f"demo-{kind}" for kind in (*demo.KINDS, *demo.VIDEO_KINDS)]


def known_names() -> list[str]:
    from . import testing

    return [*testing.PIPELINES, *demo_names()]


def load_pipeline(name: str, size: str = "micro", device: str = "cpu", dtype: str = "float32"):
    """A tiny test pipeline by short name, a demo model, or a diffusers id / local path."""
    from . import demo, testing

    if name in testing.PIPELINES:
        return testing.make_pipeline(name, size)
    kinds = (*demo.KINDS, *demo.VIDEO_KINDS)
    if name == "demo" or name.startswith("demo-") or name in kinds:
        kind = name[len("demo-"):] if name.startswith("demo-") else name
        if not name.startswith("demo-") or kind not in kinds:
            hint = f" (did you mean demo-{kind}?)" if kind in kinds else ""
            raise ValueError(f"--model: unknown demo model {name!r}{hint}; demo models: {', '.join(demo_names())}")
        pipe = _quietly(demo.load_pipeline, kind)
    else:
        pipe = _from_pretrained(name, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _quietly(load, *args):
    """Load without transformers' weight-loading progress bar (a CLI prints its own lines)."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        return load(*args)
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def _from_pretrained(name: str, dtype: str):
    """Load a local folder or a hub id; any failure is one line naming --model and what is allowed."""
    import contextlib
    import io
    import warnings

    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import logging as hub_logging

    allowed = f"built-in names: {', '.join(known_names())}"
    # A hub id is "name" or "org/name"; anything else is meant as a folder.
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_local and not os.path.isdir(os.path.expanduser(name)):
        raise ValueError(f"--model: local folder {name!r} does not exist; {allowed}")
    levels = (diffusers_logging.get_verbosity(), hub_logging.get_verbosity())
    diffusers_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return DiffusionPipeline.from_pretrained(os.path.expanduser(name), dtype=getattr(torch, dtype))
    except Exception as exc:          # hub, network, config and weight errors alike: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if os.path.isdir(os.path.expanduser(name)):
            where = f"--model: cannot load the local folder {name!r} as a diffusers pipeline"
        else:
            where = (f"--model: {name!r} is not a built-in name or a local folder, and not a diffusers "
                     f"model id that could be loaded (misspelled, or not in the local cache while the hub "
                     f"is unreachable)")
        raise ValueError(f"{where} [{type(exc).__name__}: {first.split(' (')[0][:120]}]; {allowed}") from None
    finally:
        diffusers_logging.set_verbosity(levels[0])
        hub_logging.set_verbosity(levels[1])


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``["guidance.threshold=0.99", "deepcache=off"]`` -> ``{"guidance": {"threshold": 0.99}, ...}``."""
    overrides: dict[str, dict | bool] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set: expected technique.field=value or technique=on|off, got {item!r}")
        technique, _, fieldname = key.partition(".")
        if technique not in TECHNIQUES:
            raise ValueError(f"--set: unknown technique {technique!r}; allowed: {', '.join(TECHNIQUES)}")
        if not fieldname:
            if raw not in ("on", "off"):
                raise ValueError(f"--set {technique}: expected on or off, got {raw!r}")
            overrides[technique] = raw == "on"
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        entry = overrides.setdefault(technique, {})
        if not isinstance(entry, dict):
            raise ValueError(f"--set {technique}: cannot mix on/off with field values")
        entry[fieldname] = value
    return overrides
