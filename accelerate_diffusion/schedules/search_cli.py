"""``accelerate-diffusion search``: the ECAD search for DiTs, the DeepCache calibration for UNets."""

from __future__ import annotations

import os

import torch

from .. import testing
from ..families import family_of, find_denoiser
from ..loading import load_pipeline
from . import search_deepcache
from .cache_schedule import ScheduleLayout
from .fronts import load_front
from .search import METRICS, WARM_START, SearchConfig, heuristic_seeds, search


# -- command line -------------------------------------------------------------------------------

def _run_cli(args) -> int:

    prompts = args.prompts
    if not os.path.isfile(prompts):
        raise ValueError(f"--prompts: file not found: {prompts}")
    config = SearchConfig(steps=args.steps, generations=args.generations, population=args.population,
                          metric=args.metric, seed=args.seed, batch_size=args.batch_size,
                          mutation_prob=args.mutation)
    config.validate()
    pipe = load_pipeline(args.model, args.size, args.device, "float32")
    if args.model in testing.PIPELINES:
        kw = testing.call_kwargs(args.model, args.size, steps=config.steps)
        extra = {k: v for k, v in kw.items() if k not in ("prompt", "generator", "output_type",
                                                          "num_inference_steps")}
    elif args.model.startswith("demo-"):
        from .. import demo

        extra = {"guidance_scale": demo.DEFAULT_GUIDANCE}
    else:
        extra = {}
    if args.guidance is not None:
        extra["guidance_scale"] = args.guidance
    if args.resolution:
        extra.update(height=args.resolution, width=args.resolution)
    found = find_denoiser(pipe)
    if found and getattr(family_of(found[1]), "kind", None) == "unet":     # DeepCache grid (search_deepcache.py)
        return search_deepcache.run_cli(pipe, args, extra)
    if getattr(args, "grid", None):
        raise ValueError("--grid: DeepCache grids apply to UNet models only")
    seeds = None
    if args.seed_front:      # warm start: a previous front (other prompts or metric) joins the heuristics
        found_layout = ScheduleLayout.of(family_of(found[1]), found[1])
        warm = load_front(args.seed_front)
        for s in warm:
            s.name = f"{WARM_START} {s.name}"
        seeds = heuristic_seeds(found_layout, config.steps) + warm
    result = search(pipe, prompts, args.out, config, call_kwargs=extra, resume=not args.restart,
                    progress=not args.quiet, seeds=seeds)
    print(f"{result.evaluations} schedules evaluated over {result.generations} generations in "
          f"{result.wall_seconds:.0f} s; Pareto front ({config.metric} loss vs MACs ratio, estimated):")
    for path, s in zip(result.files["front"], result.front):
        print(f"  {os.path.basename(path):14s} {s.metrics['macs_ratio']:5.2f}x  "
              f"loss {s.metrics['quality_loss']:.4f}  ({s.metrics['origin']}; schedule name {s.name})")
    print(f"files in {args.out}: front-NN.json, evaluations.csv, front.png")
    return 0


def register(sub) -> None:
    """Add the ``search`` subcommand to the CLI's subparsers."""
    p = sub.add_parser("search", help="learn block-cache schedules (NSGA-II, ECAD) and write the Pareto front")
    p.add_argument("--model", required=True, help="tiny pipeline (pixart, sd3, flux, wan), demo-dit, or a "
                   "diffusers id / local path; a UNet (sd, sdxl, demo-unet) calibrates DeepCache on a grid")
    p.add_argument("--size", default="small", choices=["micro", "small"], help="tiny pipeline size")
    p.add_argument("--prompts", required=True, help="calibration prompts, one per line")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--generations", type=int, default=10, help="pymoo generations (the seeded population is the first)")
    p.add_argument("--population", type=int, default=72,
                   help="schedules per generation; the first is the heuristic (and --seed-front) seeds, spread "
                        "over their cost when there are more than this, topped up with random ones")
    from ..eval.models import lpips_missing

    # LPIPS is offered only where torchvision is installed (no extra of this package installs it).
    metrics = [m for m in METRICS if m != "lpips" or not lpips_missing()]
    p.add_argument("--metric", default="ssim", choices=metrics, help="quality loss vs the uncached outputs")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed+i; also seeds the search")
    p.add_argument("--mutation", type=float, default=SearchConfig.mutation_prob, help="bit-flip probability per bit")
    p.add_argument("--batch-size", type=int, default=0, help="prompts per pipeline call (0: all)")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--resolution", type=int, default=0, help="image side (0: the pipeline's default)")
    p.add_argument("--out", required=True, help="output folder (rerun with the same settings to resume)")
    p.add_argument("--seed-front", default="", help="a front folder whose schedules seed the first "
                   "population, with the heuristics (warm start from an earlier search)")
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint in --out and start over")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quiet", action="store_true")
    search_deepcache.add_cli_arguments(p)   # --grid, for UNet models
    p.set_defaults(func=_run_cli)
