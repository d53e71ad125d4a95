"""Schedules: which parts of the denoiser run at which step (block caching and searches)."""

from .cache_schedule import CacheSchedule, ScheduleLayout, measure_component_macs, shipped
from .heuristics import component_blocks, fora, from_spec, full, resolve_schedule, tgate, with_full_ends

__all__ = ["CacheSchedule", "ScheduleLayout", "measure_component_macs", "resolve_schedule", "shipped",
           "component_blocks", "fora", "from_spec", "full", "tgate", "with_full_ends"]
