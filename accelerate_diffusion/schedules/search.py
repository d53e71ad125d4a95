"""Learned block-cache schedules (ECAD): NSGA-II over the schedule bitstring, with a Pareto front.

The genome is :meth:`CacheSchedule.to_bits` (every existing step x block x component entry
of steps 1..T-1; step 0 always recomputes). pymoo's NSGA-II does the evolution: 4-point
crossover (p=0.9), bit-flip mutation (p=0.01 per bit), one constraint "at least one bit
reuses" (the all-True schedule is the baseline itself). Two objectives, both minimised:

- **quality loss** on calibration prompts vs the uncached outputs (same seeds): ``ssim``
  (1 - mean SSIM, default), ``psnr`` (1 - PSNR/100), ``lpips`` (when its weights are local) or
  ``clip`` (1 - CLIP score/100 with the demo CLIP);
- **compute**: the fraction of the uncached denoiser MACs the schedule executes. This is the
  schedule's MACs estimate weighted by *counted* per-component MACs
  (:func:`measure_component_macs`), so it is exact up to the work outside the components
  (embeddings, norms), which is counted once and always runs.

The uncached reference is generated once. Every evaluation goes to ``archive.jsonl`` (one line
each, flushed), and the pymoo algorithm is pickled after every generation, so an interrupted
search resumes where it stopped: the restored algorithm asks for the same offspring and the
archive answers those already evaluated. The front is taken over *all* evaluated candidates.

Output folder: ``front-NN.json`` (the Pareto front, CacheSchedule files with ``metrics``),
``evaluations.csv`` (every candidate), ``front.png`` (quality loss vs MACs ratio, heuristics
marked), ``archive.jsonl`` and ``search-state.pkl`` (resume).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import pickle
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .cache_schedule import CacheSchedule, ScheduleLayout, measure_component_macs

METRICS = ("ssim", "psnr", "lpips", "clip")
STATE_FILE = "search-state.pkl"
ARCHIVE_FILE = "archive.jsonl"
WARM_START = "warm start"      # origin prefix of seeds taken from an earlier front (--seed-front)


@dataclass
class SearchConfig:
    """Settings of one search. ``generations`` counts pymoo generations, the seeded initial
    population being the first; ``batch_size`` is prompts per pipeline call (0 = all)."""

    steps: int = 20
    generations: int = 10
    population: int = 72
    metric: str = "ssim"
    seed: int = 0
    crossover_points: int = 4
    crossover_prob: float = 0.9
    mutation_prob: float = 0.01      # per bit: a few flips per child on schedules of hundreds of bits
    batch_size: int = 0

    def validate(self) -> None:
        for name, lo in (("steps", 2), ("generations", 1), ("population", 2), ("crossover_points", 1),
                         ("batch_size", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"search.{name}: {value!r} must be an integer >= {lo}")
        if self.metric not in METRICS:
            raise ValueError(f"search.metric: unknown {self.metric!r}; allowed: {', '.join(METRICS)}")
        for name in ("crossover_prob", "mutation_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"search.{name}: {value!r} must be a number in [0, 1]")


@dataclass
class SearchResult:
    front: list[CacheSchedule]
    evaluations: int                      # distinct schedules run (uncached reference not counted)
    generations: int
    wall_seconds: float                   # over all sessions of this search (resumes included)
    out_dir: str
    files: dict = field(default_factory=dict)    # "front": the front-NN.json paths; "csv"; "plot"


# -- seeds ---------------------------------------------------------------------------------

def heuristic_seeds(layout: ScheduleLayout, steps: int) -> list[CacheSchedule]:
    """The hand-made schedules of ``heuristics.py`` that fit this model, to seed the search."""
    from .heuristics import from_spec

    n, comps = layout.num_blocks, layout.components
    mlp = "+".join(c for c in comps if c.startswith(("ff", "proj")))
    specs = ["fora:2", "fora:3", "fora:2,last=1", "fora:3,last=1", "fora:4",
             f"component:all,k={max(n // 2, 1)},window=0.8,every=2,last=1"]
    # Full early steps: on trained models reusing the first steps costs the most (docs/presets.md).
    specs += [f"fora:{k},first={first},last=1" for k in (2, 3, 4, 6) for first in (3, 5, 7)]
    if mlp:
        specs.append(f"component:{mlp},k={n},window=0.8,every=2,last=1")
    if "attn2" in comps:
        specs.append("tgate:gate=0.5")
    seeds, seen = [], set()
    for spec in specs:
        try:
            sched = from_spec(spec, layout, steps)
        except ValueError:
            continue
        key = _key(sched.to_bits())
        if sched.to_bits().all() or key in seen:     # no reuse (too few steps) or a duplicate
            continue
        seen.add(key)
        seeds.append(sched)
    return seeds


def _key(bits: np.ndarray) -> str:
    return np.packbits(np.asarray(bits, bool)).tobytes().hex()


def _unkey(key: str, n_var: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(key), np.uint8))[:n_var].astype(bool)


# -- evaluation ------------------------------------------------------------------------------

def _images(out) -> torch.Tensor:
    images = out.frames if hasattr(out, "frames") else out.images
    return torch.as_tensor(images).float()


class _Evaluator:
    """Runs a schedule on the calibration prompts and scores it against the uncached outputs."""

    def __init__(self, pipe, prompts: list[str], make_kwargs: Callable[[list[str], list[int]], dict],
                 layout: ScheduleLayout, config: SearchConfig):
        from ..families import family_of, find_denoiser

        self.pipe, self.prompts, self.make_kwargs, self.layout = pipe, prompts, make_kwargs, layout
        self.config = config
        size = config.batch_size or len(prompts)
        self.batches = [list(range(i, min(i + size, len(prompts)))) for i in range(0, len(prompts), size)]
        self.metric = self._metric(config.metric)
        self.reference = self._generate(None)
        family = family_of(find_denoiser(pipe)[1])
        first = self.batches[0]
        self.component_macs, self.call_macs = measure_component_macs(
            pipe, make_kwargs([prompts[i] for i in first], first), family)

    def _metric(self, name: str) -> Callable[[torch.Tensor, torch.Tensor], float]:
        from ..eval import fidelity

        if name == "ssim":
            return lambda ref, out: 1.0 - fidelity.ssim(ref, out)
        if name == "psnr":
            return lambda ref, out: 1.0 - min(fidelity.psnr(ref, out), 100.0) / 100.0
        if name == "lpips":
            from ..eval.models import Unavailable, load_lpips
            from ..eval.quality import lpips

            try:
                model = load_lpips()
            except Unavailable as exc:
                raise ValueError(f"search.metric: lpips is not available here ({exc}); use ssim or psnr")
            return lambda ref, out: float(np.mean(lpips(ref, out, model)))
        from ..eval.models import Unavailable, load_clip
        from ..eval.quality import clip_score

        try:
            adapter = load_clip("demo")
        except Unavailable as exc:
            raise ValueError(f"search.metric: clip needs the demo CLIP ({exc}); use ssim or psnr")
        return lambda ref, out: 1.0 - clip_score(out, self.prompts, adapter) / 100.0

    def _generate(self, schedule: CacheSchedule | None) -> torch.Tensor:
        from ..api import accelerate

        outs = []
        for batch in self.batches:
            kwargs = self.make_kwargs([self.prompts[i] for i in batch], batch)
            if schedule is None:
                with torch.no_grad():
                    outs.append(_images(self.pipe(**kwargs)))
                continue
            accelerate(self.pipe, "off", block_cache={"mode": "schedule", "schedule": schedule})
            try:
                with torch.no_grad():
                    outs.append(_images(self.pipe(**kwargs)))
            finally:
                self.pipe.acceleration.remove()
        return torch.cat(outs)

    def macs_fraction(self, schedule: CacheSchedule) -> float:
        return 1.0 / schedule.macs_ratio(self.component_macs, self.call_macs)

    def __call__(self, schedule: CacheSchedule) -> tuple[float, float]:
        """(quality loss, fraction of the uncached denoiser MACs executed)."""
        return float(self.metric(self.reference, self._generate(schedule))), self.macs_fraction(schedule)


# -- checkpoint and archive ---------------------------------------------------------------------

def _meta(layout: ScheduleLayout, config: SearchConfig, prompts: list[str], n_var: int) -> dict:
    """What must match for a checkpoint to be resumed (generations may grow)."""
    return {"model_family": layout.model_family, "block_components": [list(c) for c in layout.block_components],
            "steps": config.steps, "n_var": n_var, "prompts": list(prompts), "metric": config.metric,
            "population": config.population, "seed": config.seed}


def _check_resume(saved: dict, now: dict, out_dir: str) -> None:
    for key in now:
        if saved.get(key) != now[key]:
            what = "the model's blocks" if key in ("block_components", "n_var") else key
            old, new = saved.get(key), now[key]
            shown = "" if key in ("block_components", "prompts") else f" ({old!r} in the checkpoint, {new!r} now)"
            raise ValueError(f"search: the checkpoint in {out_dir} was made with a different {what}{shown}; "
                             f"use the same settings to resume, or a new --out (or resume=False) to start over")


def _read_archive(path: str, n_var: int) -> dict[str, dict]:
    archive = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:           # a line cut short by a crash
                    continue
                if row.get("n_var") == n_var:
                    archive[row["bits"]] = row
    return archive


def _atomic_pickle(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(obj, f)
    os.replace(tmp, path)


# -- the search ----------------------------------------------------------------------------------

def search(pipe, prompts: Sequence[str] | str | os.PathLike, out_dir: str | os.PathLike,
           config: SearchConfig | None = None, *, call_kwargs: dict | None = None, resume: bool = True,
           progress: bool = True, seeds: Sequence[CacheSchedule] | None = None, name: str | None = None,
           compare: Sequence[dict] = ()) -> SearchResult:
    """Search block-cache schedules for ``pipe`` and write the Pareto front to ``out_dir``.

    ``prompts``: calibration prompts (list or text file, one per line); prompt i uses seed
    ``config.seed + i``. ``call_kwargs``: extra pipeline arguments (guidance_scale, height...).
    ``seeds``: initial schedules (default: :func:`heuristic_seeds`; resampled to the step count).
    ``name``: prefix of the front schedules' names (default: the output folder's name).
    ``compare``: extra points for the plot, dicts with ``label``, ``macs_ratio``, ``quality_loss``.
    Rerunning with the same settings resumes; a larger ``generations`` continues a finished search.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.evaluator import Evaluator
    from pymoo.operators.crossover.pntx import PointCrossover
    from pymoo.operators.mutation.bitflip import BitflipMutation
    from pymoo.problems.static import StaticProblem
    from tqdm.auto import tqdm

    from ..eval.runner import read_prompts
    from ..families import family_of, find_denoiser
    from .search_problem import BitProblem

    config = config or SearchConfig()
    config.validate()
    prompts = read_prompts(prompts)
    found = find_denoiser(pipe)
    family = family_of(found[1]) if found else None
    if family is None or not family.block_groups:
        raise ValueError(f"search: {type(pipe).__name__} has no DiT denoiser with cacheable blocks "
                         f"(block caching needs a family with block groups in families.py; "
                         f"for a UNet, search_deepcache.search_deepcache calibrates DeepCache)")
    layout = ScheduleLayout.of(family, found[1])
    n_var = (config.steps - 1) * int(layout.present().sum())
    out_dir = os.fspath(out_dir)
    name = name or os.path.basename(os.path.normpath(out_dir)) or "ecad"
    os.makedirs(out_dir, exist_ok=True)
    state_path, archive_path = os.path.join(out_dir, STATE_FILE), os.path.join(out_dir, ARCHIVE_FILE)
    meta = _meta(layout, config, prompts, n_var)

    extra = dict(call_kwargs or {})

    def make_kwargs(batch_prompts: list[str], indices: list[int]) -> dict:
        return {**extra, "prompt": batch_prompts, "num_inference_steps": config.steps, "output_type": "pt",
                "generator": [torch.Generator("cpu").manual_seed(config.seed + i) for i in indices]}

    problem = BitProblem(n_var)
    seeds = [s.resample(config.steps) for s in (heuristic_seeds(layout, config.steps) if seeds is None else seeds)]
    for s in seeds:
        s.check_compatible(layout)
    origin = {_key(s.to_bits()): s.name for s in seeds}

    started = time.perf_counter()
    spent = 0.0
    if resume and os.path.isfile(state_path):
        with open(state_path, "rb") as f:
            saved = pickle.load(f)
        _check_resume(saved["meta"], meta, out_dir)
        algorithm, spent, done = saved["algorithm"], saved.get("wall_seconds", 0.0), saved["generations_done"]
        archive = _read_archive(archive_path, n_var)
    else:
        for path in (state_path, archive_path):
            if os.path.exists(path):
                os.remove(path)
        algorithm = NSGA2(pop_size=config.population, sampling=_initial(seeds, n_var, config),
                          crossover=PointCrossover(n_points=config.crossover_points, prob=config.crossover_prob),
                          mutation=BitflipMutation(prob=1.0, prob_var=config.mutation_prob),
                          eliminate_duplicates=True)
        # the loop below counts generations itself (so a finished search can be extended)
        algorithm.setup(problem, termination=("n_gen", 10**9), seed=config.seed, verbose=False)
        archive, done = {}, 0

    evaluator = _Evaluator(pipe, prompts, make_kwargs, layout, config)
    bar = tqdm(total=max(config.generations - done, 0) * config.population, desc="search",
               unit="cand", disable=not progress)
    with open(archive_path, "a") as log:
        while done < config.generations:
            pop = algorithm.ask()
            gen = done + 1
            if len(pop) != config.population:      # fewer offspring when duplicates were eliminated
                bar.total += len(pop) - config.population
                bar.refresh()
            F = np.zeros((len(pop), 2))
            for i, bits in enumerate(pop.get("X").astype(bool)):
                key = _key(bits)
                if key not in archive:
                    if bits.all():                             # infeasible: no reuse at all
                        loss, frac = 0.0, 1.0
                    else:
                        sched = CacheSchedule.from_bits(layout, config.steps, bits, name=f"{name}-candidate")
                        loss, frac = evaluator(sched)
                    archive[key] = {"bits": key, "n_var": n_var, "generation": gen, "quality_loss": loss,
                                    "macs_fraction": frac, "origin": origin.get(key, f"gen {gen}")}
                    log.write(json.dumps(archive[key]) + "\n")
                    log.flush()
                F[i] = archive[key]["quality_loss"], archive[key]["macs_fraction"]
                bar.update(1)
            G = (1.0 - (~pop.get("X").astype(bool)).sum(axis=1))[:, None]
            Evaluator().eval(StaticProblem(algorithm.problem, F=F, G=G), pop)
            algorithm.tell(infills=pop)
            done += 1
            _atomic_pickle({"meta": meta, "algorithm": algorithm, "generations_done": done,
                            "wall_seconds": spent + time.perf_counter() - started}, state_path)
            front = _front_rows(archive)
            bar.set_postfix(gen=done, front=len(front),
                            best_loss=f"{min(r['quality_loss'] for r in front):.4f}" if front else "-",
                            fastest=f"{1 / min(r['macs_fraction'] for r in front):.2f}x" if front else "-")
    bar.close()
    wall = spent + time.perf_counter() - started
    _atomic_pickle({"meta": meta, "algorithm": algorithm, "generations_done": done, "wall_seconds": wall},
                   state_path)
    return _write_outputs(archive, layout, config, prompts, out_dir, name, evaluator, wall, done, list(compare))


def _spread(seeds: list[CacheSchedule], k: int) -> list[CacheSchedule]:
    """``k`` of the seeds: warm-start ones (an earlier front) first, the rest picked evenly over
    their recompute fraction, so a small population still spans cheap to faithful schedules."""
    def evenly(group: list[CacheSchedule], n: int) -> list[CacheSchedule]:
        if n >= len(group):
            return list(group)
        ordered = sorted(group, key=lambda s: s.recompute_fraction())
        return [ordered[i] for i in np.round(np.linspace(0, len(ordered) - 1, n)).astype(int)]

    warm = [s for s in seeds if s.name.startswith(WARM_START)]
    rest = [s for s in seeds if not s.name.startswith(WARM_START)]
    chosen = evenly(warm, k)
    return chosen + evenly(rest, k - len(chosen))


def _initial(seeds: list[CacheSchedule], n_var: int, config: SearchConfig) -> np.ndarray:
    """The first generation, exactly ``population`` schedules: the seeds (capped to the
    population by :func:`_spread`), then random schedules (recompute rate drawn in [0.4, 0.95])."""
    rng = np.random.default_rng(config.seed)
    if len(seeds) > config.population:
        seeds = _spread(seeds, config.population)
    rows = [s.to_bits() for s in seeds]
    while len(rows) < config.population:
        bits = rng.random(n_var) < rng.uniform(0.4, 0.95)
        if not bits.all():
            rows.append(bits)
    return np.array(rows, dtype=bool)


def _front_rows(archive: dict[str, dict]) -> list[dict]:
    """Non-dominated evaluated candidates (duplicates in objective space kept once), fastest last."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    rows = [r for r in archive.values() if r["macs_fraction"] < 1.0]
    if not rows:
        return []
    F = np.array([[r["quality_loss"], r["macs_fraction"]] for r in rows])
    front, seen = [], set()
    for i in NonDominatedSorting().do(F, only_non_dominated_front=True):
        point = (round(F[i, 0], 12), round(F[i, 1], 12))
        if point not in seen:
            seen.add(point)
            front.append(rows[i])
    return sorted(front, key=lambda r: -r["macs_fraction"])


def _write_outputs(archive, layout, config, prompts, out_dir, name, evaluator, wall, generations,
                   compare) -> SearchResult:
    n_var = next(iter(archive.values()))["n_var"] if archive else 0
    front_rows = _front_rows(archive)
    evaluated = [r for r in archive.values() if r["macs_fraction"] < 1.0]     # all-True ones never ran
    on_front = {r["bits"] for r in front_rows}
    for old in glob.glob(os.path.join(out_dir, "front-*.json")):
        os.remove(old)
    front, files = [], {"front": []}
    for k, row in enumerate(front_rows):
        sched = CacheSchedule.from_bits(layout, config.steps, _unkey(row["bits"], n_var), name=f"{name}-{k:02d}")
        sched.metrics = {"quality_metric": config.metric, "quality_loss": row["quality_loss"],
                         "macs_fraction": row["macs_fraction"], "macs_ratio": 1.0 / row["macs_fraction"],
                         "macs": "estimate from counted per-component MACs",
                         "recompute_fraction": sched.recompute_fraction(), "origin": row["origin"],
                         "calibration_prompts": len(prompts), "search": "NSGA-II (pymoo)",
                         "population": config.population, "generations": generations}
        path = os.path.join(out_dir, f"front-{k:02d}.json")
        sched.save(path)
        front.append(sched)
        files["front"].append(path)
    csv_path = os.path.join(out_dir, "evaluations.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["generation", "origin", "quality_metric", "quality_loss", "macs_fraction", "macs_ratio",
                         "on_front", "bits"])
        for row in sorted(evaluated, key=lambda r: r["generation"]):
            writer.writerow([row["generation"], row["origin"], config.metric, f"{row['quality_loss']:.10g}",
                             f"{row['macs_fraction']:.10g}", f"{1 / row['macs_fraction']:.4f}",
                             int(row["bits"] in on_front), row["bits"]])
    files["csv"] = csv_path
    plot_path = os.path.join(out_dir, "front.png")
    plot_front(archive, front_rows, config.metric, plot_path, compare)
    files["plot"] = plot_path
    summary = {"evaluations": len(evaluated), "generations": generations, "wall_seconds": round(wall, 1),
               "front_size": len(front), "config": dataclasses.asdict(config), "prompts": list(prompts),
               "model_family": layout.model_family, "num_blocks": layout.num_blocks,
               "macs": "estimate from counted per-component MACs (schedule.macs_ratio)"}
    with open(os.path.join(out_dir, "search-summary.txt"), "w") as f:
        json.dump(summary, f, indent=1)
    return SearchResult(front, len(evaluated), generations, wall, out_dir, files)


def plot_front(archive: dict, front_rows: list[dict], metric: str, path: str, compare: Sequence[dict] = ()) -> None:
    """Quality loss vs MACs ratio: every candidate, the front, the heuristic seeds, and ``compare``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in archive.values() if r["macs_fraction"] < 1.0]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([1 / r["macs_fraction"] for r in rows], [r["quality_loss"] for r in rows], s=8, color="0.75",
               label="evaluated")
    ax.plot([1 / r["macs_fraction"] for r in front_rows], [r["quality_loss"] for r in front_rows], "o-",
            color="tab:blue", ms=4, label="Pareto front (searched)")
    seeds = [r for r in rows if not r["origin"].startswith(("gen ", WARM_START))]
    warm = [r for r in rows if r["origin"].startswith(WARM_START)]
    if warm:
        ax.scatter([1 / r["macs_fraction"] for r in warm], [r["quality_loss"] for r in warm], marker="s",
                   facecolors="none", edgecolors="tab:purple", label="seeds from an earlier front", zorder=3)
    ax.scatter([1 / r["macs_fraction"] for r in seeds], [r["quality_loss"] for r in seeds], marker="s",
               color="tab:orange", label="heuristics", zorder=3)
    for r in seeds:
        ax.annotate(r["origin"][:26], (1 / r["macs_fraction"], r["quality_loss"]), fontsize=6, alpha=0.8)
    if compare:
        ax.scatter([c["macs_ratio"] for c in compare], [c["quality_loss"] for c in compare], marker="^",
                   color="tab:green", label="other caches", zorder=3)
        for c in compare:
            ax.annotate(c["label"][:26], (c["macs_ratio"], c["quality_loss"]), fontsize=6, alpha=0.8)
    ax.set_xlabel("denoiser MACs ratio vs uncached (x)")
    ax.set_ylabel({"ssim": "1 - SSIM", "psnr": "1 - PSNR/100", "lpips": "LPIPS", "clip": "1 - CLIP/100"}[metric]
                  + " vs uncached (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
