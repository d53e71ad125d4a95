"""``evaluate()``: every configuration generates from the same prompts and seeds, then
is timed, counted and scored against the unaccelerated (``off``) outputs.

Per configuration, in one process:
1. generate each (prompt, seed) with MAC counting on; keep the images;
2. time one call (first prompt and seed): warm-up excluded, then ``repeats`` runs
   alternating with the unpatched pipeline (paired, order flipped each repeat), so
   drift on a busy machine hits both sides; speedup = median(off) / median(config) of
   that pairing; peak memory is read during the last warm-up call;
3. cache the result and images under ``out_dir/configs/<label>/`` (a later run with the
   same settings loads them instead of redoing the work).
Then the metrics (PSNR/SSIM vs ``off``, FID, CLIP score; LPIPS when asked for and torchvision
is installed) and the report files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import statistics
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from ..api import accelerate
from ..families import family_of, find_denoiser, find_denoisers
from ..presets import PRESETS
from .bench import _images

if TYPE_CHECKING:
    from .report import EvalReport


@dataclass
class EvalConfig:
    """One configuration: a preset plus technique overrides, under a label."""

    label: str
    preset: str
    overrides: dict = field(default_factory=dict)


def parse_configs(presets: Sequence[str | EvalConfig], overrides: dict | None = None) -> list[EvalConfig]:
    """Preset names (or EvalConfigs) -> configurations, ``off`` first (added if missing)."""
    if isinstance(presets, str):
        presets = [p.strip() for p in presets.split(",") if p.strip()]
    configs: list[EvalConfig] = []
    for item in presets:
        if isinstance(item, str):
            if item not in PRESETS:
                raise ValueError(f"presets: unknown preset {item!r}; allowed: {', '.join(PRESETS)}")
            item = EvalConfig(item, item, {} if item == "off" else dict(overrides or {}))
        elif item.preset not in PRESETS:
            raise ValueError(f"presets: unknown preset {item.preset!r} in configuration "
                             f"{item.label!r}; allowed: {', '.join(PRESETS)}")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", item.label):
            raise ValueError(f"configuration label {item.label!r}: use letters, digits, _ . + -")
        if any(c.label == item.label for c in configs):
            raise ValueError(f"presets: configuration {item.label!r} listed twice")
        configs.append(item)
    if not configs:
        raise ValueError(f"presets: empty list; allowed: {', '.join(PRESETS)}")
    offs = [c for c in configs if c.preset == "off" and not c.overrides]
    if not offs:
        configs.insert(0, EvalConfig("off", "off"))
    else:
        configs.remove(offs[0])
        configs.insert(0, offs[0])
    return configs


def read_prompts(prompts: str | os.PathLike | Sequence[str]) -> list[str]:
    """A list of prompts, or a prompts file in any format ``generate`` reads (prompt texts only)."""
    from ..prompts import prompt_texts

    return prompt_texts(prompts, "eval")


# -- measurement helpers -------------------------------------------------------------------

class PeakMemory:
    """Peak memory of one call: CUDA ``max_memory_allocated``; on CPU (Linux) the process's peak
    resident set during the call (``VmHWM``, reset through ``/proc/self/clear_refs`` at entry), or
    where that reset is not allowed, the peak rise of the RSS sampled every 2 ms. Both CPU figures
    count what the process holds; the first also the weights, as the CUDA figure does."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.method = "CUDA max_memory_allocated (bytes, weights included)" if self.cuda else None
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _hwm() -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        if self._hwm() is not None and self._reset_hwm():
            self.method = "CPU: peak resident set of the process during the call (VmHWM; weights included)"
            self._base = None
            return self
        self.method = "CPU: peak RSS increase during the call (sampled /proc/self/statm, 2 ms)"
        self._base = self._rss()
        self._max = self._base or 0
        if self._base is not None:
            def sample():
                while not self._stop.wait(0.002):
                    self._max = max(self._max, self._rss() or 0)
            self._stop.clear()
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = int(torch.cuda.max_memory_allocated())
        elif self._base is None and self._thread is None:
            self.peak = self._hwm()
        elif self._base is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._max = max(self._max, self._rss() or 0)
            self.peak = self._max - self._base
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _DenoiserClock:
    """Seconds spent inside the denoiser's calls (torch hooks around ``__call__``, so an
    acceleration's own hooks count): what the denoiser MACs ratio is the ideal for, without
    the text encoder, VAE and scheduler that the whole call's time also holds."""

    def __init__(self, pipe, device):
        self.device, self.seconds, self._start, self._handles = device, 0.0, None, []
        found, denoisers = find_denoiser(pipe), []
        if found:
            family = family_of(found[1])
            denoisers = find_denoisers(pipe, family, *found) if family else [found]
        for _, module in denoisers:          # Wan 2.2's experts included
            self._handles += [module.register_forward_pre_hook(self._pre),
                              module.register_forward_hook(self._post)]

    def _pre(self, *_):
        _sync(self.device)
        self._start = time.perf_counter()

    def _post(self, *_):
        _sync(self.device)
        self.seconds += time.perf_counter() - self._start

    def close(self):
        for h in self._handles:
            h.remove()


def _timed(pipe, kwargs, device) -> tuple[float, float]:
    """(seconds of the whole call, seconds inside the denoiser)."""
    clock = _DenoiserClock(pipe, device)
    try:
        _sync(device)
        start = time.perf_counter()
        pipe(**kwargs)
        _sync(device)
        return time.perf_counter() - start, clock.seconds
    finally:
        clock.close()


def _pipe_device(pipe) -> torch.device:
    try:
        return torch.device(pipe.device)
    except Exception:
        return torch.device("cpu")


# -- the run ---------------------------------------------------------------------------------

@dataclass
class _Run:
    """Everything fixed for one evaluation."""

    pipe: Any
    model: str
    make_kwargs: Callable[[str, int], dict]
    prompts: list[str]
    seeds: list[int]
    steps: int
    repeats: int
    warmup: int
    device: torch.device
    key_base: dict


def _config_key(run: _Run, config: EvalConfig) -> str:
    key = {**run.key_base, "preset": config.preset, "overrides": config.overrides}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _generate(run: _Run, config: EvalConfig, progress: bool) -> tuple[torch.Tensor, dict]:
    """Images of every (prompt, seed) with MACs counted; [P*S, ...] in [0, 1]."""
    from tqdm.auto import tqdm

    images, macs = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        accelerate(run.pipe, config.preset, measure_macs=True, **config.overrides)
    try:
        pairs = [(p, s) for p in range(len(run.prompts)) for s in run.seeds]
        for p, seed in tqdm(pairs, desc=f"{config.label}: generate", disable=not progress, leave=False):
            out = _images(run.pipe(**run.make_kwargs(run.prompts[p], seed)))
            images.append(out[0].detach().float().cpu())
            macs.append(run.pipe.acceleration.state.macs)
        report = run.pipe.acceleration.report().to_dict()
    finally:
        run.pipe.acceleration.remove()
    info = {"macs": statistics.mean(macs) if macs else None, "acceleration": report,
            "warnings": sorted({str(w.message) for w in caught})}
    return torch.stack(images), info


def _time(run: _Run, config: EvalConfig, progress: bool) -> dict:
    """Warm-up (peak memory read on the last one), then paired repeats against ``off``."""
    from tqdm.auto import tqdm

    kwargs = lambda: run.make_kwargs(run.prompts[0], run.seeds[0])
    is_off = config.preset == "off" and not config.overrides

    @contextlib.contextmanager
    def patched():
        if is_off:
            yield
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            accelerate(run.pipe, config.preset, **config.overrides)
        try:
            yield
        finally:
            run.pipe.acceleration.remove()

    memory = PeakMemory(run.device)
    with patched():
        for i in range(run.warmup):
            with memory if i == run.warmup - 1 else contextlib.nullcontext():
                run.pipe(**kwargs())
    times, baseline = [], []       # (whole call, inside the denoiser) seconds
    for r in tqdm(range(run.repeats), desc=f"{config.label}: time", disable=not progress, leave=False):
        if is_off:
            times.append(_timed(run.pipe, kwargs(), run.device))
            continue
        order = ("config", "off") if r % 2 == 0 else ("off", "config")
        for which in order:
            if which == "off":
                baseline.append(_timed(run.pipe, kwargs(), run.device))
            else:
                with patched():
                    times.append(_timed(run.pipe, kwargs(), run.device))
    if run.warmup == 0:      # no warm-up: read memory on one more (untimed) call
        with patched(), memory:
            run.pipe(**kwargs())
    baseline = baseline or list(times)
    return {"times_s": [t for t, _ in times], "baseline_s": [t for t, _ in baseline],
            "denoiser_s": [d for _, d in times], "baseline_denoiser_s": [d for _, d in baseline],
            "peak_memory": memory.peak, "memory_method": memory.method}


def _save_images(images: torch.Tensor, folder: str, run: _Run) -> None:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    pairs = [(p, s) for p in range(len(run.prompts)) for s in run.seeds]
    for (p, seed), image in zip(pairs, images):
        frames = image if image.ndim == 4 else image[None]
        for f, frame in enumerate(frames):
            array = (frame[:3].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            suffix = f"_f{f:03d}" if image.ndim == 4 else ""
            Image.fromarray(array).save(os.path.join(folder, f"p{p:02d}_s{seed}{suffix}.png"))


def _run_config(run: _Run, config: EvalConfig, out_dir: str, resume: bool,
                progress: bool) -> tuple[dict, torch.Tensor]:
    folder = os.path.join(out_dir, "configs", config.label)
    result_path, images_path = os.path.join(folder, "result.json"), os.path.join(folder, "images.pt")
    key = _config_key(run, config)
    if resume and os.path.isfile(result_path) and os.path.isfile(images_path):
        with open(result_path) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            cached["resumed"] = True
            return cached, torch.load(images_path)
    images, info = _generate(run, config, progress)
    timing = _time(run, config, progress)
    result = {"label": config.label, "preset": config.preset, "overrides": config.overrides,
              "key": key, "run_started": time.strftime("%Y-%m-%dT%H:%M:%S"), **info, **timing}
    os.makedirs(folder, exist_ok=True)
    _save_images(images, os.path.join(folder, "images"), run)
    torch.save(images, images_path)
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    result["resumed"] = False
    return result, images


def _make_kwargs_factory(name: str | None, size: str, steps: int,
                         extra: dict | None) -> Callable[[str, int], dict]:
    from .. import testing

    extra = dict(extra or {})

    def make(prompt: str, seed: int) -> dict:
        if name in testing.PIPELINES:
            kw = testing.call_kwargs(name, size, steps=steps, seed=seed, output_type="pt")
        else:
            kw = dict(num_inference_steps=steps, output_type="pt",
                      generator=torch.Generator("cpu").manual_seed(seed))
        kw.update(extra)
        kw["prompt"] = prompt
        return kw

    return make


def evaluate(pipe_or_name, prompts, presets: Sequence[str | EvalConfig] = ("off", "balanced"),
             steps: int = 10, seeds: Sequence[int] = (0,), out_dir: str = "report", *,
             size: str = "micro", repeats: int = 3, warmup: int = 1,
             overrides: dict | None = None, call_kwargs: dict | None = None,
             reference_dir: str | None = None, fid_features: Any = "auto",
             clip: Any = "auto", lpips_net: str | None = None, device: str | None = None,
             resume: bool = True, progress: bool = True, plots: bool = True,
             label: str | None = None) -> "EvalReport":
    """Evaluate presets on one pipeline and write the report files into ``out_dir``.

    ``pipe_or_name``: a diffusers pipeline, or a name for ``loading.load_pipeline`` (tiny test
    pipeline, ``demo-unet``/``demo-dit``, hub id or local path). ``prompts``: a list, or a
    text file with one prompt per line. ``presets``: preset names or :class:`EvalConfig`;
    ``off`` is the baseline and is added if missing. ``overrides`` apply to every
    non-``off`` preset. ``call_kwargs`` are added to every pipeline call (e.g.
    ``guidance_scale``). ``fid_features``: ``"auto"`` (standard Inception when installed
    locally, else the CLIP image encoder), ``"inception"``, ``"clip"``, ``"random"``
    (tests only) or an ``nn.Module``. ``clip``: ``"auto"`` (the demo CLIP for demo
    models), ``"demo"``, a local CLIP directory, a callable, or None. ``lpips_net``
    (``"alex"``, ...): LPIPS too, where torchvision is installed (no extra installs it); None,
    the default, leaves it out of the report. ``label`` names the model in the report (default: the name or class).
    Returns the :class:`EvalReport` (also written as Markdown, JSON, CSV and
    plots). With ``resume`` a configuration already in ``out_dir`` with the same settings
    is loaded, not redone.
    """
    from tqdm.auto import tqdm

    from .report import EvalReport, compute_metrics

    prompts = read_prompts(prompts)
    configs = parse_configs(presets, overrides)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    for name, value, low in (("steps", steps, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    if reference_dir is not None and not os.path.isdir(reference_dir):
        raise ValueError(f"reference_dir: not a directory: {reference_dir}")

    if isinstance(pipe_or_name, str):
        from ..loading import load_pipeline

        name = pipe_or_name
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = load_pipeline(name, size, dev)
    else:
        name, pipe = None, pipe_or_name
        if device is not None:
            pipe.to(device)
    from .. import testing

    model = name or type(pipe).__name__
    if name in testing.PIPELINES:
        model = f"{name} ({size})"
    model = label or model
    pipe.set_progress_bar_config(disable=True)
    dev = _pipe_device(pipe)
    make_kwargs = _make_kwargs_factory(name, size, steps, call_kwargs)
    key_base = {"model": model, "prompts": prompts, "seeds": seeds, "steps": steps,
                "repeats": repeats, "warmup": warmup, "call_kwargs": call_kwargs or {},
                "device": str(dev)}
    run = _Run(pipe, model, make_kwargs, prompts, seeds, steps, repeats, warmup, dev, key_base)

    os.makedirs(out_dir, exist_ok=True)
    results, images = [], {}
    for config in tqdm(configs, desc="configurations", disable=not progress):
        result, imgs = _run_config(run, config, out_dir, resume, progress)
        results.append(result)
        images[config.label] = imgs

    metrics = compute_metrics(
        results, images, prompts=[p for p in prompts for _ in seeds], model=name or model,
        reference_dir=reference_dir, fid_features=fid_features, clip=clip, lpips_net=lpips_net,
        progress=progress)
    meta = {"model": model, "pipeline": type(pipe).__name__, "steps": steps, "seeds": seeds,
            "prompts": prompts, "repeats": repeats, "warmup": warmup, "device": str(dev),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "timing": ("one call (first prompt, first seed); warm-up excluded; repeats alternate "
                       "with the unpatched pipeline (paired); median and half-range; "
                       "speedup = median(off, paired) / median(config); denoiser speedup: the same "
                       "ratio of the seconds spent inside the denoiser's calls (no text encoder, VAE "
                       "or scheduler: what the MACs ratio bounds)"),
            "memory": results[0].get("memory_method"),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    report = EvalReport(meta=meta, rows=metrics["rows"], metrics=metrics["info"],
                        images=images, labels=[c.label for c in configs])
    report.write(out_dir, plots=plots)
    return report


# -- command line --------------------------------------------------------------------------

def register(sub) -> None:
    """Add the ``eval`` subcommand to the CLI's subparsers."""
    ev = sub.add_parser("eval", help="evaluate presets on a pipeline: speedup, MACs, peak memory, "
                                     "PSNR/SSIM vs off, FID, CLIP score; writes a report")
    ev.add_argument("--model", required=True,
                    help="tiny test pipeline (sd, sdxl, pixart, sd3, flux, wan), demo-unet, "
                         "demo-dit, or a diffusers model id / local path")
    ev.add_argument("--prompts", required=True, help="prompts file: .txt (one per line, # comments), .jsonl "
                    "or .csv with a 'prompt' field (the formats generate reads)")
    ev.add_argument("--presets", default="off,quality,balanced,fast,max",
                    help=f"comma-separated presets ({', '.join(PRESETS)}); off is always included")
    ev.add_argument("--steps", type=int, default=10)
    ev.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    ev.add_argument("--size", default="micro", choices=["micro", "small"],
                    help="size of a tiny test pipeline")
    ev.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration")
    ev.add_argument("--warmup", type=int, default=1)
    ev.add_argument("--set", action="append", default=[], metavar="TECH.FIELD=VALUE",
                    help="override a technique setting in every preset but off")
    ev.add_argument("--config", action="append", default=[], metavar="'LABEL=PRESET [TECH.FIELD=VALUE ...]'",
                    help="an extra configuration with its own overrides, e.g. "
                         "'dc3=off deepcache.cache_interval=3' (repeatable)")
    ev.add_argument("--guidance", type=float, default=None, help="guidance_scale")
    ev.add_argument("--reference-dir", default=None,
                    help="real images for FID (default: FID against the off outputs)")
    ev.add_argument("--fid-features", default="auto", choices=["auto", "inception", "clip", "random"],
                    help="FID feature extractor (auto: Inception if installed locally, else CLIP)")
    ev.add_argument("--clip", default="auto",
                    help="local CLIP directory, 'demo', 'auto' (demo CLIP for demo models) or 'none'")
    ev.add_argument("--lpips-net", default="none", choices=["alex", "vgg", "squeeze", "none"],
                    help="also score LPIPS with this backbone; needs torchvision and the backbone weights "
                         "locally, which no extra of this package installs")
    ev.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ev.add_argument("--out", default="report", help="output folder (also the resume cache)")
    ev.add_argument("--no-resume", action="store_true", help="redo configurations already in --out")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=_main)


def parse_config_arg(text: str) -> EvalConfig:
    """``"dc3=off deepcache.cache_interval=3 guidance=on"`` -> EvalConfig."""
    import shlex

    from ..loading import parse_overrides

    head, *rest = shlex.split(text) or [""]
    label, sep, preset = head.partition("=")
    if not sep or not label or not preset or "." in label:
        raise ValueError(f"--config: expected 'LABEL=PRESET [TECH.FIELD=VALUE ...]', got {text!r}")
    if preset not in PRESETS:
        raise ValueError(f"--config {label}: unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    return EvalConfig(label, preset, parse_overrides(rest))


def _main(args) -> int:
    from ..loading import parse_overrides

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    extra = {} if args.guidance is None else {"guidance_scale": args.guidance}
    prompts = read_prompts(args.prompts)          # check inputs before loading any model
    if args.lpips_net != "none":
        from .models import lpips_missing

        if lpips_missing():
            raise ValueError(f"--lpips-net {args.lpips_net}: {lpips_missing()}; use --lpips-net none")
    configs = [*parse_configs(args.presets, parse_overrides(args.set)),
               *(parse_config_arg(text) for text in args.config)]
    report = evaluate(args.model, prompts, configs, steps=args.steps, seeds=seeds,
                      out_dir=args.out, size=args.size, repeats=args.repeats, warmup=args.warmup,
                      call_kwargs=extra, reference_dir=args.reference_dir,
                      fid_features=args.fid_features,
                      clip=None if args.clip == "none" else args.clip,
                      lpips_net=None if args.lpips_net == "none" else args.lpips_net,
                      device=args.device, resume=not args.no_resume, progress=not args.no_progress)
    print(report.to_markdown())
    print(f"\nwritten to {args.out}/: report.md, report.json, report.csv, pareto.png, grids/")
    return 0
