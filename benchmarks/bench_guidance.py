"""Adaptive guidance vs full CFG: NFE, MACs, wall time, fidelity and CLIP score, same run.

For each pipeline every variant (AG thresholds, truncation, LinearAG) generates the
same prompts from the same seeds as full CFG. Printed per variant:

* NFE ratio: denoiser sample-evaluations run / full CFG's (counted by the patch);
* MACs ratio: full CFG's denoiser MACs / the variant's (counted, machine independent);
* wall ratio: median full-CFG time / median variant time, runs interleaved;
* PSNR / SSIM of the images against full CFG's;
* CLIP score (demo CLIP) of full CFG and of the variant, when the demo CLIP is there.

LinearAG coefficients are fitted first on calibration prompts/seeds disjoint from the
evaluated ones; ``--save-coefficients`` stores them with the package (demo pipelines).

    python benchmarks/bench_guidance.py                       # demo pipelines if present, else tiny
    python benchmarks/bench_guidance.py --pipelines sd,pixart,sd3,wan --size micro
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.eval.fidelity import psnr, ssim
from accelerate_diffusion.macs import format_macs
from accelerate_diffusion.patches import guidance
from accelerate_diffusion.schedules import linear_ag

TINY_PROMPTS = ["a red circle above a blue square", "a green star on a white background",
                "a small yellow cross", "two purple diamonds"]

VARIANTS = {
    "no CFG (scale 1)": None,   # how much guidance matters at all: the floor
    "AG 0.98": {"threshold": 0.98},
    "AG 0.99": {"threshold": 0.99},
    "AG 0.995": {"threshold": 0.995},
    "trunc 0.5": {"mode": "truncation", "cfg_fraction": 0.5},
    "trunc 0.7": {"mode": "truncation", "cfg_fraction": 0.7},
    "LinearAG": {"mode": "linear", "threshold": 2.0},
    "LinearAG+AG 0.99": {"mode": "linear", "threshold": 0.99},
    "CFG cache 2": {"mode": "cache", "cache_interval": 2},
    "CFG cache 3": {"mode": "cache", "cache_interval": 3},
}


def demo_available(kind: str = "dit", weights_dir=None) -> bool:
    try:
        from accelerate_diffusion import demo
        return demo.is_available(kind, weights_dir)
    except ImportError:
        return False


def load(name: str, size: str, demo_weights=None):
    """(pipe, kwargs builder(prompts, seed), evaluation prompts, calibration prompts)."""
    if name.startswith("demo-"):
        from accelerate_diffusion import demo
        from accelerate_diffusion.demo import dataset

        pipe = demo.load_pipeline(name.split("-", 1)[1], weights_dir=demo_weights)
        pipe.set_progress_bar_config(disable=True)

        def kwargs(prompts, seed, steps, **extra):
            return {**dict(prompt=prompts, num_inference_steps=steps, output_type="pt",
                           guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(seed)),
                    **extra}

        return pipe, kwargs, dataset.generate(64, split="test")[1], dataset.generate(64, split="val")[1]

    from accelerate_diffusion.testing import call_kwargs, make_pipeline

    pipe = make_pipeline(name, size)

    def kwargs(prompts, seed, steps, **extra):
        kw = call_kwargs(name, size, steps=steps, seed=seed, prompt=prompts, output_type="pt", **extra)
        if name == "flux":   # Flux guides through true CFG (two calls per step)
            kw.update(true_cfg_scale=1.0 if extra.get("guidance_scale") == 1.0 else 4.0,
                      negative_prompt=[""] * len(prompts))
        return kw

    return pipe, kwargs, TINY_PROMPTS[:2], TINY_PROMPTS[2:]


def load_clip_scorer(demo_weights=None):
    """Per-image CLIP score with the demo CLIP, or None (then the column says n/a)."""
    try:
        from accelerate_diffusion import demo

        clip = demo.load_clip(weights_dir=demo_weights)
    except (ImportError, FileNotFoundError, OSError) as exc:
        print(f"CLIP score: n/a ({exc})")
        return None
    return lambda images, prompts: demo.clip_score(images, prompts, clip)


def images_of(out) -> torch.Tensor:
    result = out.frames if hasattr(out, "frames") else out.images
    return torch.as_tensor(result).float()


def counted(pipe, kw, config):
    """One run with MACs counted: (images, macs, guidance stats, NFE run, NFE full)."""
    overrides = {} if config is None else {"guidance": config}
    accelerate(pipe, "off", measure_macs=True, **overrides)
    images = images_of(pipe(**kw))
    state = pipe.acceleration.state
    stats = pipe.acceleration.report().applied[0]["stats"] if config is not None else {}
    nfe = state.counters.get("guidance_nfe", 0)
    full = nfe + state.counters.get("guidance_nfe_saved", 0)
    macs = state.macs
    pipe.acceleration.remove()
    return images, macs, stats, nfe, full


def timed(pipe, kw, config) -> float:
    if config is not None:
        accelerate(pipe, "off", guidance=config)
    start = time.perf_counter()
    pipe(**kw)
    seconds = time.perf_counter() - start
    if config is not None:
        pipe.acceleration.remove()
    return seconds


def _summary(switch, steps):
    if not switch:
        return "-"
    s = [steps if v is None else v for v in switch]
    return f"{statistics.median(s):g} ({min(s)}-{max(s)}) of {steps}"


def bench(name, size, steps, repeats, clip, save_coefficients, variants, demo_weights=None,
          n_prompts=16, calib_runs=2, timed_labels=None):
    pipe, kwargs, prompts, calib = load(name, size, demo_weights)
    if name.startswith("demo-"):
        prompts, calib = prompts[:n_prompts], calib[:n_prompts]
    print(f"\n== {name} ({type(pipe).__name__}, {type(pipe.scheduler).__name__}), {steps} steps, "
          f"{len(prompts)} prompts, size {size if not name.startswith('demo') else 'demo'}")

    # LinearAG: fit on calibration prompts/seeds (full CFG), evaluate on the others.
    coeff_path = None
    if any(v and v.get("mode") == "linear" for v in variants.values()):
        if save_coefficients and name.startswith("demo-"):
            coeff_path = guidance.DATA_DIR / f"{name}-{type(pipe.scheduler).__name__}-{steps}.json"
        else:
            coeff_path = Path(tempfile.mkdtemp()) / f"{name}.json"
        calls = [kwargs(calib, seed=100 + i, steps=steps) for i in range(calib_runs)]
        if save_coefficients and coeff_path.exists():
            data = guidance.load_coefficients(str(coeff_path))   # fitted by an earlier run
        else:
            data = linear_ag.fit_pipeline(pipe, calls, coeff_path)
        ratios = " ".join(f"{r:.2f}" for r in data["ratio"][1:])
        print(f"LinearAG fit ({data['samples']} samples): replace steps {data['replace']}; "
              f"residual / |eps_u - eps_c| per step: "
              f"{ratios}; saved to {coeff_path}")

    def config_of(v):
        return {**v, "coefficients": str(coeff_path)} if v and v.get("mode") == "linear" else v

    def call(v, seed=0):
        """kwargs of one evaluated call; the `no CFG` row runs the pipeline at guidance 1."""
        return kwargs(prompts, seed=seed, steps=steps, **({"guidance_scale": 1.0} if v is None else {}))

    kw = lambda: kwargs(prompts, seed=0, steps=steps)
    ref, base_macs, _, _, _ = counted(pipe, kw(), guidance.Config(threshold=2.0))
    if not name.startswith("demo-"):   # exactness check (tests cover it too); costly on demo
        ref_check = counted(pipe, kw(), None)[0]
        assert torch.equal(ref, ref_check), "never-switching AG must equal the unpatched pipeline"
    base_full = 2 * len(prompts) * steps
    rows = []
    clip_ref = clip(ref, prompts) if clip else None
    for label, v in variants.items():
        images, macs, stats, nfe, full = counted(pipe, call(v), config_of(v))
        if v is None:
            nfe, full = len(prompts) * steps, base_full
        row = dict(label=label, nfe=nfe / max(full, 1), macs=base_macs / max(macs, 1),
                   psnr=psnr(ref, images), ssim=ssim(ref, images), clip=None,
                   switch=_summary(stats.get("switch_step_per_sample"), steps), times=[])
        if clip:
            delta = clip(images, prompts) - clip_ref          # paired per image
            row["clip"] = (float(delta.mean()), float(delta.std() / len(delta) ** 0.5))
        rows.append(row)

    # wall time: full CFG and every variant interleaved, order alternating per repeat
    base_times = []
    for r in range(repeats):
        order = [None] + [i for i, row in enumerate(rows)
                          if timed_labels is None or row["label"] in timed_labels]
        for i in (order if r % 2 == 0 else order[::-1]):
            if i is None:
                base_times.append(timed(pipe, kw(), None))
            else:
                v = list(variants.values())[i]
                rows[i]["times"].append(timed(pipe, call(v), config_of(v)))

    base_t = statistics.median(base_times)
    print(f"full CFG: {format_macs(base_macs)} MACs, {base_t:.3f} s median, NFE {base_full}"
          + (f", CLIP {float(clip_ref.mean()):.2f}" if clip_ref is not None else ", CLIP n/a"))
    print(f"{'variant':18s} {'NFE ratio':>9s} {'MACs x':>7s} {'wall x':>7s} {'PSNR':>7s} "
          f"{'SSIM':>6s} {'dCLIP +- se':>13s}  switch step (median, range)")
    for row in rows:
        wall = base_t / statistics.median(row["times"]) if row["times"] else float("nan")
        clip_s = (f"{row['clip'][0]:+6.2f} +-{row['clip'][1]:5.2f}" if row["clip"] is not None
                  else f"{'n/a':>13s}")
        print(f"{row['label']:18s} {row['nfe']:9.3f} {row['macs']:7.2f} {wall:7.2f} "
              f"{row['psnr']:7.2f} {row['ssim']:6.3f} {clip_s}  {row['switch']}")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", default=None,
                        help="comma list of demo-unet, demo-dit, sd, sdxl, pixart, sd3, wan, flux")
    parser.add_argument("--size", default="micro", choices=("micro", "small"))
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=None, help="comma list of variant labels")
    parser.add_argument("--save-coefficients", action="store_true",
                        help="store the fitted LinearAG coefficients of demo pipelines in the package")
    parser.add_argument("--calib-runs", type=int, default=2, help="LinearAG calibration runs")
    parser.add_argument("--time-variants", default=None,
                        help="comma list of variants to time (default: all)")
    parser.add_argument("--prompts", type=int, default=16, help="demo prompts (test captions)")
    parser.add_argument("--demo-weights", default=None,
                        help="demo weights folder (a snapshot while training runs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    names = (args.pipelines.split(",") if args.pipelines else
             [f"demo-{k}" for k in ("unet", "dit") if demo_available(k, args.demo_weights)] + ["sd", "pixart", "sd3", "wan"])
    variants = VARIANTS if not args.variants else {k: VARIANTS[k] for k in args.variants.split(",")}
    clip = load_clip_scorer(args.demo_weights) if any(n.startswith("demo-") for n in names) else None
    for name in names:
        bench(name, args.size, args.steps, args.repeats, clip if name.startswith("demo-") else None,
              args.save_coefficients, variants, args.demo_weights, args.prompts, args.calib_runs,
              args.time_variants.split(",") if args.time_variants else None)


if __name__ == "__main__":
    main()
