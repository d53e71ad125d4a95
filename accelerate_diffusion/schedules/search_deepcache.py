"""Calibrate DeepCache for a UNet pipeline: an exhaustive grid, with a Pareto front.

The UNet counterpart of the DiT block-cache search (``search.py``). DeepCache has only a
handful of settings (``cache_interval`` N, ``cache_branch`` b, the uniform or non-uniform
schedule, and how many first/last steps always run full), so the space is a few hundred
configurations at most: every one is evaluated and no genetic search is needed. (The DiT
search needs NSGA-II because its genome has thousands of bits.)

Same evaluation as the DiT search: the uncached reference is generated once, prompt i uses
seed ``seed + i`` in every run, and the quality loss is the same metric (``search._Evaluator``:
``ssim`` 1 - mean SSIM, ``psnr`` 1 - PSNR/100, ``lpips``, ``clip``). Compute is the fraction of
the uncached denoiser MACs, *counted* (FlopCounterMode, ``accelerate(..., measure_macs=True)``)
on every evaluated run. Configurations that run the same full steps with the same branch give
identical outputs, so each such class is evaluated once. The presets' DeepCache settings for
this family are always evaluated too, so the plot and the CSV can place them.

Output folder: ``front-NN.json`` (the Pareto front: the DeepCache config with ``metrics``),
``evaluations.csv`` (every evaluated configuration), ``front.png`` (quality loss vs MACs
ratio, presets marked), ``search-summary.txt`` (cost), ``archive.jsonl`` + ``search-meta.json``
(a rerun with the same settings evaluates only what is new). ``accelerate(pipe, preset,
schedule_dir=<folder>, max_quality_loss=...)`` or ``schedule=<front-NN.json>`` applies a point.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..patches import NotApplicable
from ..patches.deepcache import Config, _layout, full_step_indices
from .fronts import DeepCachePoint
from .fronts import deepcache_label as _label
from .search import METRICS, _Evaluator, _front_rows, _images

TECHNIQUE = "deepcache"
META_FILE = "search-meta.json"
ARCHIVE_FILE = "archive.jsonl"
PRESET_ORDER = ("quality", "balanced", "fast", "max")
GRID_FIELDS = ("cache_interval", "cache_branch", "schedule", "always_full_start", "always_full_end", "center",
               "forecast")


@dataclass
class DeepCacheSearchConfig:
    """One calibration: the generation settings and the grid (one tuple of values per field).

    ``cache_branch=None``: every branch this UNet has, -1 (the whole body) included. ``center``
    (non-uniform configurations only): fractions of the steps; None = 0.3 (DeepCache's centre, 15
    of 50). ``forecast``: 0 reuses the cached feature, 1 extrapolates it from two full steps.
    ``batch_size``: prompts per pipeline call (0 = all)."""

    steps: int = 20
    metric: str = "ssim"
    seed: int = 0
    batch_size: int = 0
    cache_interval: tuple = (2, 3, 4, 5, 6)
    cache_branch: tuple | None = None
    schedule: tuple = ("uniform", "nonuniform")
    always_full_start: tuple = (1, 3)
    always_full_end: tuple = (0, 1)
    center: tuple | None = None
    forecast: tuple = (0, 1)

    def validate(self) -> None:
        for name, lo in (("steps", 2), ("seed", 0), ("batch_size", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"search.{name}: {value!r} must be an integer >= {lo}")
        if self.metric not in METRICS:
            raise ValueError(f"search.metric: unknown {self.metric!r}; allowed: {', '.join(METRICS)}")
        for name in GRID_FIELDS:
            values = getattr(self, name)
            if values is None and name in ("cache_branch", "center"):
                continue
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"search grid: {name} is empty ({values!r}); give at least one value"
                                 + (" (or None for every branch)" if name == "cache_branch" else ""))
            setattr(self, name, tuple(values))
            for value in values:                       # the technique's own checks name the field
                Config(**{name: value})

    def centers(self) -> tuple:
        return self.center if self.center is not None else (Config.center,)


@dataclass
class DeepCacheSearchResult:
    front: list[DeepCachePoint]
    evaluations: int                  # distinct configurations run (reference not counted)
    configurations: int               # grid + presets, before merging identical ones
    wall_seconds: float
    out_dir: str
    files: dict[str, str] = field(default_factory=dict)


# -- the grid ---------------------------------------------------------------------------------

def _key(config: Config, steps: int) -> str:
    """Configurations with the same key run the same steps the same way: identical outputs."""
    return f"b{config.cache_branch}:f{config.forecast}:" + ",".join(map(str, full_step_indices(config, steps)))


def grid_configs(config: DeepCacheSearchConfig, max_branch: int) -> list[Config]:
    """Every configuration of the grid, simplest first (uniform, fewest forced full steps)."""
    branches = config.cache_branch if config.cache_branch is not None else tuple(range(-1, max_branch + 1))
    for b in branches:
        if b > max_branch:
            raise ValueError(f"search grid: cache_branch {b} is out of range for this UNet; allowed [-1, {max_branch}]")
    out = []
    for sched, start, end, b, n, f in itertools.product(config.schedule, config.always_full_start, config.always_full_end,
                                                        branches, config.cache_interval, config.forecast):
        for center in (config.centers() if sched == "nonuniform" else (Config.center,)):
            out.append(Config(cache_interval=n, cache_branch=b, schedule=sched, center=center,
                              always_full_start=start, always_full_end=end, forecast=f))
    return out


def preset_configs(family) -> list[tuple[str, Config]]:
    """(preset name, DeepCache Config) for the presets that set DeepCache on this family, with the
    few-step guard off: a calibration compares the presets' settings at its own step count."""
    from ..presets import PRESETS

    out = []
    for name in PRESET_ORDER:
        params = PRESETS[name].for_family(family).get(TECHNIQUE)
        if params is not None:
            out.append((name, Config.from_dict({**params, "min_steps": 1})))
    return out


# -- evaluation -------------------------------------------------------------------------------

class _DeepCacheEvaluator(_Evaluator):
    """The DiT search's evaluator (same reference, seeds, metrics) running DeepCache configs and
    counting the denoiser MACs of every run."""

    def __init__(self, pipe, prompts: list[str], make_kwargs: Callable[[list[str], list[int]], dict], config):
        self.pipe, self.prompts, self.make_kwargs, self.config = pipe, prompts, make_kwargs, config
        size = config.batch_size or len(prompts)
        self.batches = [list(range(i, min(i + size, len(prompts)))) for i in range(0, len(prompts), size)]
        self.metric = self._metric(config.metric)
        self.reference, self.reference_macs = self.run(None)

    def run(self, deepcache: dict | None) -> tuple[torch.Tensor, int]:
        """Images and counted denoiser MACs for the calibration prompts (``None``: uncached)."""
        from ..api import accelerate

        outs, macs = [], 0
        for batch in self.batches:
            kwargs = self.make_kwargs([self.prompts[i] for i in batch], batch)
            accelerate(self.pipe, "off", measure_macs=True, **({TECHNIQUE: deepcache} if deepcache else {}))
            try:
                if deepcache and not any(a["technique"] == TECHNIQUE for a in self.pipe.acceleration.report().applied):
                    raise ValueError(f"search: DeepCache did not apply to this pipeline "
                                     f"({self.pipe.acceleration.report().skipped})")
                with torch.no_grad():
                    outs.append(_images(self.pipe(**kwargs)))
                macs += self.pipe.acceleration.state.macs
            finally:
                self.pipe.acceleration.remove()
        return torch.cat(outs), macs

    def __call__(self, deepcache: dict) -> tuple[float, float]:
        """(quality loss, fraction of the uncached denoiser MACs executed, counted)."""
        images, macs = self.run(deepcache)
        return float(self.metric(self.reference, images)), macs / self.reference_macs


def _unet_of(pipe):
    from ..families import family_of, find_denoiser

    found = find_denoiser(pipe)
    family = family_of(found[1]) if found else None
    if family is None or family.kind != "unet":
        raise ValueError(f"search_deepcache: {type(pipe).__name__} has no UNet denoiser (DeepCache calibrates "
                         f"UNet pipelines; for a DiT use schedules.search.search)")
    try:
        layout = _layout(found[1])
    except NotApplicable as exc:
        raise ValueError(f"search_deepcache: DeepCache cannot run on this UNet: {exc}") from exc
    return family, found[1], layout


def _meta(unet, layout, config: DeepCacheSearchConfig, prompts: list[str], call_kwargs: dict) -> dict:
    """What must match for earlier evaluations in the folder to be reused (the grid may change)."""
    return {"technique": TECHNIQUE, "unet": f"{type(unet).__name__} {list(unet.config.block_out_channels)} "
            f"skips: {layout.describe()}", "steps": config.steps, "prompts": list(prompts), "metric": config.metric,
            "seed": config.seed, "call_kwargs": json.loads(json.dumps(call_kwargs, default=repr))}


def _check_resume(saved: dict, now: dict, out_dir: str) -> None:
    for key, new in now.items():
        old = saved.get(key)
        if old != new:
            shown = "" if key == "prompts" else f" ({old!r} in the folder, {new!r} now)"
            raise ValueError(f"search: the evaluations in {out_dir} were made with a different {key}{shown}; "
                             f"use the same settings to reuse them, or a new --out (or resume=False) to start over")


# -- the calibration ------------------------------------------------------------------------------

def search_deepcache(pipe, prompts: Sequence[str] | str | os.PathLike, out_dir: str | os.PathLike,
                     config: DeepCacheSearchConfig | None = None, *, call_kwargs: dict | None = None,
                     resume: bool = True, progress: bool = True, name: str | None = None,
                     compare: Sequence[dict] = ()) -> DeepCacheSearchResult:
    """Evaluate every DeepCache configuration of the grid on ``pipe`` and write the Pareto front.

    ``prompts``: calibration prompts (list or text file, one per line); prompt i uses seed
    ``config.seed + i``. ``call_kwargs``: extra pipeline arguments (guidance_scale, height...).
    ``name``: prefix of the front points' names (default: the output folder's name).
    ``compare``: extra points for the plot, dicts with ``label``, ``macs_ratio``, ``quality_loss``.
    Rerunning with the same settings reuses the evaluations in ``out_dir``.
    """
    from tqdm.auto import tqdm

    from ..eval.runner import read_prompts

    config = config or DeepCacheSearchConfig()
    config.validate()
    prompts = read_prompts(prompts)
    family, unet, layout = _unet_of(pipe)
    candidates = [(c, "grid") for c in grid_configs(config, layout.max_branch)]
    # a configuration that caches no step is the baseline itself
    if all(len(full_step_indices(c, config.steps)) == config.steps for c, _ in candidates):
        raise ValueError(f"search grid: no configuration caches any step at {config.steps} steps "
                         f"(cache_interval and always_full_start/end leave every step full)")
    candidates += [(c, f"preset {p}") for p, c in preset_configs(family) if c.cache_branch <= layout.max_branch]
    caching = [(c, o) for c, o in candidates if len(full_step_indices(c, config.steps)) < config.steps]
    rows: dict[str, dict] = {}
    for c, origin in caching:
        key = _key(c, config.steps)
        if key not in rows:
            rows[key] = {"key": key, "config": c.settings(), "origins": []}
        if origin not in rows[key]["origins"]:
            rows[key]["origins"].append(origin)

    out_dir = os.fspath(out_dir)
    name = name or os.path.basename(os.path.normpath(out_dir)) or "deepcache"
    os.makedirs(out_dir, exist_ok=True)
    meta_path, archive_path = os.path.join(out_dir, META_FILE), os.path.join(out_dir, ARCHIVE_FILE)
    extra = dict(call_kwargs or {})
    meta = _meta(unet, layout, config, prompts, extra)
    done: dict[str, dict] = {}
    if resume and os.path.isfile(meta_path):
        with open(meta_path) as f:
            _check_resume(json.load(f), meta, out_dir)
        if os.path.isfile(archive_path):
            with open(archive_path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:       # a line cut short by a crash
                        continue
                    done[row["key"]] = row
    else:
        if os.path.exists(archive_path):
            os.remove(archive_path)
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)

    def make_kwargs(batch_prompts: list[str], indices: list[int]) -> dict:
        return {**extra, "prompt": batch_prompts, "num_inference_steps": config.steps, "output_type": "pt",
                "generator": [torch.Generator("cpu").manual_seed(config.seed + i) for i in indices]}

    started = time.perf_counter()
    todo = [k for k in rows if k not in done]
    evaluator = _DeepCacheEvaluator(pipe, prompts, make_kwargs, config) if todo else None
    with open(archive_path, "a") as log:
        for key in tqdm(todo, desc="deepcache grid", unit="config", disable=not progress):
            t0 = time.perf_counter()
            loss, frac = evaluator(rows[key]["config"])
            done[key] = {"key": key, "quality_loss": loss, "macs_fraction": frac,
                         "seconds": round(time.perf_counter() - t0, 2)}
            log.write(json.dumps(done[key]) + "\n")
            log.flush()
    for key, row in rows.items():
        row.update({k: done[key][k] for k in ("quality_loss", "macs_fraction", "seconds")})
        row["origin"] = " + ".join(row["origins"])
    wall = time.perf_counter() - started
    return _write_outputs(list(rows.values()), config, prompts, out_dir, name, family, layout, wall, len(todo),
                          len(candidates), list(compare))


def _write_outputs(rows, config, prompts, out_dir, name, family, layout, wall, evaluated_now, n_candidates,
                   compare) -> DeepCacheSearchResult:
    front_rows = _front_rows({r["key"]: r for r in rows})
    on_front = {r["key"] for r in front_rows}
    for old in glob.glob(os.path.join(out_dir, "front-*.json")):
        os.remove(old)
    front, files = [], {}
    for k, row in enumerate(front_rows):
        cfg = Config.from_dict(row["config"])
        point = DeepCachePoint(f"{name}-{k:02d}", row["config"], config.steps, full_step_indices(cfg, config.steps), {
            "quality_metric": config.metric, "quality_loss": row["quality_loss"],
            "macs_fraction": row["macs_fraction"], "macs_ratio": 1.0 / row["macs_fraction"],
            "macs": "counted (FlopCounterMode) on the calibration run", "origin": row["origin"],
            "calibration_prompts": len(prompts), "search": "exhaustive grid"}, family.name)
        path = os.path.join(out_dir, f"front-{k:02d}.json")
        point.save(path)
        point.metrics["path"] = path
        front.append(point)
    csv_path = os.path.join(out_dir, "evaluations.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        fields = ["cache_interval", "cache_branch", "schedule", "center", "always_full_start", "always_full_end",
                  "forecast"]
        writer.writerow(["label", "origin", *fields, "full_steps", "quality_metric", "quality_loss", "macs_fraction",
                         "macs_ratio", "on_front", "seconds"])
        for row in sorted(rows, key=lambda r: -r["macs_fraction"]):
            c = row["config"]
            writer.writerow([_label(c), row["origin"], *[c[x] for x in fields],
                             len(full_step_indices(Config.from_dict(c), config.steps)), config.metric,
                             f"{row['quality_loss']:.10g}", f"{row['macs_fraction']:.10g}",
                             f"{1 / row['macs_fraction']:.4f}", int(row["key"] in on_front), row["seconds"]])
    files["csv"] = csv_path
    files["plot"] = os.path.join(out_dir, "front.png")
    plot_front(rows, front_rows, config.metric, files["plot"], compare)
    summary = {"technique": TECHNIQUE, "search": "exhaustive grid", "evaluations": len(rows),
               "evaluated_this_run": evaluated_now, "configurations": n_candidates,
               "merged_identical": n_candidates - len(rows), "wall_seconds": round(wall, 1),
               "evaluation_seconds_total": round(sum(r["seconds"] for r in rows), 1), "front_size": len(front),
               "config": dataclasses.asdict(config), "prompts": list(prompts), "model_family": family.name,
               "max_branch": layout.max_branch, "branches": layout.describe(),
               "macs": "counted (FlopCounterMode) on every evaluated run"}
    files["summary"] = os.path.join(out_dir, "search-summary.txt")
    with open(files["summary"], "w") as f:
        json.dump(summary, f, indent=1)
    return DeepCacheSearchResult(front, len(rows), n_candidates, wall, out_dir, files)


def plot_front(rows: list[dict], front_rows: list[dict], metric: str, path: str, compare: Sequence[dict] = ()) -> None:
    """Quality loss vs MACs ratio: every configuration (by branch), the front, the presets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    branches = sorted({r["config"]["cache_branch"] for r in rows})
    for b in branches:
        mine = [r for r in rows if r["config"]["cache_branch"] == b]
        ax.scatter([1 / r["macs_fraction"] for r in mine], [r["quality_loss"] for r in mine], s=9, alpha=0.6,
                   label=f"branch {b}")
    ax.plot([1 / r["macs_fraction"] for r in front_rows], [r["quality_loss"] for r in front_rows], "-",
            color="black", lw=1, label="Pareto front")
    for r in front_rows:
        ax.annotate(_label(r["config"]), (1 / r["macs_fraction"], r["quality_loss"]), fontsize=5, alpha=0.7)
    presets = [r for r in rows if "preset" in r["origin"]]
    ax.scatter([1 / r["macs_fraction"] for r in presets], [r["quality_loss"] for r in presets], marker="s",
               facecolor="none", edgecolor="red", s=60, label="presets", zorder=3)
    for r in presets:
        names = [o.split(" ", 1)[1] for o in r["origins"] if o.startswith("preset ")]
        ax.annotate("/".join(names), (1 / r["macs_fraction"], r["quality_loss"]), fontsize=7, color="red",
                    xytext=(4, -10), textcoords="offset points")
    if compare:
        ax.scatter([c["macs_ratio"] for c in compare], [c["quality_loss"] for c in compare], marker="^",
                   color="tab:green", label="other", zorder=3)
        for c in compare:
            ax.annotate(c["label"][:26], (c["macs_ratio"], c["quality_loss"]), fontsize=6)
    ax.set_xlabel("denoiser MACs ratio vs uncached (x, counted)")
    ax.set_ylabel({"ssim": "1 - SSIM", "psnr": "1 - PSNR/100", "lpips": "LPIPS", "clip": "1 - CLIP/100"}[metric]
                  + " vs uncached (lower is better)")
    ax.set_title("DeepCache calibration (exhaustive grid)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- command line -------------------------------------------------------------------------------

def parse_grid(items: Sequence[str]) -> dict:
    """``["cache_interval=2,3", "schedule=uniform"]`` -> ``{"cache_interval": (2, 3), ...}``."""
    grid = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in GRID_FIELDS:
            raise ValueError(f"--grid: expected FIELD=v1,v2,... with FIELD in {', '.join(GRID_FIELDS)}; got {item!r}")
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not values:
            raise ValueError(f"--grid {key}: no value given (empty grid)")
        if key != "schedule":
            kind = float if key == "center" else int
            try:
                values = [kind(v) for v in values]
            except ValueError:
                raise ValueError(f"--grid {key}: expected {'numbers' if kind is float else 'integers'}, "
                                 f"got {raw!r}") from None
        grid[key] = tuple(values)
    return grid


def run_cli(pipe, args, call_kwargs: dict) -> int:
    """``accelerate-diffusion search`` on a UNet pipeline (called by ``search._run_cli``)."""
    config = DeepCacheSearchConfig(steps=args.steps, metric=args.metric, seed=args.seed, batch_size=args.batch_size,
                                   **parse_grid(getattr(args, "grid", None)))
    result = search_deepcache(pipe, args.prompts, args.out, config, call_kwargs=call_kwargs,
                              resume=not args.restart, progress=not args.quiet)
    print(f"DeepCache calibration: {result.evaluations} distinct configurations evaluated (exhaustive grid) in "
          f"{result.wall_seconds:.0f} s; Pareto front ({config.metric} loss vs MACs ratio, counted):")
    for p in result.front:
        print(f"  {os.path.basename(p.metrics['path']):12s} {p.metrics['macs_ratio']:5.2f}x  "
              f"loss {p.metrics['quality_loss']:.4f}  {p.label()}  ({p.metrics['origin']})")
    print(f"files in {args.out}: front-NN.json, evaluations.csv, front.png, search-summary.txt")
    return 0


def add_cli_arguments(parser) -> None:
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                        help="UNet (DeepCache) models: grid values, e.g. cache_interval=2,3,4 or "
                             f"schedule=uniform; fields: {', '.join(GRID_FIELDS)}")
