"""Ship a searched front for one model and pick the point each preset uses on it.

For every preset whose plan caches blocks on this model, the preset's heuristic schedule is
scored with the search's own evaluator (same seeds and metric; on the calibration prompts, or
with ``--pick-prompts`` on validation prompts the search never saw, against which the front
is re-scored), and the most faithful front point that is at least as fast (at most 1.25x
faster: the preset keeps its speed tier) and at least as faithful replaces it. A heuristic
that is itself that point stays as it is. The front, its CSV/plot/summary, the validation
scores (``validation.csv``) and a
``model.json`` (the denoiser's fingerprint and the picks) go to ``schedules/data/<name>/``;
``accelerate()`` then uses the picks on any denoiser with the same fingerprint
(``schedules/learned.py``).

    python scripts/ship_learned_schedules.py --model demo-dit --front runs/ecad-demo-dit \\
        --name ecad-demo-dit-25steps
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import torch

from accelerate_diffusion.families import family_of, find_denoiser
from accelerate_diffusion.presets import PRESETS
from accelerate_diffusion.schedules import ScheduleLayout, resolve_schedule
from accelerate_diffusion.schedules.cache_schedule import DATA_DIR
from accelerate_diffusion.schedules.learned import MODEL_FILE, fingerprint
from accelerate_diffusion.schedules.fronts import load_front
from accelerate_diffusion.schedules.search import SearchConfig, _Evaluator


MAX_STEP_UP = 1.25     # a pick is at most 25 % faster (MACs) than the heuristic it replaces


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-dit", help="demo-dit or a tiny pipeline name")
    parser.add_argument("--size", default="small")
    parser.add_argument("--front", required=True, help="folder written by `accelerate-diffusion search`")
    parser.add_argument("--name", required=True, help="folder name under schedules/data")
    parser.add_argument("--pick-prompts", default="", help="validation prompts to pick on (default: the "
                        "calibration prompts; the search overfits them a little)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from bench_search import load

    summary = json.load(open(os.path.join(args.front, "search-summary.txt")))
    config = SearchConfig(**summary["config"])
    prompts = summary["prompts"]
    pipe, extra = load(args.model, args.size)
    denoiser = find_denoiser(pipe)[1]
    family = family_of(denoiser)
    layout = ScheduleLayout.of(family, denoiser)

    def make_kwargs(batch, indices):
        return {**extra, "prompt": batch, "num_inference_steps": config.steps, "output_type": "pt",
                "generator": [torch.Generator("cpu").manual_seed(config.seed + i) for i in indices]}

    front = load_front(args.front)
    if args.pick_prompts:          # re-score the front on validation prompts the search never saw
        prompts = [p for p in (line.strip() for line in open(args.pick_prompts)) if p and not p.startswith("#")]
    evaluator = _Evaluator(pipe, prompts, make_kwargs, layout, config)
    validation = []
    if args.pick_prompts:
        for sched in front:
            sched.metrics["quality_loss"], _ = evaluator(sched)
            validation.append((os.path.basename(sched.metrics["path"]), sched.metrics["macs_ratio"],
                               sched.metrics["quality_loss"]))
    picks = {}
    for preset in PRESETS:
        params = PRESETS[preset].for_family(family).get("block_cache")
        if not params or params.get("mode", "schedule") != "schedule":
            continue
        spec = params["schedule"]
        heuristic = resolve_schedule(spec, layout, config.steps)
        loss, frac = evaluator(heuristic)
        validation.append((f"heuristic {spec} ({preset})", 1 / frac, loss))
        # Only points that dominate the heuristic (as fast and as faithful) and are at most
        # MAX_STEP_UP faster qualify (the preset keeps its speed tier); the most faithful wins.
        ok = [s for s in front if s.metrics["quality_loss"] <= loss
              and 1 / frac <= s.metrics["macs_ratio"] <= MAX_STEP_UP / frac]
        line = f"{preset:9s} {spec:24s} {1 / frac:5.2f}x loss {loss:.4f}"
        best = min(ok, key=lambda s: (s.metrics["quality_loss"], -s.metrics["macs_ratio"])) if ok else None
        if best is None or (best.to_bits() == heuristic.to_bits()).all():
            print(f"{line} -> kept ({'it is the best front point' if best is not None else 'no front point as fast and as faithful'})")
            continue
        file = os.path.basename(best.metrics["path"])
        picks[preset] = {"file": file, "macs_ratio": round(best.metrics["macs_ratio"], 4),
                         "quality_loss": round(best.metrics["quality_loss"], 6), "replaces": spec,
                         "replaced_macs_ratio": round(1 / frac, 4), "replaced_quality_loss": round(loss, 6)}
        print(f"{line} -> {file} {best.metrics['macs_ratio']:5.2f}x loss {best.metrics['quality_loss']:.4f}")
    out = os.path.join(DATA_DIR, args.name)
    os.makedirs(out, exist_ok=True)
    for old in os.listdir(out):
        os.remove(os.path.join(out, old))
    for f in os.listdir(args.front):
        if f.endswith((".json", ".csv", ".png", ".txt")):
            shutil.copy(os.path.join(args.front, f), out)
    info = {"fingerprint": fingerprint(denoiser), "model": args.model, "steps": config.steps,
            "metric": config.metric, "picked_on": (f"{len(prompts)} validation prompts ({args.pick_prompts})"
                                                   if args.pick_prompts else f"{len(prompts)} calibration prompts"),
            "rule": "per preset, the most faithful front point as faithful as the heuristic and at 1-1.25x "
                    "its MACs ratio (none if the heuristic is that point)",
            "presets": picks}
    if validation:
        with open(os.path.join(out, "validation.csv"), "w") as f:
            f.write(f"schedule,macs_ratio,{config.metric}_loss_on_{len(prompts)}_validation_prompts\n")
            f.writelines(f"{name},{ratio:.4f},{loss:.6f}\n" for name, ratio, loss in validation)
    with open(os.path.join(out, MODEL_FILE), "w") as f:
        json.dump(info, f, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
