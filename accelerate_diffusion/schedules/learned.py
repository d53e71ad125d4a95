"""Learned schedules shipped for specific models; the presets use them in place of the heuristics.

A searched front fits one model: its block count, its components and, since the search scored
quality on that model's own outputs, its weights. A shipped front folder in ``schedules/data``
may therefore hold a ``model.json``: the fingerprint of the denoiser it was searched on (class
and a hash of its config) and, per preset, the front point that replaces the preset's heuristic
schedule. The points were picked by ``scripts/ship_learned_schedules.py``: for each preset, the
most faithful front point at least as fast (at most 1.25x faster) and as faithful as the
heuristic it replaces, scored on validation prompts the search never saw.
A model with no matching folder keeps the heuristic schedules. At other step counts a pick is
mapped in normalised time (``CacheSchedule.resample``) over the range measured to transfer
(``SERVED``); outside it the preset's heuristic runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os

from .cache_schedule import DATA_DIR, CacheSchedule

MODEL_FILE = "model.json"
# Step counts a pick serves, as fractions of its searched count: measured on the demo DiT from 25
# steps at 20, 28 and 50 (benchmarks/bench_transfer.py, docs/presets.md#learned-schedules-at-other-step-counts).
SERVED = (0.8, 2.0)


def served_steps_range(searched_steps: int) -> tuple[int, int]:
    """The step counts a schedule searched at ``searched_steps`` is mapped to (``SERVED``)."""
    return (max(1, math.ceil(SERVED[0] * searched_steps - 1e-9)), int(SERVED[1] * searched_steps + 1e-9))


def fingerprint(denoiser) -> str:
    """``Class:hash`` of the denoiser's config (private ``_`` keys left out), stable across
    save/load. Two models of the same architecture and config share it: a schedule learned
    on one is a sensible start for a fine-tune of it, not for another architecture."""
    config = {k: v for k, v in dict(getattr(denoiser, "config", {})).items() if not k.startswith("_")}
    text = json.dumps(config, sort_keys=True, default=str)
    return f"{type(denoiser).__name__}:{hashlib.sha1(text.encode()).hexdigest()[:16]}"


@functools.lru_cache(maxsize=1)
def _index(data_dir: str = DATA_DIR) -> dict[str, str]:
    """fingerprint -> folder, over the shipped fronts that carry a model.json."""
    out = {}
    if os.path.isdir(data_dir):
        for name in sorted(os.listdir(data_dir)):
            path = os.path.join(data_dir, name, MODEL_FILE)
            if os.path.isfile(path):
                with open(path) as f:
                    out[json.load(f)["fingerprint"]] = os.path.join(data_dir, name)
    return out


def folder_for(denoiser) -> str | None:
    """The shipped front folder searched on this model, or None."""
    return _index().get(fingerprint(denoiser))


def served_steps(model: str, data_dir: str = DATA_DIR) -> int | None:
    """The step count the shipped learned schedules of a model (by name, e.g. ``demo-dit``) were
    searched at: front ends default to it so that ``balanced``/``fast``/``max`` run them."""
    if os.path.isdir(data_dir):
        for name in sorted(os.listdir(data_dir)):
            path = os.path.join(data_dir, name, MODEL_FILE)
            if os.path.isfile(path):
                with open(path) as f:
                    info = json.load(f)
                if info.get("model") == model and info.get("steps"):
                    return int(info["steps"])
    return None


def preset_schedule(denoiser, preset: str) -> CacheSchedule | None:
    """The learned schedule a preset uses on this model, or None (the preset keeps its heuristic)."""
    folder = folder_for(denoiser)
    if folder is None:
        return None
    with open(os.path.join(folder, MODEL_FILE)) as f:
        picks = json.load(f).get("presets", {})
    if preset not in picks:
        return None
    sched = CacheSchedule.load(os.path.join(folder, picks[preset]["file"]))
    sched.name = f"{os.path.basename(folder)}/{picks[preset]['file'][:-5]}"
    return sched
