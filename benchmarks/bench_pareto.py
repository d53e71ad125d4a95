"""Pareto table on the trained demo models: our presets and technique combinations vs the peers.

For each demo model (demo DiT, demo UNet; 25 steps, guidance 5, one seed per prompt) every
method generates the same captions from the same seeds as the unaccelerated pipeline; printed
per method: denoiser MACs ratio (counted), PSNR and SSIM of the decoded images vs the
unaccelerated ones. Wall time is left out (MACs do not depend on the machine's load).

* ours: the presets as shipped, and (``--sweep-unet``/``--sweep-dit``) combinations of a cache setting (DiT: the
  shipped learned front's points; UNet: DeepCache interval x branch, non-uniform) with a
  guidance mode (none, truncation 0.5, CFG caching k=2/3, LinearAG fitted at this step count
  on validation captions 0-7, disjoint from every evaluated set);
* peers, settings swept: diffusers' FirstBlockCache, TaylorSeer, MagCache and
  PyramidAttentionBroadcast (where they run on that model) and, on the UNet, the DeepCache
  package (uniform interval x branch id).

For each of our rows the table gives the best peer's MACs ratio at >= its PSNR and our ratio
over it (the ">= 1.2x at equal PSNR" check).

    python benchmarks/bench_pareto.py --split test --prompts 8            # held-out table
    python benchmarks/bench_pareto.py --split val --prompts 16 --no-peers \
        --sweep-unet 3/0,4/0,5/0,6/0 --sweep-dit 11,15,19,24      # calibration sweep

``--split val`` evaluates validation captions 16-31 (the calibration set used to pick the
presets); ``--split test`` the held-out test captions 0-7 (bench_block_cache.py's set).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.eval.fidelity import psnr, ssim
from accelerate_diffusion.families import find_denoiser

sys.path.insert(0, os.path.dirname(__file__))
from bench_block_cache import DiffusersCache, TimestepProbe, calibrate_magcache, images  # noqa: E402

warnings.filterwarnings("ignore")

STEPS = 25
FRONT = Path(__file__).resolve().parents[1] / "accelerate_diffusion/schedules/data/ecad-demo-dit-25steps"
NONUNIFORM = dict(schedule="nonuniform", center=0.32)
GUIDANCE = {
    "": None,
    "trunc 0.5": dict(mode="truncation", cfg_fraction=0.5),
    "CFG cache 2": dict(mode="cache", cache_interval=2),
    "CFG cache 3": dict(mode="cache", cache_interval=3),
    "CFG cache 4": dict(mode="cache", cache_interval=4),
    "LinearAG": dict(mode="linear", threshold=2.0),
}


# -- setting ------------------------------------------------------------------------------
def captions(split: str, n: int) -> list[str]:
    from accelerate_diffusion.demo import dataset

    first = 16 if split == "val" else 0
    return [dataset.make_item(i, split=split)[1] for i in range(first, first + n)]


def load(kind: str, split: str, n: int):
    from accelerate_diffusion import demo

    pipe = demo.load_pipeline(kind)
    pipe.set_progress_bar_config(disable=True)
    prompts = captions(split, n)

    def make():
        return dict(prompt=prompts, num_inference_steps=STEPS, guidance_scale=demo.DEFAULT_GUIDANCE,
                    generator=[torch.Generator("cpu").manual_seed(1000 + i) for i in range(len(prompts))],
                    output_type="pt")
    return pipe, make


def fit_linear(pipe, kind: str, out_dir: Path) -> str:
    """LinearAG coefficients for this model at STEPS, fitted on validation captions 0-7."""
    from accelerate_diffusion import demo
    from accelerate_diffusion.schedules import linear_ag

    path = out_dir / f"linear_ag_demo-{kind}-{STEPS}.json"
    if not path.exists():
        from accelerate_diffusion.demo import dataset

        prompts = [dataset.make_item(i, split="val")[1] for i in range(8)]
        calls = [dict(prompt=prompts, num_inference_steps=STEPS, output_type="latent",
                      guidance_scale=demo.DEFAULT_GUIDANCE, generator=torch.Generator("cpu").manual_seed(100 + r))
                 for r in range(2)]
        linear_ag.fit_pipeline(pipe, calls, path)
    return str(path)


# -- methods ------------------------------------------------------------------------------
def ours(kind: str, sweep: str, guidance: list[str], linear_path: str,
         extra: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """(label, accelerate() kwargs) for our presets and, with ``sweep`` (UNet: DeepCache intervals
    "N/branch,...", DiT: front point numbers "11,13,..."), the cache x guidance combinations."""
    out = [(f"ours {p}", {"preset": p}) for p in ("quality", "balanced", "fast", "max")]
    if sweep:
        if kind == "unet":
            caches = []
            for item in sweep.split(","):
                n, _, b = item.partition("/")
                caches.append((f"DC N={n} b{b or 0}", {"deepcache": dict(cache_interval=int(n), cache_branch=int(b or 0),
                                                                         **NONUNIFORM)}))
        else:
            caches = [(f"front-{int(i):02d}", {"block_cache": dict(mode="schedule",
                                                                   schedule=str(FRONT / f"front-{int(i):02d}.json"))})
                      for i in sweep.split(",")]
        for clabel, cache in caches:
            for glabel, g in ((k, GUIDANCE[k]) for k in guidance):
                if g is not None and g.get("mode") == "linear":
                    g = {**g, "coefficients": linear_path}
                over = {**cache, **({"guidance": g} if g else {})}
                out.append((f"ours {clabel}{' + ' + glabel if glabel else ''}", over))
    return out + extra


def peers(kind: str, layout_groups) -> list[tuple[str, object]]:
    """(label, factory) for the peers; a factory gets (pipe, probe, ratios) and returns a
    diffusers cache config or the string "deepcache:<interval>:<branch id>"."""
    from diffusers import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    out = [(f"diffusers FBC t={t}", lambda t=t, **_: FirstBlockCacheConfig(threshold=t)) for t in (0.05, 0.1, 0.2, 0.3)]
    # TaylorSeer's default patterns miss these models' module names: point it at the components we
    # cache on the DiT, and at the UNet's down-block layers and mid/up blocks (its whole compute) on the UNet.
    same = ([rf"{g}\.\d+\.({'|'.join(c)})" for g, c in layout_groups] if layout_groups else
            [r"down_blocks\.\d+\.(resnets|downsamplers)\.\d+", r"down_blocks\.\d+\.attentions\.\d+\.transformer_blocks\.\d+",
             r"mid_block", r"up_blocks\.\d+"])     # modules with a tensor output (down blocks return tuples)
    for i in (2, 3, 4, 5):
        for before in (2, 4):
            out.append((f"diffusers TaylorSeer i={i} warmup={before}", lambda i=i, before=before, **_: TaylorSeerCacheConfig(
                cache_interval=i, disable_cache_before_step=before, taylor_factors_dtype=torch.float32,
                cache_identifiers=same)))
    out += [(f"diffusers MagCache t={t}", lambda t=t, ratios=None, **_: _magcache(t, ratios))
            for t in (0.03, 0.06, 0.12, 0.24, 0.5)]
    for skip in (2, 3, 4):
        for hi in (800, 900):
            out.append((f"diffusers PAB skip={skip} t<{hi}", lambda skip=skip, hi=hi, probe=None, **_:
                        PyramidAttentionBroadcastConfig(
                            spatial_attention_block_skip_range=skip, spatial_attention_timestep_skip_range=(100, hi),
                            cross_attention_block_skip_range=2 * skip, cross_attention_timestep_skip_range=(100, hi),
                            current_timestep_callback=probe)))
    if kind == "unet":
        out += [(f"DeepCache package N={n} branch={b}", lambda n=n, b=b, **_: f"deepcache:{n}:{b}")
                for n in (2, 3, 4, 5, 6) for b in (0, 1, 2)]
    return out


class Probe(TimestepProbe):
    """The current timestep, also when it is passed positionally (the UNet: ``unet(sample, t, ...)``)."""

    def _pre(self, module, args, kwargs):
        if "timestep" not in kwargs and len(args) > 1:
            kwargs = {**kwargs, "timestep": args[1]}
        return super()._pre(module, args, kwargs)


def _magcache(threshold, ratios):
    from diffusers import MagCacheConfig

    return MagCacheConfig(threshold=threshold, num_inference_steps=len(ratios), mag_ratios=ratios)


# -- measuring ----------------------------------------------------------------------------
def run_ours(pipe, make, kwargs) -> tuple[int, torch.Tensor]:
    kwargs = dict(kwargs)
    accelerate(pipe, kwargs.pop("preset", "off"), measure_macs=True, **kwargs)
    try:
        out = images(pipe(**make()))
        return pipe.acceleration.state.macs, out
    finally:
        pipe.acceleration.remove()


def run_deepcache_package(pipe, make, interval: int, branch: int) -> tuple[int, torch.Tensor]:
    import DeepCache

    accelerate(pipe, "off", measure_macs=True)      # only the MACs counter around denoiser calls
    helper = DeepCache.DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        out = images(pipe(**make()))
        return pipe.acceleration.state.macs, out
    finally:
        helper.disable()
        pipe.acceleration.remove()


def run_diffusers(pipe, make, config, pristine, probe) -> tuple[int, torch.Tensor]:
    cache = DiffusersCache(pipe, config, pristine)
    probe.attach(cache.model)
    try:
        cache.reset()
        return run_ours(pipe, make, {})
    finally:
        probe.close()
        cache.close()


def bench(kind: str, split: str, n: int, sweep: str, guidance: list[str], with_peers: bool, out_dir: Path,
          only: str, extra: list[tuple[str, dict]]) -> list[dict]:
    from accelerate_diffusion.families import family_of

    pipe, make = load(kind, split, n)
    denoiser = find_denoiser(pipe)[1]
    pristine = copy.deepcopy(denoiser)
    family = family_of(denoiser)
    groups = [(g.attr, g.components) for g in family.block_groups]
    base_macs, reference = run_ours(pipe, make, {})
    print(f"\n== demo-{kind} ({type(denoiser).__name__}), {STEPS} steps, {n} {split} captions: "
          f"{base_macs / 1e9:.2f} GMACs/generation", flush=True)
    rows = []

    def record(label, macs, out, note=""):
        row = dict(model=f"demo-{kind}", method=label, macs_ratio=base_macs / max(macs, 1),
                   psnr=psnr(reference, out), ssim=ssim(reference, out), note=note)
        rows.append(row)
        print(f"  {label:52s} MACs {row['macs_ratio']:5.2f}x  PSNR {row['psnr']:6.2f}  SSIM {row['ssim']:.4f}",
              flush=True)

    def wanted(label):
        return not only or any(o in label for o in only.split("|"))

    linear_path = fit_linear(pipe, kind, out_dir) if sweep and "LinearAG" in guidance else ""
    for label, kwargs in ours(kind, sweep, guidance, linear_path, extra):
        if kwargs.get("model", kind) != kind:
            continue
        kwargs = {k: v for k, v in kwargs.items() if k != "model"}
        if wanted(label):
            record(label, *run_ours(pipe, make, kwargs))
    if not with_peers:
        return rows
    ratios = None
    for label, factory in peers(kind, groups if kind != "unet" else None):
        if not wanted(label):
            continue
        probe = Probe()
        try:
            if "MagCache" in label and ratios is None:
                ratios = calibrate_magcache(pipe, make, STEPS, pristine)
            config = factory(probe=probe, ratios=ratios)
            if isinstance(config, str):
                _, interval, branch = config.split(":")
                record(label, *run_deepcache_package(pipe, make, int(interval), int(branch)))
            else:
                record(label, *run_diffusers(pipe, make, config, pristine, probe))
        except Exception as exc:  # unsupported class or config: say so
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''}"
            print(f"  {label:52s} fails here: {msg}", flush=True)
            rows.append(dict(model=f"demo-{kind}", method=label, note=f"fails: {msg}"))
    return rows


# -- output -------------------------------------------------------------------------------
def best_peer(rows: list[dict], row: dict) -> dict | None:
    """The peer with the highest MACs ratio at >= this row's PSNR (same model)."""
    cands = [r for r in rows if r["model"] == row["model"] and "macs_ratio" in r
             and not r["method"].startswith("ours") and r["psnr"] >= row["psnr"]]
    return max(cands, key=lambda r: r["macs_ratio"], default=None)


def markdown(rows: list[dict], split: str, n: int) -> str:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        out += [f"### {model} ({n} {split} captions, {STEPS} steps)", "",
                "| method | MACs | PSNR dB | SSIM | best peer at >= its PSNR | ours / peer |",
                "|---|---:|---:|---:|---|---:|"]
        for r in rows:
            if r["model"] != model:
                continue
            if "macs_ratio" not in r:
                out.append(f"| {r['method']} | | | | {r['note']} | |")
                continue
            cells = ["", ""]
            if r["method"].startswith("ours"):
                peer = best_peer(rows, r)
                cells = (["none reaches it", ""] if peer is None else
                         [f"{peer['method']} ({peer['macs_ratio']:.2f}x, {peer['psnr']:.1f} dB)",
                          f"{r['macs_ratio'] / peer['macs_ratio']:.2f}"])
            out.append(f"| {r['method']} | {r['macs_ratio']:.2f}x | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                       f"{cells[0]} | {cells[1]} |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dit,unet")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--sweep-unet", default="", help="DeepCache settings to combine, 'N/branch,...' (e.g. 3/0,4/0)")
    parser.add_argument("--sweep-dit", default="", help="learned front points to combine, e.g. 11,13,15")
    parser.add_argument("--guidance", default=",".join(GUIDANCE),
                        help=f"guidance modes for the sweep, comma-separated, of: {', '.join(map(repr, GUIDANCE))}")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--only", default="", help="|-separated substrings of method labels to run")
    parser.add_argument("--config", action="append", default=[],
                        help="extra row 'LABEL=JSON of accelerate() kwargs', e.g. "
                             "'x={\"preset\": \"fast\", \"guidance\": {\"mode\": \"cache\"}}'; "
                             "a \"model\": \"dit\" or \"unet\" key keeps it to that model")
    parser.add_argument("--out", default="benchmarks/results/pareto")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = []
    for c in args.config:
        label, _, spec = c.partition("={")       # labels may hold "=" (N=3)
        extra.append((f"ours {label}", json.loads("{" + spec)))
    rows = []
    for kind in args.models.split(","):
        kind = kind.strip()
        sweep = args.sweep_unet if kind == "unet" else args.sweep_dit
        rows += bench(kind, args.split, args.prompts, sweep, args.guidance.split(","), not args.no_peers, out_dir,
                      args.only, extra)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    print("\n" + markdown(rows, args.split, args.prompts))


if __name__ == "__main__":
    sys.exit(main())
