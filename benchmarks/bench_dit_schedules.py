"""Block-cache schedules on the trained demo DiT: counted MACs ratio and PSNR/SSIM vs uncached.

    python benchmarks/bench_dit_schedules.py "fora:2,first=3,last=1" "fora:3,first=3,last=1"

Same setting as ``bench_block_cache.py --pipelines demo`` and ``bench_search.py --model
demo-dit``: the 8 held-out test-split captions, one seed per prompt (1000 + i), 25 steps,
guidance 5. Used to pick the DiT preset schedules (docs/presets.md).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_search import held_out  # noqa: E402

from accelerate_diffusion import demo  # noqa: E402
from accelerate_diffusion.eval.fidelity import psnr, ssim  # noqa: E402
from accelerate_diffusion.testing import run_counted  # noqa: E402

pipe = demo.load_pipeline("dit")
prompts = held_out("demo-dit")


def run(**overrides):
    return run_counted(pipe, dict(prompt=prompts, num_inference_steps=demo.DEFAULT_STEPS,
                                  guidance_scale=demo.DEFAULT_GUIDANCE, output_type="pt",
                                  generator=[torch.Generator().manual_seed(1000 + i) for i in range(len(prompts))]),
                       **overrides)


reference, base = run()
for spec in sys.argv[1:]:
    out, macs = run(block_cache={"mode": "schedule", "schedule": spec})
    print(f"{spec:28s} MACs {base / macs:.2f}x  PSNR {psnr(reference, out):.2f}  SSIM {ssim(reference, out):.4f}",
          flush=True)
