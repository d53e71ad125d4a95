"""torch.compile with acceleration: compiled baseline vs compiled accelerated, in both orders.

For each pipeline and preset: two copies of the pipeline with the same weights, one left as is
(the baseline) and one accelerated. Both denoisers are compiled (``torch.compile(module)`` before
``accelerate()``: "compile first"; or ``module.compile()`` after it: "compile after"), warmed up,
then timed alternately (median of ``--repeats`` paired ratios). Printed per row: the compiled
speedup, the eager speedup of the same preset for comparison, PSNR of the compiled accelerated
images vs the eager accelerated ones (float tolerance, not a quality figure), and the dynamo
figures of the accelerated run: graphs and graph breaks in its first generation, and graphs
compiled during a second generation of the same shapes (0 = no recompiles).

    python benchmarks/bench_compile.py --pipelines pixart,sd --steps 12 --repeats 3 \
        --markdown docs/compile.md
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch._dynamo.utils import counters

from accelerate_diffusion import accelerate
from accelerate_diffusion.eval.fidelity import psnr
from accelerate_diffusion.families import find_denoiser

warnings.filterwarnings("ignore")


def load(name: str, size: str, steps: int):
    """(pipe, make_kwargs): a fresh pipeline and a function giving seeded call arguments."""
    if name.startswith("demo-"):
        from accelerate_diffusion import demo

        pipe = demo.load_pipeline(name[len("demo-"):])
        prompts = ["a small red circle above a large blue square", "a green triangle on the left"]

        def make():
            return dict(prompt=prompts, num_inference_steps=steps, guidance_scale=demo.DEFAULT_GUIDANCE,
                        generator=[torch.Generator("cpu").manual_seed(7 + i) for i in range(len(prompts))],
                        output_type="pt")
        return pipe, make
    from accelerate_diffusion.testing import call_kwargs, make_pipeline

    return make_pipeline(name, size), lambda: call_kwargs(name, size, steps=steps, output_type="pt")


def images(pipe, make) -> torch.Tensor:
    out = pipe(**make())
    return torch.as_tensor(out.frames if hasattr(out, "frames") else out.images).float()


def compile_denoiser(pipe, how: str) -> None:
    attr, module = find_denoiser(pipe)
    if how == "wrap":
        setattr(pipe, attr, torch.compile(module))
    else:
        module.compile()


def timed(pipe, make) -> float:
    start = time.perf_counter()
    images(pipe, make)
    return time.perf_counter() - start


def row(name: str, size: str, preset: str, order: str, steps: int, repeats: int) -> dict:
    torch._dynamo.reset()
    base, make = load(name, size, steps)
    acc, _ = load(name, size, steps)
    eager_base = images(base, make)
    accelerate(acc, preset)
    eager_acc = images(acc, make)
    eager_ratio = statistics.median(timed(base, make) / timed(acc, make) for _ in range(repeats))

    if order == "compile first":
        acc.acceleration.remove()
        compile_denoiser(acc, "wrap")
        accelerate(acc, preset)
    else:
        compile_denoiser(acc, "method")
    compile_denoiser(base, "wrap")
    compiled_base = images(base, make)           # warm-up (compiles the baseline)
    counters.clear()
    first = time.perf_counter()
    compiled_acc = images(acc, make)
    first = time.perf_counter() - first
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    reasons = sorted({key.split("\n")[0][:90] for key in counters["graph_break"]})
    images(acc, make)
    regraphs = counters["stats"]["unique_graphs"] - graphs
    ratios = []
    for _ in range(repeats):
        ratios.append(timed(base, make) / timed(acc, make))
    return dict(pipeline=name, preset=preset, order=order, speedup=statistics.median(ratios),
                eager_speedup=eager_ratio, psnr_vs_eager=psnr(eager_acc, compiled_acc),
                base_psnr=psnr(eager_base, compiled_base), graphs=graphs, breaks=breaks,
                second_gen_graphs=regraphs, first_call_s=first, reasons=reasons)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", default="pixart,sd", help="tiny pipelines (pixart, sd, sd3, flux, ...) "
                        "or demo-dit / demo-unet (default: %(default)s)")
    parser.add_argument("--size", default="small", help="tiny pipeline size (default: %(default)s)")
    parser.add_argument("--presets", default="fast,max", help="presets (default: %(default)s)")
    parser.add_argument("--orders", default="compile first,compile after", help="default: %(default)s")
    parser.add_argument("--steps", type=int, default=12, help="denoising steps (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="paired timings per row (default: %(default)s)")
    parser.add_argument("--markdown", default="", help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = ("| pipeline | preset | order | compiled speedup | eager speedup | PSNR vs eager acc (dB) | "
              "graphs | graph breaks | new graphs, 2nd generation | first call (s) |")
    lines = [header, "|" + "---|" * 10]
    print(header, flush=True)
    notes = set()
    for name in args.pipelines.split(","):
        for preset in args.presets.split(","):
            for order in args.orders.split(","):
                r = row(name, args.size, preset, order, args.steps, args.repeats)
                line = (f"| {r['pipeline']} | {r['preset']} | {r['order']} | {r['speedup']:.2f}x | "
                        f"{r['eager_speedup']:.2f}x | {r['psnr_vs_eager']:.1f} | {r['graphs']} | {r['breaks']} | "
                        f"{r['second_gen_graphs']} | {r['first_call_s']:.0f} |")
                print(line, f"(baseline compiled vs eager: {r['base_psnr']:.1f} dB)", flush=True)
                lines.append(line)
                notes.update(f"{name}: {reason}" for reason in r["reasons"])
    print("graph-break reasons:\n  " + "\n  ".join(sorted(notes)))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
