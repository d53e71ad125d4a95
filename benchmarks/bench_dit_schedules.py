"""Block-cache schedules on the trained demo DiT: counted MACs ratio and PSNR/SSIM vs uncached.

    python benchmarks/bench_dit_schedules.py "fora:2,first=3,last=1" "fora:3,first=3,last=1"

Used to pick the DiT preset schedules (docs/presets.md). 2 prompts x 25 steps, guidance 5.
"""
import torch, sys
from accelerate_diffusion import accelerate, demo
from accelerate_diffusion.eval.fidelity import psnr, ssim
pipe = demo.load_pipeline("dit")
prompts = ["a small red circle above a large blue square", "a large green triangle to the left of a small yellow star"]
def run(**ov):
    accelerate(pipe, "off", measure_macs=True, **ov)
    outs=[]; macs=0
    for i,p in enumerate(prompts):
        outs.append(pipe(p, num_inference_steps=25, guidance_scale=5.0, output_type="pt", generator=torch.Generator().manual_seed(i)).images)
        macs += pipe.acceleration.state.macs
    pipe.acceleration.remove()
    return torch.cat(outs), macs
ref, m0 = run()
for sched in sys.argv[1:]:
    out, m = run(block_cache={"mode": "schedule", "schedule": sched})
    print(f"{sched:28s} MACs {m0/m:.2f}x  PSNR {psnr(ref,out):.2f}  SSIM {ssim(ref,out):.4f}", flush=True)
