"""Hand-made block-cache schedules: presets now, seeds for a schedule search later.

Each generator takes a :class:`ScheduleLayout` and a step count and returns a
:class:`CacheSchedule`, so it fits any model of the family and any number of steps.
:func:`from_spec` builds one from a short string, the form configs and presets use::

    "full"                                  recompute everything (no caching)
    "fora:2"                                recompute all every 2nd step (FORA)
    "component:ff,k=6,window=0.6,every=2"   reuse ff in 6 evenly spaced blocks over the middle 60% of steps
    "tgate:gate=0.5"                        reuse cross-attention from half-way on (TGATE-like)
    "fora:3,first=2,last=1"                 any of them with the first 2 and last step full
"""

from __future__ import annotations

import os

import numpy as np

from .cache_schedule import DATA_DIR, CacheSchedule, ScheduleLayout, shipped

HEURISTICS = ("full", "fora", "component", "tgate")


def full(layout: ScheduleLayout, num_steps: int) -> CacheSchedule:
    return CacheSchedule.full(layout, num_steps)


def fora(layout: ScheduleLayout, num_steps: int, n: int = 2, first: int = 1, last: int = 0,
         components: tuple[str, ...] | None = None) -> CacheSchedule:
    """FORA: every component (or only ``components``) recomputes every ``n``-th step."""
    _check_int("fora", "n", n, 1)
    sched = CacheSchedule.full(layout, num_steps, name=f"fora:{n}")
    cols = _columns(layout, components, "fora")
    for s in range(num_steps):
        if s % n:
            sched.recompute[s][:, cols] = False
    return with_full_ends(_fix(sched), first, last)


def component_blocks(layout: ScheduleLayout, num_steps: int, component: str = "ff", k: int | None = None,
                     window: float = 0.5, every: int = 2, first: int = 1, last: int = 0) -> CacheSchedule:
    """Reuse ``component`` ("all" or "a+b" for several) in ``k`` evenly spaced blocks that
    have it, over the centred ``window`` fraction of steps, recomputing every ``every``-th step."""
    cols = _columns(layout, None if component == "all" else tuple(component.split("+")), "component")
    present = layout.present()
    holders = [b for b in range(layout.num_blocks) if present[b, cols].any()]
    k = len(holders) // 2 if k is None else k
    _check_int("component", "k", k, 0, len(holders))
    _check_frac("component", "window", window)
    _check_int("component", "every", every, 1)
    chosen = [holders[i] for i in np.unique(np.round(np.linspace(0, len(holders) - 1, k)).astype(int))] if k else []
    length = int(round(window * num_steps))
    start = (num_steps - length) // 2
    sched = CacheSchedule.full(layout, num_steps, name=f"component:{component},k={k},window={window},every={every}")
    for s in range(start, start + length):
        if (s - start) % every:
            for b in chosen:
                sched.recompute[s, b, cols] = False
    return with_full_ends(_fix(sched), first, last)


def tgate(layout: ScheduleLayout, num_steps: int, gate: float = 0.5, components: tuple[str, ...] | None = None,
          first: int = 1, last: int = 0) -> CacheSchedule:
    """TGATE-like: cross-attention recomputes up to the gate step, then is reused to the end.

    ``gate`` is a step index (int) or a fraction of the steps (float < 1). Families with joint
    text-image attention (SD3, Flux) have no cross-attention: pass ``components`` explicitly.
    """
    if components is None:
        components = tuple(c for c in layout.components if c == "attn2")
        if not components:
            raise ValueError(f"tgate: the {layout.model_family} family has no cross-attention component "
                             f"(components: {', '.join(layout.components)}); pass components=...")
    cols = _columns(layout, components, "tgate")
    gate_step = int(round(gate * num_steps)) if isinstance(gate, float) and gate < 1 else int(gate)
    _check_int("tgate", "gate", gate_step, 1)
    sched = CacheSchedule.full(layout, num_steps, name=f"tgate:gate={gate}")
    sched.recompute[gate_step:][:, :, cols] = False
    return with_full_ends(_fix(sched), first, last)


def with_full_ends(schedule: CacheSchedule, first: int = 1, last: int = 0) -> CacheSchedule:
    """Force the first ``first`` and last ``last`` steps to recompute everything."""
    _check_int("schedule", "first", first, 0)
    _check_int("schedule", "last", last, 0)
    out = schedule.copy()
    out.recompute[:first] = True
    if last:
        out.recompute[-last:] = True
    if first > 1 or last:
        out.name = f"{schedule.name},first={first},last={last}"
    return out


_GENERATORS = {"full": full, "fora": fora, "component": component_blocks, "tgate": tgate}
_POSITIONAL = {"full": (), "fora": ("n",), "component": ("component",), "tgate": ("gate",)}


def from_spec(spec: str, layout: ScheduleLayout, num_steps: int) -> CacheSchedule:
    """Build a schedule from a string like ``"fora:2"`` or ``"component:ff,k=4,last=1"``."""
    kind, _, rest = spec.strip().partition(":")
    if kind not in _GENERATORS:
        raise ValueError(f"block_cache.schedule: unknown heuristic {kind!r} in {spec!r}; allowed: "
                         f"{', '.join(HEURISTICS)} (e.g. 'fora:2'), a schedule file path, or a shipped name")
    kwargs, positional = {}, list(_POSITIONAL[kind])
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            if not positional:
                raise ValueError(f"block_cache.schedule: {spec!r}: unexpected argument {part!r}")
            key, value = positional.pop(0), part
        kwargs[key.strip()] = _parse_value(value.strip())
    if "components" in kwargs:
        kwargs["components"] = tuple(str(kwargs["components"]).split("+"))
    try:
        sched = _GENERATORS[kind](layout, num_steps, **kwargs)
    except TypeError as exc:
        raise ValueError(f"block_cache.schedule: {spec!r}: {exc}") from None
    sched.name = spec.strip()
    return sched


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _columns(layout: ScheduleLayout, components, who: str) -> list[int]:
    comps = layout.components
    if components is None:
        return list(range(len(comps)))
    unknown = [c for c in components if c not in comps]
    if unknown:
        raise ValueError(f"{who}: unknown component(s) {', '.join(unknown)} for the {layout.model_family} "
                         f"family; allowed: {', '.join(comps)}")
    return [comps.index(c) for c in components]


def _fix(sched: CacheSchedule) -> CacheSchedule:
    sched.recompute[0] = True
    sched.recompute |= ~sched.layout.present()[None]
    return sched


def _check_int(who, name, value, lo=None, hi=None):
    if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) or (
            hi is not None and value > hi):
        raise ValueError(f"{who}.{name}: {value!r} must be an integer in [{lo}, {'inf' if hi is None else hi}]")


def _check_frac(who, name, value):
    if not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{who}.{name}: {value!r} must be a number in [0, 1]")


def is_heuristic(value) -> bool:
    """True when a config value names a heuristic (built per step count), not a fixed schedule."""
    return (isinstance(value, str) and not os.path.isfile(value) and value not in shipped()
            and not value.endswith(".json"))


def resolve_schedule(value, layout: ScheduleLayout, num_steps: int) -> CacheSchedule:
    """A schedule for this model and step count from a config value: a CacheSchedule, a dict
    (JSON form), a file path, a shipped name, or a heuristic spec like ``"fora:2"``.

    Fixed schedules (object, dict, file) are checked against the layout (ValueError naming
    what differs) and returned as they are; the caller resamples them to the step count.
    """
    if isinstance(value, CacheSchedule):
        sched = value
    elif isinstance(value, dict):
        sched = CacheSchedule.from_dict(value)
    elif isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if os.path.isfile(text):
            sched = CacheSchedule.load(text)
        elif text in shipped():
            sched = CacheSchedule.load(os.path.join(DATA_DIR, text + ".json"))
        elif text.endswith(".json"):
            raise ValueError(f"block_cache.schedule: file {text!r} not found")
        else:
            return from_spec(text, layout, num_steps)
    else:
        raise ValueError(f"block_cache.schedule: expected a CacheSchedule, dict, file path or heuristic "
                         f"name, got {type(value).__name__}")
    sched.check_compatible(layout)
    return sched
