"""Example evaluation report on a demo model (the one in docs/eval_example.md).

    python benchmarks/eval_demo.py --kind unet --out report_demo_unet [--prompts 4 --seeds 0,1]

Prompts are captions of the demo dataset's test split; the FID reference set is real
test-split images rendered into ``<out>/reference``. Every preset is evaluated, plus any
``--config 'LABEL=PRESET TECH.FIELD=VALUE ...'``. ``--snapshot`` copies the weights first
(safe while a training run is still writing checkpoints).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from accelerate_diffusion import demo
from accelerate_diffusion.demo import dataset
from accelerate_diffusion.eval import evaluate
from accelerate_diffusion.eval.runner import parse_config_arg, parse_configs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="unet", choices=demo.KINDS)
    ap.add_argument("--out", default=None)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=demo.DEFAULT_STEPS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference", type=int, default=32, help="real test images for FID")
    ap.add_argument("--presets", default="off,quality,balanced,fast,max")
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--fid-features", default="auto")
    ap.add_argument("--snapshot", action="store_true")
    args = ap.parse_args()
    out = args.out or f"report_demo_{args.kind}"

    reference = os.path.join(out, "reference")
    os.makedirs(reference, exist_ok=True)
    for i in range(args.reference):
        dataset.to_pil(dataset.make_item(i, split="test")[0]).save(os.path.join(reference, f"{i:03d}.png"))
    prompts = [dataset.make_item(i, split="test")[1] for i in range(1000, 1000 + args.prompts)]

    weights = None
    if args.snapshot:
        weights = tempfile.mkdtemp(prefix="demo_weights_")
        for name in ("clip", "vae", args.kind):
            shutil.copytree(demo.WEIGHTS_DIR / name, os.path.join(weights, name))
    pipe = demo.load_pipeline(args.kind, weights_dir=weights)
    configs = [*parse_configs(args.presets), *(parse_config_arg(c) for c in args.config)]
    report = evaluate(pipe, prompts, configs, steps=args.steps,
                      seeds=[int(s) for s in args.seeds.split(",")], out_dir=out,
                      repeats=args.repeats, call_kwargs={"guidance_scale": demo.DEFAULT_GUIDANCE},
                      reference_dir=reference, fid_features=args.fid_features, clip="demo",
                      label=f"demo-{args.kind}")
    print(report.to_markdown())


if __name__ == "__main__":
    main()
