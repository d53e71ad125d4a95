"""Searched fronts on disk, and the rule that picks a point from one.

A front folder holds Pareto-optimal points, each a JSON file with ``metrics``
(``quality_loss``, ``macs_ratio``): block-cache schedules from the ECAD search (``search.py``)
or DeepCache configurations from the UNet calibration (``search_deepcache.py``). The techniques
read them here (``block_cache={"schedule_dir": ..., "max_quality_loss": ...}``); nothing in this
module runs a model.
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable

from .cache_schedule import DATA_DIR, CacheSchedule

DEEPCACHE = "deepcache"
# Budget used to pick a front point when only a preset is given: the smallest quality loss
# among points at least this fast (MACs ratio); "max" takes the fastest point.
PRESET_MACS_TARGET = {"off": 1.5, "quality": 1.3, "balanced": 1.5, "fast": 2.0, "max": math.inf}


def resolve_front_dir(schedule_dir: str | os.PathLike) -> str:
    """A front folder: the path itself, or the name of a front shipped in ``schedules/data``."""
    folder = os.fspath(schedule_dir)
    if not os.path.isdir(folder) and os.path.isdir(os.path.join(DATA_DIR, folder)):
        folder = os.path.join(DATA_DIR, folder)
    return folder


def front_points(schedule_dir: str | os.PathLike, load: Callable[[str], object | None], what: str) -> list:
    """The points of a front folder that carry search metrics (``quality_loss``, ``macs_ratio``),
    each with ``metrics["path"]``; ``load(path)`` returns a point or None for other files."""
    folder = resolve_front_dir(schedule_dir)
    if not os.path.isdir(folder):
        shipped = sorted(d for d in os.listdir(DATA_DIR) if os.path.isdir(os.path.join(DATA_DIR, d))) \
            if os.path.isdir(DATA_DIR) else []
        raise ValueError(f"schedule_dir: folder not found: {folder}; shipped fronts: {', '.join(shipped) or 'none'}")
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        point = load(path)
        if point is not None and "quality_loss" in point.metrics and "macs_ratio" in point.metrics:
            point.metrics["path"] = path
            out.append(point)
    if not out:
        raise ValueError(f"schedule_dir: no {what} with search metrics (quality_loss, macs_ratio) in {folder}")
    return out


def load_front(schedule_dir: str | os.PathLike) -> list[CacheSchedule]:
    """The schedules in a folder that carry search metrics (``quality_loss`` and ``macs_ratio``).
    ``schedule_dir`` is a path or the name of a front shipped in ``schedules/data``."""

    def load(path):
        try:
            return CacheSchedule.load(path)
        except (ValueError, KeyError, json.JSONDecodeError):
            return None

    return front_points(schedule_dir, load, "schedule")


def pick(schedule_dir: str | os.PathLike, max_quality_loss: float | None = None,
         preset: str = "balanced") -> CacheSchedule:
    """A front point: the fastest with ``quality_loss <= max_quality_loss`` or, with no budget,
    the most faithful at least as fast as the preset's MACs target (``PRESET_MACS_TARGET``)."""
    return pick_point(load_front(schedule_dir), schedule_dir, max_quality_loss, preset)


def pick_point(front: list, source, max_quality_loss: float | None = None, preset: str = "balanced",
               what: str = "schedule"):
    """The rule of :func:`pick` over any front whose points carry ``metrics`` (block-cache
    schedules, DeepCache points); ``source`` and ``what`` name them in errors."""
    if max_quality_loss is not None:
        if isinstance(max_quality_loss, bool) or not isinstance(max_quality_loss, (int, float)) or max_quality_loss < 0:
            raise ValueError(f"max_quality_loss: {max_quality_loss!r} must be a number >= 0")
        ok = [p for p in front if p.metrics["quality_loss"] <= max_quality_loss]
        if not ok:
            best = min(front, key=lambda p: p.metrics["quality_loss"])
            raise ValueError(f"max_quality_loss={max_quality_loss}: no {what} in {source} is that close "
                             f"(smallest {best.metrics.get('quality_metric', '')} loss is "
                             f"{best.metrics['quality_loss']:.4g})")
        return max(ok, key=lambda p: p.metrics["macs_ratio"])
    target = PRESET_MACS_TARGET.get(preset, PRESET_MACS_TARGET["balanced"])
    fast_enough = [p for p in front if p.metrics["macs_ratio"] >= target]
    if not fast_enough:
        return max(front, key=lambda p: p.metrics["macs_ratio"])
    return min(fast_enough, key=lambda p: (p.metrics["quality_loss"], -p.metrics["macs_ratio"]))


# -- DeepCache calibrations ----------------------------------------------------------------------

@dataclass
class DeepCachePoint:
    """A calibrated DeepCache configuration with its measured metrics (one front-NN.json)."""

    name: str
    config: dict                       # deepcache Config fields
    num_steps: int
    full_step_indices: list
    metrics: dict = field(default_factory=dict)
    model_family: str = "unet"

    def to_dict(self) -> dict:
        return {"technique": DEEPCACHE, "name": self.name, "model_family": self.model_family,
                "num_inference_steps": self.num_steps, "deepcache": self.config,
                "full_step_indices": list(self.full_step_indices), "metrics": self.metrics}

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DeepCachePoint":
        with open(path) as f:
            data = json.load(f)
        if data.get("technique") != DEEPCACHE:
            raise ValueError(f"{path}: not a DeepCache calibration file (no \"technique\": \"deepcache\")")
        if not isinstance(data.get("deepcache"), dict):
            raise ValueError(f"{path}: no \"deepcache\" settings")
        return cls(data["name"], data["deepcache"], data["num_inference_steps"], data.get("full_step_indices", []),
                   data.get("metrics", {}), data.get("model_family", "unet"))

    def label(self) -> str:
        return deepcache_label(self.config)



def deepcache_label(config: dict) -> str:
    c = config
    text = f"N={c['cache_interval']} b={c['cache_branch']}"
    if c.get("schedule") == "nonuniform":
        text += f" nonuni c={c['center']}"
    if c.get("always_full_start", 1) > 1:
        text += f" first={c['always_full_start']}"
    if c.get("always_full_end", 0):
        text += f" last={c['always_full_end']}"
    if c.get("forecast", 0):
        text += f" forecast={c['forecast']}"
    return text




def _is_point_file(path: str) -> bool:
    try:
        with open(path) as f:
            data = json.load(f)
        return data.get("technique") == DEEPCACHE and isinstance(data.get(DEEPCACHE), dict)
    except (OSError, ValueError, AttributeError):
        return False


def is_deepcache(target) -> bool:
    """Whether ``target`` (a front folder, a front file, or a point) is a DeepCache calibration."""
    if isinstance(target, DeepCachePoint):
        return True
    if not isinstance(target, (str, os.PathLike)):
        return False
    path = os.fspath(target)
    if path.endswith(".json") and os.path.isfile(path):
        return _is_point_file(path)
    folder = resolve_front_dir(path)
    return os.path.isdir(folder) and any(_is_point_file(p) for p in glob.glob(os.path.join(folder, "front-*.json")))


def load_deepcache_front(schedule_dir: str | os.PathLike) -> list[DeepCachePoint]:
    """The DeepCache points (with ``quality_loss`` and ``macs_ratio``) in a calibration folder."""
    return front_points(schedule_dir, lambda path: DeepCachePoint.load(path) if _is_point_file(path) else None,
                        "DeepCache point")


def pick_deepcache(schedule_dir: str | os.PathLike, max_quality_loss: float | None = None,
                   preset: str = "balanced") -> DeepCachePoint:
    """A front point, by the DiT search's rule (``search.pick``): the fastest with
    ``quality_loss <= max_quality_loss`` or, with no budget, the most faithful at least as fast
    as the preset's MACs target."""
    return pick_point(load_deepcache_front(schedule_dir), schedule_dir, max_quality_loss, preset, "DeepCache point")
