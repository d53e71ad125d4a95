"""Denoiser MACs per preset on the published architectures, at their published settings.

Each model of ``accelerate_diffusion/published.py`` (SD1.5, SD2.1, SDXL, PixArt-α/Σ, SD3/3.5,
FLUX.1, Wan 2.1, Wan 2.2 A14B, Lumina-Image 2.0, SANA 1600M, Kolors, Chroma1-HD, FLUX.2 [dev], Qwen-Image,
CogVideoX 5B, HunyuanVideo, LTX-Video 2B) is built on the meta device with its
real config and driven through a whole generation by its real pipeline class and scheduler
(``accelerate_diffusion/meta.py``) at the default resolution, step count and guidance, once per
preset. ``FlopCounterMode`` counts the denoiser MACs from the shapes (attention included,
elementwise ops not); for a fixed schedule they do not depend on the weights, so these are the
MACs the real checkpoints run.

Sparse attention calls are counted at the mask's density: on meta the sparse kernel is
replaced by a stand-in that counts nothing, and the technique's own tally of the attention
MACs at mask density (``stats()["attention"]["macs_kernel"]``) is added. That is the work an
ideal block-sparse kernel needs; tile granularity makes real kernels a little denser.

The attention table: two steps per DiT with ``attention={"window": 0.5}`` (the setting of Wan's
``max`` preset) gives the share of the denoiser's MACs spent in the image self-attention
core (QK^T and PV) at the published token count, the mask's density there, and the ideal
speedups: 1/density for the attention core, and 1 / ((1 - share) + share * density) for
the whole denoiser (Amdahl).

    python benchmarks/real_architectures.py                      # every model, every preset (~1 h on 2 cores)
    python benchmarks/real_architectures.py --models sd15,flux_dev --presets off,fast
    python benchmarks/real_architectures.py --write-docs         # also rewrites docs/real_models.md
    python benchmarks/real_architectures.py --models none --write-docs   # the docs from saved results

Results are kept per model in ``benchmarks/results/real_architectures.json``; ``--write-docs``
builds docs/real_models.md from that file, so models can be run in separate invocations.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
warnings.filterwarnings("ignore")

from accelerate_diffusion import accelerate, kernels  # noqa: E402
from accelerate_diffusion.families import family_of  # noqa: E402
from accelerate_diffusion.macs import format_macs  # noqa: E402
from accelerate_diffusion.meta import meta_call_kwargs, meta_pipeline  # noqa: E402
from accelerate_diffusion.presets import PRESETS  # noqa: E402
from accelerate_diffusion.published import PUBLISHED  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "real_architectures.json")
DOC = os.path.join(ROOT, "docs", "real_models.md")
COMMAND = "python benchmarks/real_architectures.py --write-docs"
WINDOW = 0.5     # the attention window of Wan's max preset, measured on every DiT
# Single techniques at the settings papers report, beside the presets (family kind or name -> label -> overrides)
VARIANTS = {
    "unet": {
        "DeepCache N=3 (uniform, branch 0)": dict(deepcache=dict(cache_interval=3, cache_branch=0, schedule="uniform")),
        "DeepCache N=5 (uniform, branch 0)": dict(deepcache=dict(cache_interval=5, cache_branch=0, schedule="uniform")),
    },
    "dit": {
        "block cache of `fast` alone (fora:3,first=3,last=1)": dict(
            block_cache=dict(mode="schedule", schedule="fora:3,first=3,last=1")),
    },
    "sd3": {"RAS alone (default settings: half the tokens at sparse steps)": dict(ras=True)},
    "flux": {"RAS alone (default settings: half the tokens at sparse steps)": dict(ras=True)},
    "lumina2": {"RAS alone (default settings: half the tokens at sparse steps)": dict(ras=True)},
    "chroma": {"RAS alone (default settings: half the tokens at sparse steps)": dict(ras=True)},
}


@contextlib.contextmanager
def sparse_attention_uncounted():
    """Sparse attention calls return an empty output and count nothing (the technique's own
    tally at mask density is added instead); dense attention is counted as usual."""
    original = kernels.attention

    def stand_in(q, k, v, spec, **kwargs):
        return torch.empty_like(q), "meta"

    kernels.attention = stand_in
    try:
        yield
    finally:
        kernels.attention = original


def _generation(pipe, kwargs: dict) -> dict:
    """Run one generation under the pipeline's current acceleration; its MACs and what ran."""
    with sparse_attention_uncounted():
        pipe(**kwargs)
    acc = pipe.acceleration
    stats = acc.stats()
    macs = acc.state.macs
    attention = stats.get("attention")
    out = {"macs": macs, "counters": dict(acc.state.counters),
           "applied": [h.technique for h in acc.handles if h.technique not in acc.state.paused],
           "paused": dict(acc.state.paused), "skipped": [s["technique"] for s in acc.skipped]}
    if attention and attention.get("macs_dense"):
        # several experts (Wan 2.2 A14B): the first expert's figures, each other's under its attribute
        parts = [attention, *(v for v in attention.values() if isinstance(v, dict) and "macs_kernel" in v)]
        kernel = sum(p["macs_kernel"] for p in parts)
        out["macs"] = macs + int(kernel)
        out["attention_macs_dense"] = sum(p["macs_dense"] for p in parts)
        out["attention_macs_kernel"] = kernel
        out["attention_density"] = attention["mean attention density"]
    return out


def attention_probe(pipe, name: str, kwargs: dict | None = None, window: float = WINDOW) -> dict | None:
    """Two steps with sparse self-attention (window 0.5): self-attention core share and density.
    ``kwargs``: the call (default: the published one at 2 steps; PixArt treats 1 step as DMD)."""
    family = family_of(pipe.unet if hasattr(pipe, "unet") else pipe.transformer)
    if "attention" not in family.techniques:
        return None
    accelerate(pipe, "off", measure_macs=True, attention={"window": window, "min_steps": 1})
    try:
        run = _generation(pipe, kwargs or meta_call_kwargs(name, steps=2))
        grid = pipe.acceleration.stats()["attention"]["token grid"]
    finally:
        pipe.acceleration.remove()
    dense = run["attention_macs_dense"]
    total = run["macs"] - run["attention_macs_kernel"] + dense      # the same step run dense
    share, density = dense / total, run["attention_density"]
    return {"token_grid": list(grid), "image_tokens": math.prod(grid), "share": share, "density": density,
            "attention_speedup": 1 / density, "ideal_speedup": 1 / ((1 - share) + share * density)}


def run_variants(pipe, name: str, kwargs: dict) -> dict:
    """The single-technique settings of VARIANTS for this model's kind: MACs of one generation."""
    family = family_of(pipe.unet if hasattr(pipe, "unet") else pipe.transformer)
    out = {}
    variants = {**VARIANTS.get(family.kind, {}), **VARIANTS.get(family.name, {})}
    for label, overrides in variants.items():
        accelerate(pipe, "off", measure_macs=True, **overrides)
        try:
            out[label] = _generation(pipe, kwargs)
        finally:
            pipe.acceleration.remove()
        print(f"  {name:18s} {label}: {format_macs(out[label]['macs'])}", flush=True)
    return out


def run_model(name: str, presets: list[str], steps: int | None, probe: bool, variants: bool = False) -> dict:
    t0 = time.time()
    pipe = meta_pipeline(name)
    built = time.time() - t0
    kwargs = meta_call_kwargs(name, steps=steps)
    result = {"model": name, "steps": kwargs["num_inference_steps"], "build_s": round(built, 1), "presets": {}}
    for preset in presets:
        t = time.time()
        accelerate(pipe, preset, measure_macs=True)
        try:
            row = _generation(pipe, kwargs)
        finally:
            pipe.acceleration.remove()
        row["seconds"] = round(time.time() - t, 1)
        result["presets"][preset] = row
        base = result["presets"].get("off", {}).get("macs")
        ratio = f"{base / row['macs']:.2f}x" if base else ""
        print(f"  {name:18s} {preset:9s} {format_macs(row['macs']):>9s} {ratio:>7s}  "
              f"calls {row['counters'].get('denoiser_calls', 0):3d}  {row['seconds']:6.1f}s  "
              f"{'+'.join(row['applied']) or '-'}" + (f"  paused: {','.join(row['paused'])}" if row["paused"] else ""),
              flush=True)
    if variants:
        result["variants"] = run_variants(pipe, name, kwargs)
    if probe:
        result["attention"] = attention_probe(pipe, name)
    result["seconds"] = round(time.time() - t0, 1)
    return result


# -- the document -------------------------------------------------------------------------------
def _setting(spec) -> str:
    size = f"{spec.width}x{spec.height}" + (f", {spec.num_frames} frames" if spec.num_frames else "")
    scale = f"{spec.guidance_scale:g}" + (f" / {spec.extra_call['guidance_scale_2']:g}"   # Wan 2.2's two experts
                                          if "guidance_scale_2" in spec.extra_call else "")
    cfg = {"batched": f"CFG {scale}", "separate": f"CFG {scale} (2 calls)",
           "distilled": "guidance-distilled" if spec.guidance_scale else "no guidance"}[spec.cfg]
    return f"{size}, {spec.steps} steps, {cfg}"


def _cell(row: dict, base: int) -> str:
    text = f"{base / row['macs']:.2f}x" if base else "n/a"
    if row["paused"]:
        text += " (few-step: untouched)"
    return text


def write_doc(results: dict, presets: list[str]) -> str:
    lines = [
        "# The published architectures: denoiser MACs per preset",
        "",
        f"Generated by `{COMMAND}` (figures kept in `benchmarks/results/real_architectures.json`).",
        "",
        "Each model is its published denoiser config (`accelerate_diffusion/published.py`) built on",
        "the meta device and driven through a whole generation by its real diffusers pipeline and",
        "scheduler at the published default setting, once per preset (`accelerate_diffusion/meta.py`).",
        "MACs are the denoiser's, counted by `FlopCounterMode` from the shapes: convolutions, linear",
        "layers and attention (QK^T, PV); elementwise ops and norms are not counted. For a fixed",
        "schedule they do not depend on the weights, so these are the MACs of the real checkpoints.",
        "Sparse attention is counted at its mask's density (the ideal block-sparse kernel).",
        "",
        "Ratio = MACs of `off` / MACs of the preset, per generation.",
        "",
        "| model | setting | denoiser calls (off) | `off` MACs | " + " | ".join(f"`{p}`" for p in presets if p != "off") + " |",
        "|---|---|---|---|" + "---|" * (len(presets) - 1),
    ]
    for name, spec in PUBLISHED.items():
        res = results.get(name)
        if not res or "off" not in res["presets"]:
            continue
        base = res["presets"]["off"]["macs"]
        cells = [_cell(res["presets"][p], base) if p in res["presets"] else "-" for p in presets if p != "off"]
        calls = res["presets"]["off"]["counters"].get("denoiser_calls", 0)
        lines.append(f"| {spec.title} | {_setting(spec)} | {calls} | {format_macs(base)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "What each preset runs on each family is in the README's preset table. `off` to `max` on the",
        "UNets is DeepCache (and CFG truncation from `fast`); on the DiTs block caching (and CFG",
        "truncation from `balanced`); Wan's `max` adds sparse attention. FLUX.1 and HunyuanVideo are",
        "guidance-distilled (one call per step): CFG truncation has nothing to remove there. CogVideoX and",
        "LTX-Video run CFG batched (`[uncond, cond]` in one call). FLUX.1-schnell runs 4 steps,",
        "below the presets' `min_steps` of 8: every preset leaves it untouched by design. FLUX.2 [dev]",
        "is guidance-distilled too; Chroma1-HD and Qwen-Image run CFG as a separate negative call per",
        "step, which CFG truncation drops for the second half of the steps. Qwen-Image does not pad its",
        "prompts: its row assumes a 77-token prompt. FLUX.2's single-stream block is one cached `attn`",
        "(its fused QKV + MLP projection), so block caching skips whole single blocks there.",
        "",
        "Reading the table: PixArt-α 512/1024 and PixArt-Σ give the same ratios, because block caching",
        "and CFG truncation save the same fraction of every block whatever the resolution. SD3.5 medium",
        "gains less than SD3 medium under the same schedules: the second, image-only attention",
        "(`attn2`) of its 13 dual-attention blocks is not a block-cache component in the family table,",
        "so it runs at every step (a candidate for the sd3 row). Wan's `max` is far above the other",
        "models because self-attention is most of Wan's MACs at 480p (table below) and is counted at",
        "the ideal mask density; a real kernel reaches less.",
        "",
        "Lumina-Image 2.0 runs CFG as a cond call then an uncond call, each with a text mask of ones: 256",
        "text tokens (its default `max_sequence_length`, the most a prompt keeps; real prompts are shorter)",
        "beside 4,096 image tokens; its 2 + 2 refiner blocks (noise and context) run at every step, only its",
        "26 joint blocks are cached. SANA 1600M gives PixArt's ratios (20 steps, batched CFG, every block",
        "cached alike); Kolors gives SDXL's (the same UNet; its text projection is one linear layer).",
        "",
        "Wan 2.2 T2V A14B is two experts of Wan 2.1 14B's config: `transformer` for the steps with",
        "t >= 0.875 * 1000, `transformer_2` below (40 steps, CFG 4 then 3). Each expert is patched on its",
        "own, so the low-noise expert's block cache starts empty and its first step runs in full; fewer",
        "steps (40 vs 50) leave less to reuse than Wan 2.1 14B. Its scheduler here is the Wan 2.1 entry's",
        "UniPC at flow_shift 3.0 (not checked against the A14B repository; Wan 2.2's own sampler uses",
        "12.0): the shift moves steps between the experts, not the number of calls.",
        "",
        "## Sparse attention at the published token counts",
        "",
        f"Two steps of each DiT with `attention={{\"window\": {WINDOW}}}` (neighborhood mask, half of each",
        "grid side; Wan's `max` preset): the share of the denoiser's MACs in the image self-attention",
        "core, the mask's density (joint text tokens of SD3/FLUX stay dense), and the ideal speedups",
        "of the attention core (1/density) and of the whole denoiser (Amdahl).",
        "",
        "| model | token grid | image tokens | self-attention share of MACs | mask density | attention ideal | denoiser ideal |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, spec in PUBLISHED.items():
        att = (results.get(name) or {}).get("attention")
        if not att:
            continue
        lines.append(f"| {spec.title} | {' x '.join(map(str, att['token_grid']))} | {att['image_tokens']:,} | "
                     f"{100 * att['share']:.1f} % | {att['density']:.3f} | {att['attention_speedup']:.2f}x | "
                     f"{att['ideal_speedup']:.2f}x |")
    lines += _papers(results)
    lines += ["", "## Run time", "",
              "Meta tensors compute nothing; the time is Python dispatch. Build = constructing the",
              "denoiser on meta; per preset = one whole generation on the shared 2-core CPU.", "",
              "| model | build | seconds per generation (`off`) |", "|---|---|---|"]
    for name, spec in PUBLISHED.items():
        res = results.get(name)
        if res and "off" in res["presets"]:
            lines.append(f"| {spec.title} | {res['build_s']} s | {res['presets']['off']['seconds']} s |")
    return "\n".join(lines) + "\n"


README_MODELS = {"sd15": "SD1.5", "sdxl": "SDXL", "pixart_alpha_1024": "PixArt-α 1024", "sd3_medium": "SD3 medium",
                 "flux_dev": "FLUX.1-dev", "wan21_14b": "Wan 2.1 14B"}


def readme_column(results: dict, preset: str) -> str:
    """The README preset table's "MACs on the real model" cell for one preset."""
    if preset == "off":
        return "1.00x (baseline)"
    cells = [f"{label} {_ratio(results, m, preset)}" for m, label in README_MODELS.items()
             if (results.get(m) or {}).get("presets", {}).get(preset)]
    return ", ".join(cells) or "-"


def _ratio(results: dict, model: str, key: str, variant: bool = False) -> str:
    res = results.get(model) or {}
    base = (res.get("presets", {}).get("off") or {}).get("macs")
    row = (res.get("variants", {}) if variant else res.get("presets", {})).get(key)
    return f"{base / row['macs']:.2f}x" if base and row else "not run"


def _ideal(results: dict, model: str) -> str:
    att = (results.get(model) or {}).get("attention")
    return f"{att['ideal_speedup']:.2f}x" if att else "not run"


def _papers(results: dict) -> list[str]:
    """Single techniques at the papers' settings beside the papers' own figures."""
    lines = ["", "## Single techniques, and the papers' figures", "",
             "The presets combine techniques; the papers report one technique at a time, mostly as wall",
             "time on a GPU. Our rows are MACs ratios of one generation at the published setting.", "",
             "| model | setting | ours (MACs) | paper |", "|---|---|---|---|"]
    n3, n5 = "DeepCache N=3 (uniform, branch 0)", "DeepCache N=5 (uniform, branch 0)"
    fora = "block cache of `fast` alone (fora:3,first=3,last=1)"
    ras = "RAS alone (default settings: half the tokens at sparse steps)"
    rows = [
        ("Stable Diffusion 1.5", n3, _ratio(results, "sd15", n3, True), "DeepCache: 2.3x wall time at 50 PLMS steps (abstract; its N and branch for that figure not restated here)"),
        ("Stable Diffusion 1.5", n5, _ratio(results, "sd15", n5, True), "see above"),
        ("SDXL base 1.0", n3, _ratio(results, "sdxl", n3, True), "DeepCache: 2.6x wall time (project README)"),
        ("PixArt-α 512", fora, _ratio(results, "pixart_alpha_512", fora, True), "ECAD: 2.58x MACs at 256 px, 20 steps, searched schedule (figure as quoted, not checked against the paper here)"),
        ("Wan 2.1 T2V 1.3B", f"sparse attention alone, window {WINDOW} (ideal at mask density)",
         _ideal(results, "wan21_1_3b"), "Sparse-vDiT: 1.58x end to end on Wan 2.1 (as quoted, not checked against the paper here)"),
        ("Wan 2.1 T2V 14B", fora, _ratio(results, "wan21_14b", fora, True), "-"),
        ("SD3 medium", ras, _ratio(results, "sd3_medium", ras, True), "RAS reports SD3 (no figure quoted here)"),
        ("SD3 medium", fora, _ratio(results, "sd3_medium", fora, True), "-"),
        ("FLUX.1-dev", ras, _ratio(results, "flux_dev", ras, True), "-"),
        ("FLUX.1-dev", fora, _ratio(results, "flux_dev", fora, True), "-"),
        ("Lumina-Image 2.0", ras, _ratio(results, "lumina2", ras, True), "-"),
        ("Lumina-Image 2.0", fora, _ratio(results, "lumina2", fora, True), "-"),
        ("SANA 1600M 1024px", fora, _ratio(results, "sana_1600m", fora, True), "-"),
        ("Kolors", n3, _ratio(results, "kolors", n3, True), "-"),
        ("Kolors", n5, _ratio(results, "kolors", n5, True), "-"),
        ("FLUX.2 [dev]", fora, _ratio(results, "flux2_dev", fora, True), "-"),
        ("Chroma1-HD", ras, _ratio(results, "chroma1_hd", ras, True), "-"),
        ("Chroma1-HD", fora, _ratio(results, "chroma1_hd", fora, True), "-"),
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", "Gaps. The papers' figures are wall time on GPUs, ours MACs: wall time gains less than",
              "MACs where the skipped work is not all of the time (memory traffic, the norms and elementwise",
              "ops that still run, launches). ECAD's 2.58x is a schedule searched on PixArt-α itself at",
              "256 px; ours is a fixed heuristic at 512 px. Sparse-vDiT's 1.58x is measured time with its",
              "own per-head sparsity patterns; ours is the ideal of one neighborhood mask at its density.",
              "RAS is not in the presets; its rows use the technique's default settings. TempCache",
              "(AR video) is not among the published models here."]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(PUBLISHED),
                        help="comma-separated: " + ", ".join(PUBLISHED) + "; or none (--write-docs from saved results)")
    parser.add_argument("--presets", default=",".join(PRESETS),
                        help="comma-separated: " + ", ".join(PRESETS) + "; or none")
    parser.add_argument("--steps", type=int, default=None, help="override the published step count (not saved)")
    parser.add_argument("--no-attention", action="store_true", help="skip the sparse-attention probe")
    parser.add_argument("--variants", action="store_true", help="also run single techniques at papers' settings")
    parser.add_argument("--write-docs", action="store_true", help=f"rewrite {os.path.relpath(DOC, ROOT)}")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip() and m.strip() != "none"]
    presets = [p.strip() for p in args.presets.split(",") if p.strip() and p.strip() != "none"]
    for m in models:
        if m not in PUBLISHED:
            parser.error(f"--models: unknown model {m!r}; allowed: {', '.join(PUBLISHED)}")
    for p in presets:
        if p not in PRESETS:
            parser.error(f"--presets: unknown preset {p!r}; allowed: {', '.join(PRESETS)}")
    if presets and "off" not in presets:
        presets.insert(0, "off")          # the ratios' baseline ("none": variants/probe only, saved baseline)
    torch.set_num_threads(1)
    saved = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            saved = json.load(f)
    for m in models:
        result = run_model(m, presets, args.steps, probe=not args.no_attention, variants=args.variants)
        if args.steps is None:
            previous = saved.get(m, {})
            result["presets"] = {**previous.get("presets", {}), **result["presets"]}
            for key in ("attention", "variants"):
                if result.get(key) is None and previous.get(key):
                    result[key] = previous[key]
            if os.path.exists(RESULTS):     # another invocation may have added models meanwhile
                with open(RESULTS) as f:
                    saved = {**json.load(f), **{k: v for k, v in saved.items() if k == m}}
            saved[m] = result
            os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
            with open(RESULTS, "w") as f:
                json.dump(saved, f, indent=1, sort_keys=True)
        att = result.get("attention")
        if att:
            print(f"  {m:18s} attention: {att['image_tokens']} image tokens, self-attention "
                  f"{100 * att['share']:.1f} % of MACs, window {WINDOW} density {att['density']:.3f}, "
                  f"ideal {att['attention_speedup']:.2f}x attention / {att['ideal_speedup']:.2f}x denoiser",
                  flush=True)
    if args.write_docs:
        with open(DOC, "w") as f:
            f.write(write_doc(saved, list(PRESETS)))
        print(f"wrote {os.path.relpath(DOC, ROOT)}")
        for preset in PRESETS:
            print(f"README column, {preset}: {readme_column(saved, preset)}")


if __name__ == "__main__":
    main()
