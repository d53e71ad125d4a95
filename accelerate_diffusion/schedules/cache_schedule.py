"""Block-cache schedules: which DiT sub-modules recompute at which step.

A schedule is a boolean array ``S[step][block][component]``: True = recompute, False =
reuse the output cached at that component's last recompute. Blocks are numbered in
execution order over all block groups of the family (Flux: double blocks, then single
blocks); components are the union of the groups' component names, and entries for a
component a block does not have are kept True and never written to JSON.

The JSON form is what the search writes and the runtime reads::

    {"name": "fora:2", "model_family": "pixart", "num_inference_steps": 20,
     "num_blocks": 28, "components": ["attn1", "attn2", "ff"],
     "schedule": {"000": {"0": {"attn1": true, "attn2": true, "ff": true}, ...}, ...},
     "metrics": {...}}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np


@dataclass(frozen=True)
class ScheduleLayout:
    """The shape a schedule must have for one model: family and components of each block."""

    model_family: str
    block_components: tuple[tuple[str, ...], ...]

    @property
    def num_blocks(self) -> int:
        return len(self.block_components)

    @property
    def components(self) -> tuple[str, ...]:
        seen: list[str] = []
        for comps in self.block_components:
            seen += [c for c in comps if c not in seen]
        return tuple(seen)

    def present(self) -> np.ndarray:
        """[blocks, components] mask of the (block, component) pairs that exist."""
        comps = self.components
        mask = np.zeros((self.num_blocks, len(comps)), dtype=bool)
        for b, names in enumerate(self.block_components):
            for name in names:
                mask[b, comps.index(name)] = True
        return mask

    @classmethod
    def of(cls, family, denoiser=None, num_blocks: dict[str, int] | None = None) -> "ScheduleLayout":
        """The layout of a family row (``families.Family``) applied to a denoiser instance."""
        rows = []
        for group in family.block_groups:
            n = len(getattr(denoiser, group.attr)) if denoiser is not None else num_blocks[group.attr]
            rows += [tuple(group.components)] * n
        return cls(family.name, tuple(rows))


@dataclass
class CacheSchedule:
    """A recompute/reuse schedule plus its name and measured metrics."""

    name: str
    layout: ScheduleLayout
    recompute: np.ndarray                     # bool [steps, blocks, components]
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.recompute = np.asarray(self.recompute, dtype=bool)
        present = self.layout.present()
        expected = (self.layout.num_blocks, len(self.layout.components))
        if self.recompute.ndim != 3 or self.recompute.shape[1:] != expected:
            raise ValueError(f"schedule {self.name!r}: array shape {self.recompute.shape} does not match "
                             f"[steps, {expected[0]} blocks, {expected[1]} components]")
        if self.num_steps < 1:
            raise ValueError(f"schedule {self.name!r}: needs at least one step")
        self.recompute = self.recompute | ~present      # absent components: always "recompute" (no-op)
        if not self.recompute[0].all():
            raise ValueError(f"schedule {self.name!r}: step 0 must recompute everything (nothing is "
                             f"cached yet); found reuse at step 0")

    # -- shape -------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return self.recompute.shape[0]

    @property
    def num_blocks(self) -> int:
        return self.layout.num_blocks

    @property
    def components(self) -> tuple[str, ...]:
        return self.layout.components

    @property
    def model_family(self) -> str:
        return self.layout.model_family

    @classmethod
    def full(cls, layout: ScheduleLayout, num_steps: int, name: str = "full") -> "CacheSchedule":
        """Recompute everything at every step: identical to no caching."""
        return cls(name, layout, np.ones((num_steps, layout.num_blocks, len(layout.components)), bool))

    def copy(self, name: str | None = None) -> "CacheSchedule":
        return CacheSchedule(name or self.name, self.layout, self.recompute.copy(), dict(self.metrics))

    def __repr__(self) -> str:
        return (f"CacheSchedule({self.name!r}, {self.model_family}, {self.num_steps} steps, "
                f"{self.num_blocks} blocks, recompute {self.recompute_fraction():.0%})")

    def __eq__(self, other) -> bool:
        return (isinstance(other, CacheSchedule) and self.name == other.name
                and self.layout == other.layout and np.array_equal(self.recompute, other.recompute))

    # -- checks ------------------------------------------------------------------------
    def check_compatible(self, layout: ScheduleLayout) -> None:
        """Raise ValueError naming what differs between this schedule and the model's layout."""
        problems = []
        if self.model_family != layout.model_family:
            problems.append(f"model family: schedule {self.model_family!r}, model {layout.model_family!r}")
        if self.num_blocks != layout.num_blocks:
            problems.append(f"blocks: schedule {self.num_blocks}, model {layout.num_blocks}")
        for b, (mine, theirs) in enumerate(zip(self.layout.block_components, layout.block_components)):
            if set(mine) != set(theirs):
                problems.append(f"block {b} components: schedule {sorted(mine)}, model {sorted(theirs)}")
                break
        if problems:
            raise ValueError(f"block_cache: schedule {self.name!r} does not match this model: "
                             + "; ".join(problems))

    # -- steps -------------------------------------------------------------------------
    def resample(self, num_steps: int, keep: str = "time") -> "CacheSchedule":
        """The schedule for another step count, mapped in normalised time (step i of T starts at
        i / T of the noise schedule, which is the same noise level at every step count for a
        scheduler whose timesteps follow one curve: flow-matching Euler with a fixed shift, DDIM).

        The leading and trailing steps that recompute everything (the searched "full" ends) stay
        full over the same span of time: every new step that overlaps it. In between, each
        (block, component) recomputes where its searched recomputes were (``keep="time"``: the
        nearest new step to each, so the same number ``k`` of middle recomputes and the same
        stretches of the noise schedule without one), or keeps its density of recomputes
        (``keep="fraction"``: ``round(k * L' / L)`` of the ``L'`` middle steps, placed along the
        piecewise-linear cumulative count of its searched ones, so the MACs ratio stays). On the
        demo DiT's validation captions "time" sat on the heuristics' curve at 20 and 50 steps and
        "fraction" below it (benchmarks/bench_transfer.py --split val). At the searched count
        both are the identity."""
        if keep not in ("time", "fraction"):
            raise ValueError(f"resample.keep: {keep!r} is not allowed; allowed: 'time', 'fraction'")
        if num_steps == self.num_steps:
            return self
        if num_steps < 1:
            raise ValueError(f"schedule {self.name!r}: cannot resample to {num_steps} steps")
        T, N = self.num_steps, num_steps
        all_full = self.recompute.all(axis=(1, 2))
        first = int(np.argmin(all_full)) if not all_full.all() else T      # leading all-full steps (>= 1)
        last = int(np.argmin(all_full[::-1])) if first < T else 0           # trailing all-full steps
        out = np.ones((N, self.num_blocks, len(self.components)), bool)
        if first < T:
            # new step j covers [j/N, (j+1)/N): full if it overlaps [0, first/T) or [(T-last)/T, 1)
            new_first = min(N, -(-first * N // T))                            # ceil(first * N / T)
            new_last = N - (N * (T - last)) // T if last else 0              # j + 1 > N (T - last) / T
            new_last = min(new_last, N - new_first)
            a, b = new_first, N - new_last
            for block in range(self.num_blocks):
                for comp in range(len(self.components)):
                    out[a:b, block, comp] = False
                    column = self.recompute[:, block, comp]
                    for j in _map_column(column, first, T - last, T, a, b, N, keep):
                        out[j, block, comp] = True
        result = CacheSchedule(self.name, self.layout, out, dict(self.metrics))
        result.metrics["resampled_from"] = T
        return result

    def recompute_at(self, step: int, block: int, component: int) -> bool:
        if step >= self.num_steps:
            return True
        return bool(self.recompute[step, block, component])

    # -- cost --------------------------------------------------------------------------
    def recompute_fraction(self) -> float:
        """Fraction of existing (step, block, component) entries that recompute."""
        present = self.layout.present()
        return float(self.recompute[:, present].mean())

    def macs_fraction(self, component_macs: np.ndarray | None = None) -> float:
        """Fraction of component MACs executed; ``component_macs`` is [blocks, components]
        (from :func:`measure_component_macs`); without it every component weighs the same."""
        present = self.layout.present()
        weights = present.astype(float) if component_macs is None else np.asarray(component_macs, float) * present
        total = weights.sum() * self.num_steps
        return float((self.recompute * weights[None]).sum() / total) if total else 1.0

    def macs_ratio(self, component_macs: np.ndarray, denoiser_macs: float) -> float:
        """Estimated speedup in denoiser MACs (work outside the components always runs)."""
        comp = float(np.asarray(component_macs).sum())
        other = max(denoiser_macs - comp, 0.0)
        executed = other + comp * self.macs_fraction(component_macs)
        return denoiser_macs / executed if executed else float("inf")

    # -- flat bitstring (for searches) ---------------------------------------------------
    def to_bits(self) -> np.ndarray:
        """The free bits: every existing entry of steps 1..T-1, flattened (step 0 is fixed)."""
        return self.recompute[1:, self.layout.present()].reshape(-1).copy()

    @classmethod
    def from_bits(cls, layout: ScheduleLayout, num_steps: int, bits: Iterable[bool],
                  name: str = "searched") -> "CacheSchedule":
        present = layout.present()
        bits = np.asarray(list(bits), dtype=bool)
        need = (num_steps - 1) * int(present.sum())
        if bits.size != need:
            raise ValueError(f"schedule {name!r}: expected {need} bits for {num_steps} steps, got {bits.size}")
        arr = np.ones((num_steps, layout.num_blocks, len(layout.components)), bool)
        arr[1:, present] = bits.reshape(num_steps - 1, -1)
        return cls(name, layout, arr)

    # -- JSON --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        width = max(3, len(str(self.num_steps - 1)))
        comps = self.components
        schedule = {
            f"{s:0{width}d}": {
                str(b): {c: bool(self.recompute[s, b, comps.index(c)]) for c in names}
                for b, names in enumerate(self.layout.block_components)
            }
            for s in range(self.num_steps)
        }
        return {"name": self.name, "model_family": self.model_family,
                "num_inference_steps": self.num_steps, "num_blocks": self.num_blocks,
                "components": list(comps), "schedule": schedule, "metrics": _jsonable(self.metrics)}

    @classmethod
    def from_dict(cls, data: dict) -> "CacheSchedule":
        """Parse the JSON form; errors name the missing or inconsistent field."""
        name = data.get("name", "unnamed")
        for key in ("model_family", "num_inference_steps", "num_blocks", "components", "schedule"):
            if key not in data:
                raise ValueError(f"schedule {name!r}: missing field {key!r}")
        steps, blocks, comps = data["num_inference_steps"], data["num_blocks"], list(data["components"])
        sched = data["schedule"]
        step_keys = sorted(sched, key=int)
        if [int(k) for k in step_keys] != list(range(steps)):
            raise ValueError(f"schedule {name!r}: step keys must be 0..{steps - 1} "
                             f"(num_inference_steps={steps}), got {len(step_keys)} steps")
        first = sched[step_keys[0]]
        if sorted(first, key=int) != [str(b) for b in range(blocks)]:
            raise ValueError(f"schedule {name!r}: block keys must be 0..{blocks - 1} (num_blocks={blocks})")
        block_components = []
        for b in range(blocks):
            names = tuple(c for c in comps if c in first[str(b)])
            unknown = set(first[str(b)]) - set(comps)
            if unknown:
                raise ValueError(f"schedule {name!r}: block {b} has components {sorted(unknown)} "
                                 f"not listed in 'components' {comps}")
            block_components.append(names)
        layout = ScheduleLayout(data["model_family"], tuple(block_components))
        if list(layout.components) != [c for c in comps if c in layout.components]:
            raise ValueError(f"schedule {name!r}: inconsistent components")
        arr = np.ones((steps, blocks, len(layout.components)), bool)
        lc = layout.components
        for s, key in enumerate(step_keys):
            for b in range(blocks):
                entry = sched[key].get(str(b))
                if entry is None or set(entry) != set(block_components[b]):
                    raise ValueError(f"schedule {name!r}: step {key} block {b} must list components "
                                     f"{list(block_components[b])}")
                for c, value in entry.items():
                    if not isinstance(value, bool):
                        raise ValueError(f"schedule {name!r}: step {key} block {b} {c}: expected true/false, "
                                         f"got {value!r}")
                    arr[s, b, lc.index(c)] = value
        return cls(name, layout, arr, dict(data.get("metrics", {})))

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CacheSchedule":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def _map_column(column: np.ndarray, a: int, b: int, T: int, new_a: int, new_b: int, N: int,
                keep: str = "fraction") -> list[int]:
    """The new middle steps (in ``[new_a, new_b)`` of ``N``) where one (block, component)
    recomputes, from its searched ``column`` over ``[a, b)`` of ``T`` (see ``resample``)."""
    steps = [s for s in range(a, b) if column[s]]
    length, new_length = b - a, new_b - new_a
    count = min(int(np.floor(len(steps) * new_length / length + 0.5)), new_length) if length else 0
    if keep == "time":
        count = min(len(steps), new_length)
    if count <= 0:
        return []
    # events, in normalised time, anchored at the last full step before the middle and the
    # first step after it: cumulative count F(x) is piecewise linear through (x_i, i)
    xs = np.array([(a - 1) / T] + [s / T for s in steps] + [b / T])
    ys = np.arange(len(xs), dtype=float)
    targets = np.arange(1, count + 1) * (len(steps) + 1) / (count + 1)
    times = np.interp(targets, ys, xs)
    taken: list[int] = []
    for t in times:
        j = min(max(int(np.floor(t * N + 0.5)), new_a), new_b - 1)
        if j in taken:                       # nearest free step, later first
            free = [k for k in range(new_a, new_b) if k not in taken]
            j = min(free, key=lambda k: (abs(k - t * N), -k))
        taken.append(j)
    return taken


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def measure_component_macs(pipe, call_kwargs: dict, family=None) -> tuple[np.ndarray, int]:
    """MACs of one denoiser call: per component [blocks, components], and the whole call.

    Runs the pipeline once with one step (``call_kwargs`` are its usual arguments), counting
    each component with ``macs.MacCounter``. Weights for :meth:`CacheSchedule.macs_fraction`.
    """
    from diffusers.hooks import ModelHook

    from ..families import family_of, find_denoiser
    from ..journal import Journal
    from ..macs import MacCounter

    denoiser = find_denoiser(pipe)[1]
    family = family or family_of(denoiser)
    layout = ScheduleLayout.of(family, denoiser)
    comps = layout.components
    macs = np.zeros((layout.num_blocks, len(comps)))
    total = [0, 0]                                   # MACs, calls
    name = "accelerate_diffusion.measure_macs"

    class _Count(ModelHook):
        def __init__(self, slot):
            super().__init__()
            self.slot = slot

        def new_forward(self, module, *args, **kwargs):
            with MacCounter() as counter:
                out = self.fn_ref.original_forward(*args, **kwargs)
            if self.slot is None:
                total[0] += counter.macs
                total[1] += 1
            else:
                macs[self.slot] += counter.macs
            return out

    hooked = [(denoiser, None)]
    for b, (_, block) in enumerate(family.blocks(denoiser)):
        for c in layout.block_components[b]:
            module = getattr(block, c, None)
            if module is not None:
                hooked.append((module, (b, comps.index(c))))
    journal = Journal()
    try:
        for module, slot in hooked:
            journal.register_hook(module, _Count(slot), name)
        pipe(**{**call_kwargs, "num_inference_steps": 1})
    finally:
        journal.rollback()
    calls = max(total[1], 1)
    return macs / calls, total[0] // calls


DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


def shipped() -> list[str]:
    """Names of the schedule files shipped in ``schedules/data``."""
    if not os.path.isdir(DATA_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(DATA_DIR) if f.endswith(".json"))
