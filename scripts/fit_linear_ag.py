"""Fit LinearAG coefficients for one (model, scheduler, steps) triple and save them as JSON.

The coefficients say how to estimate the unconditional prediction from the conditional
one and the previous step's pair; they are fitted by least squares on full-CFG runs.

    python scripts/fit_linear_ag.py --pipeline demo-unet --steps 20            # shipped file
    python scripts/fit_linear_ag.py --pipeline sd --size micro --steps 20 --out my.json

Then ``accelerate(pipe, guidance={"mode": "linear"})`` finds a shipped file by the
denoiser's class and config, or ``guidance={"mode": "linear", "coefficients": "my.json"}``.
The Python API is :func:`accelerate_diffusion.schedules.linear_ag.fit_pipeline`.
"""

from __future__ import annotations

import argparse

import torch

from accelerate_diffusion.patches import guidance
from accelerate_diffusion.schedules import linear_ag


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True,
                        help="demo-unet, demo-dit, or a tiny pipeline name (sd, sd3, pixart, wan...)")
    parser.add_argument("--size", default="micro", choices=("micro", "small"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=8, help="calibration prompts (demo captions)")
    parser.add_argument("--runs", type=int, default=2, help="calibration runs (different seeds)")
    parser.add_argument("--max-ratio", type=float, default=0.5,
                        help="replace a step only if the fit's residual is below this fraction "
                             "of |eps_u - eps_c|")
    parser.add_argument("--out", default=None, help="JSON path (default: shipped with the package)")
    args = parser.parse_args(argv)

    if args.pipeline.startswith("demo-"):
        from accelerate_diffusion import demo
        from accelerate_diffusion.demo import dataset

        pipe = demo.load_pipeline(args.pipeline.split("-", 1)[1])
        prompts = dataset.generate(args.prompts, split="val")[1]
        make = lambda seed: dict(prompt=prompts, num_inference_steps=args.steps, output_type="latent",
                                 generator=torch.Generator("cpu").manual_seed(seed))
        tag = args.pipeline
    else:
        from accelerate_diffusion.testing import call_kwargs, make_pipeline

        pipe = make_pipeline(args.pipeline, args.size)
        prompts = ["a red circle above a blue square", "a green star on a white background"]
        make = lambda seed: call_kwargs(args.pipeline, args.size, steps=args.steps, seed=seed,
                                        prompt=prompts)
        tag = f"tiny-{args.pipeline}-{args.size}"
    pipe.set_progress_bar_config(disable=True)
    out = args.out or guidance.DATA_DIR / f"{tag}-{type(pipe.scheduler).__name__}-{args.steps}.json"
    data = linear_ag.fit_pipeline(pipe, [make(100 + i) for i in range(args.runs)], out,
                                 max_ratio=args.max_ratio)
    print(f"{tag}: replace steps {data['replace']} of {data['steps']}; residual ratio per step "
          f"{' '.join(f'{r:.2f}' for r in data['ratio'][1:])}\nsaved {out}")


if __name__ == "__main__":
    main()
