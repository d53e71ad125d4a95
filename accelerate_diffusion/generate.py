"""Batch generation: prompts file in, images/videos plus a JSONL manifest out.

Resumable (finished items are skipped when the settings recorded with them in the manifest
match; items made with other settings stop the run unless ``overwrite``; files are written
under a temporary name and renamed, so an interrupt never leaves a half-written file
recorded as done) and
scalable: under ``accelerate launch --num_processes N`` the items are split across
processes with HF Accelerate and one merged manifest is written at the end.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .prompts import Item, parse_row, read_prompts

DEFAULT_MAX_PIXELS = 4096 * 4096      # per image or video frame; --max-pixels raises it


@dataclass
class GenerateOptions:
    out: Path
    preset: str = "balanced"
    overrides: dict = field(default_factory=dict)
    seed: int = 0
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    batch_size: int = 1
    num_images_per_prompt: int = 1
    compare_baseline: bool = False
    fps: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    memory_check: bool = True
    model: str | None = None        # the name it was loaded by, for the manifest
    overwrite: bool = False         # replace items made with other settings (else refuse)
    extra: dict = field(default_factory=dict)   # fixed call kwargs (e.g. max_sequence_length)
    auto: dict = field(default_factory=dict)    # preset auto: target_psnr or target_ssim, budget


def _size_of(item: Item, opts: GenerateOptions, name: str) -> int | None:
    return getattr(item, name) or getattr(opts, name)


def _where(item: Item, opts: GenerateOptions, name: str) -> str:
    """Which input set a size: the item's row, or the --height/--width flag."""
    return f"--{name}" if getattr(item, name) is None else f"item {item.index} ({item.prompt[:30]!r}): {name}"


def check_sizes(items: list[Item], opts: GenerateOptions, factor: int) -> None:
    """Every requested size must be a multiple of the model's factor and within --max-pixels
    (checked before any run; a 100000 x 100000 request would grow until the kernel kills it)."""
    for item in items:
        for name in ("height", "width"):
            value = _size_of(item, opts, name)
            if value is not None and value % factor:
                raise ValueError(f"{_where(item, opts, name)} {value} is not a multiple of {factor}, "
                                 f"which this model requires")
        check_pixels(item, opts)


def check_pixels(item: Item, opts: GenerateOptions) -> None:
    height, width = _size_of(item, opts, "height"), _size_of(item, opts, "width")
    if height and width and height * width > opts.max_pixels:
        where = "--height/--width" if item.height is None and item.width is None else \
            f"item {item.index} ({item.prompt[:30]!r}) height/width"
        raise ValueError(f"{where} {height} x {width} = {height * width:,} pixels per image, over the limit of "
                         f"{opts.max_pixels:,} (--max-pixels, default {DEFAULT_MAX_PIXELS:,} = 4096 x 4096); "
                         f"use a smaller size, or raise --max-pixels if the memory is there")


def estimate_memory(pipe, height: int, width: int, frames: int = 1, batch: int = 1) -> int:
    """Bytes one call needs at least, beyond the weights: the VAE decoder's last block holds a few
    full-resolution activation maps of its widest-at-output channel count (128 in SD/SD3/Flux
    VAEs), and video decoders work on about 4 frames at a time (causal chunks) plus the output."""
    vae = getattr(pipe, "vae", None)
    config = getattr(vae, "config", None)
    channels = (getattr(config, "block_out_channels", None) or [128])[0]
    dim = getattr(config, "base_dim", None)            # Wan VAE
    if dim:
        channels = dim
    try:
        element = next(vae.parameters()).element_size()
    except (AttributeError, StopIteration, TypeError):
        element = 4
    live_frames = min(frames, 4)
    decode = 3 * height * width * live_frames * batch * channels * element
    output = height * width * frames * batch * 3 * 4 * 2       # float output, and its uint8/PIL copy
    return decode + output


def available_memory(device) -> int | None:
    """Free bytes on the device: CUDA mem_get_info, or the host's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_memory(pipe, items: list[Item], opts: GenerateOptions) -> None:
    """Refuse, before running, a call whose estimated memory exceeds what the device has free."""
    if not opts.memory_check:
        return
    free = available_memory(getattr(pipe, "device", "cpu"))
    if free is None:
        return
    frames = int(opts.extra.get("num_frames") or 1)
    for item in items:
        height, width = _size_of(item, opts, "height"), _size_of(item, opts, "width")
        if not (height and width):
            continue
        need = estimate_memory(pipe, height, width, frames, opts.batch_size * opts.num_images_per_prompt)
        if need > free:
            raise ValueError(f"--height/--width {height} x {width} (batch {opts.batch_size} x "
                             f"{opts.num_images_per_prompt}, {frames} frame(s)) needs an estimated "
                             f"{_gib(need)} but {_gib(free)} is free; use a smaller size or "
                             f"--batch-size, or --no-memory-check to try anyway")


def config_factor(model: str) -> int | None:
    """The size factor read from a local model folder's configs, without loading weights."""
    root = Path(model)
    try:
        vae = json.loads((root / "vae" / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    for name in ("transformer", "unet"):
        try:
            patch = json.loads((root / name / "config.json").read_text()).get("patch_size") or 1
        except (OSError, json.JSONDecodeError):
            continue
        return factor * int(patch[-1] if isinstance(patch, list) else patch)
    return factor


def size_factor(pipe) -> int:
    """Pixels per denoiser token along one side: VAE downsampling times the patch size."""
    factor = int(getattr(pipe, "vae_scale_factor", None) or getattr(pipe, "vae_scale_factor_spatial", 8))
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    patch = getattr(getattr(denoiser, "config", None), "patch_size", None) or 1
    if isinstance(patch, (tuple, list)):
        patch = patch[-1]
    if type(pipe).__name__.startswith("Flux"):
        patch = 2                      # Flux packs 2x2 latent patches into one token
    return factor * int(patch)


def _per_prompt_arg(pipe) -> str | None:
    """The pipeline's outputs-per-prompt argument: images for image pipelines, videos for video
    pipelines (Wan, SkyReels-V2, AnyFlow-FAR refuse ``num_images_per_prompt``)."""
    import inspect

    try:
        params = inspect.signature(type(pipe).__call__).parameters
    except (TypeError, ValueError):
        return "num_images_per_prompt"
    for name in ("num_images_per_prompt", "num_videos_per_prompt"):
        if name in params:
            return name
    return None


def _call_kwargs(pipe, items: list[Item], opts: GenerateOptions) -> dict:
    first = items[0]
    kw: dict[str, Any] = {**opts.extra, "prompt": [i.prompt for i in items]}
    per_prompt = _per_prompt_arg(pipe)
    if per_prompt:
        kw[per_prompt] = opts.num_images_per_prompt
    elif opts.num_images_per_prompt != 1:
        raise ValueError(f"--num-images-per-prompt: {type(pipe).__name__} makes one output per prompt; use 1")
    negatives = [i.negative_prompt for i in items]
    if any(negatives):
        kw["negative_prompt"] = [n or "" for n in negatives]
    steps = first.steps or opts.steps
    if steps:
        kw["num_inference_steps"] = steps
    guidance = first.guidance if first.guidance is not None else opts.guidance
    if guidance is not None:
        kw["guidance_scale"] = guidance
    for name in ("height", "width"):
        value = getattr(first, name) or getattr(opts, name)
        if value:
            kw[name] = value
    device = getattr(pipe, "device", torch.device("cpu"))
    kw["generator"] = [torch.Generator(device).manual_seed(_seed(i, opts) * 1000 + k)
                       for i in items for k in range(opts.num_images_per_prompt)]
    return kw


def _seed(item: Item, opts: GenerateOptions) -> int:
    return item.seed if item.seed is not None else opts.seed + item.index


def _batches(items: list[Item], size: int) -> list[list[Item]]:
    """Consecutive items with the same call settings, at most ``size`` per batch."""
    batches: list[list[Item]] = []
    for item in items:
        settings = (item.height, item.width, item.steps, item.guidance)
        last = batches[-1] if batches else None
        if last and len(last) < size and (last[0].height, last[0].width, last[0].steps,
                                          last[0].guidance) == settings:
            last.append(item)
        else:
            batches.append([item])
    return batches


def _save_outputs(result, keys: list[str], out: Path, fps: int) -> list[str]:
    """Write each output under a temporary name, then rename: no half-written files.
    A video gives an MP4 (when imageio-ffmpeg is installed) and an animated GIF preview."""
    files = []
    if hasattr(result, "frames"):
        for frames, key in zip(result.frames, keys):
            frames = [_to_pil(f) for f in frames]
            if mp4_writer_missing() is None:
                files.append(_atomic(out, f"{key}.mp4", lambda tmp: _write_mp4(frames, tmp, fps)))
            files.append(_atomic(out, f"{key}.gif", lambda tmp: _write_gif(frames, tmp, fps)))
    else:
        for image, key in zip(result.images, keys):
            files.append(_atomic(out, f"{key}.png", lambda tmp: _to_pil(image).save(tmp, format="PNG")))
    return files


def _atomic(out: Path, name: str, write) -> str:
    stem, ext = os.path.splitext(name)
    tmp = out / f".{stem}.tmp{ext}"
    write(tmp)
    os.replace(tmp, out / name)
    return name


def mp4_writer_missing() -> str | None:
    """Why MP4 cannot be written here (None when it can): imageio with its ffmpeg binary."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
        import imageio  # noqa: F401
    except (ImportError, RuntimeError) as exc:
        return (f"MP4 needs imageio and imageio-ffmpeg ({type(exc).__name__}): "
                "pip install 'accelerate-diffusion[video]'; writing GIF previews only")
    return None


def _write_mp4(frames, path: Path, fps: int) -> None:
    import imageio
    import numpy as np

    # H.264 in yuv420p needs even sides; macro_block_size=2 pads odd sizes by one pixel at most.
    with imageio.get_writer(str(path), format="FFMPEG", fps=fps, codec="libx264", quality=8,
                            macro_block_size=2, ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame.convert("RGB")))


def _write_gif(frames, path: Path, fps: int) -> None:
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:],
                   duration=max(1, round(1000 / fps)), loop=0)


def _to_pil(image):
    from PIL import Image
    import numpy as np

    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


def _done_records(out: Path) -> dict[str, dict]:
    """The last record of each item in any manifest (the merged one first); ``complete`` says
    whether all its files exist (an interrupted item's are not all there: it is redone)."""
    records: dict[str, dict] = {}
    for manifest in sorted(out.glob("manifest*.jsonl")):
        for line in manifest.read_text().splitlines():
            try:
                record = json.loads(line)
                key = record["key"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue                     # a line cut by an interrupt: redo that item
            record["complete"] = all((out / name).exists() for name in record.get("files", []))
            records[key] = record
    return records


def _scheduler_id(pipe) -> str | None:
    """Scheduler class and a short digest of its config (shift, sigmas, ... change the output)."""
    import hashlib

    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None:
        return None
    config = {k: v for k, v in dict(getattr(scheduler, "config", {})).items() if not k.startswith("_")}
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{type(scheduler).__name__}:{digest}"


def settings_of(pipe, item: Item, opts: GenerateOptions) -> dict:
    """Everything that changes an item's output; resume keeps a file only when these match."""
    settings = {
        "model": opts.model or getattr(getattr(pipe, "config", None), "_name_or_path", None)
        or type(pipe).__name__,
        "pipeline": type(pipe).__name__, "dtype": str(getattr(pipe, "dtype", "")).replace("torch.", ""),
        "scheduler": _scheduler_id(pipe), "preset": opts.preset, "overrides": opts.overrides,
        **({"auto": opts.auto} if opts.preset == "auto" else {}),
        "prompt": item.prompt, "negative_prompt": item.negative_prompt, "seed": _seed(item, opts),
        "steps": item.steps or opts.steps,
        "guidance": item.guidance if item.guidance is not None else opts.guidance,
        "height": _size_of(item, opts, "height"), "width": _size_of(item, opts, "width"),
        "num_images_per_prompt": opts.num_images_per_prompt, "call": opts.extra,
    }
    if _takes(pipe, "num_frames"):
        settings["fps"] = opts.fps
    return json.loads(json.dumps(settings, default=str))       # as a manifest line reads back


def _differences(old: dict | None, new: dict) -> str:
    if old is None:
        return "settings not recorded (an older manifest)"
    names = [k for k in new if old.get(k) != new[k]] + [k for k in old if k not in new]
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in names[:4])


def _acceleration(pipe, items: list[Item], opts: GenerateOptions, progress: bool) -> dict:
    """accelerate()'s keywords: the overrides and, for preset auto, its target and what to
    calibrate on (this run's call settings and its first two prompts)."""
    if opts.preset != "auto":
        return dict(opts.overrides)
    per_prompt = _per_prompt_arg(pipe)
    call = {k: v for k, v in _call_kwargs(pipe, items[:1], opts).items()
            if k not in ("prompt", "negative_prompt", "generator", per_prompt)}
    return {**opts.overrides, **opts.auto, "calibration": call, "progress": progress,
            "calibration_prompts": [i.prompt for i in items[:2]]}


def generate(pipe, items: list[Item], opts: GenerateOptions, progress: bool = True) -> dict:
    """Generate every item not done yet; return a summary (counts, images/s, speedup)."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from .api import accelerate

    # On CPU, Accelerate only joins the processes `accelerate launch` started when told `cpu=True`.
    state = PartialState(cpu=torch.device(getattr(pipe, "device", "cpu")).type == "cpu")
    opts.out.mkdir(parents=True, exist_ok=True)
    check_sizes(items, opts, size_factor(pipe))
    check_memory(pipe, items, opts)
    previous = _done_records(opts.out)
    todo, changed = [], []
    for item in items:
        record = previous.get(item.key(0))
        if record is None or not record["complete"]:
            todo.append(item)
        elif record.get("settings") != settings_of(pipe, item, opts):
            changed.append((item, record))
            todo.append(item)
    if changed and not opts.overwrite:
        item, record = changed[0]
        raise ValueError(f"--out {opts.out}: {len(changed)} of {len(items)} item(s) were made with other "
                         f"settings (item {item.index}: {_differences(record.get('settings'), settings_of(pipe, item, opts))}); "
                         f"use another --out, or --overwrite to replace them")
    if state.is_main_process:
        for _, record in changed:             # --overwrite: stale files go first (an interrupt redoes them)
            for name in record.get("files", []):
                (opts.out / name).unlink(missing_ok=True)
    state.wait_for_everyone()
    manifest_path = opts.out / (f"manifest.rank{state.process_index}.jsonl" if state.num_processes > 1
                                else "manifest.jsonl")
    acceleration = _acceleration(pipe, items, opts, progress)
    accelerate(pipe, opts.preset, **acceleration)
    generated, assigned, seconds, baseline_seconds = 0, 0, 0.0, 0.0
    kind, written = ("video" if _takes(pipe, "num_frames") else "image"), []
    if opts.compare_baseline and todo:
        # One untimed call first: the first call of a process pays one-off costs (allocations,
        # kernel selection) that would otherwise be counted against the baseline.
        pipe(**_call_kwargs(pipe, todo[:1], opts))
    try:
        with state.split_between_processes(todo) as mine:
            assigned = len(mine)
            bar = tqdm(total=len(mine), disable=not progress, desc=f"generate[{state.process_index}]")
            for batch in _batches(mine, opts.batch_size):
                if opts.compare_baseline:
                    handle = pipe.acceleration
                    handle.remove()
                    start = time.perf_counter()
                    pipe(**_call_kwargs(pipe, batch, opts))
                    baseline_seconds += time.perf_counter() - start
                    accelerate(pipe, opts.preset, **acceleration)
                start = time.perf_counter()
                result = pipe(**_call_kwargs(pipe, batch, opts))
                elapsed = time.perf_counter() - start
                seconds += elapsed
                report = pipe.acceleration.report()
                techniques = [a["technique"] for a in report.applied]
                per_item = opts.num_images_per_prompt
                for n, item in enumerate(batch):
                    keys = [item.key(k) for k in range(per_item)]
                    outputs = _slice_result(result, n * per_item, (n + 1) * per_item)
                    files = _save_outputs(outputs, keys, opts.out, opts.fps)
                    written += files
                    record = {"key": item.key(0), **{k: v for k, v in asdict(item).items() if v is not None},
                              "seed": _seed(item, opts), "files": files, "preset": opts.preset,
                              "overrides": opts.overrides, "techniques": techniques,
                              "seconds": round(elapsed / len(batch), 4), "rank": state.process_index,
                              "settings": settings_of(pipe, item, opts)}
                    if hasattr(outputs, "frames"):
                        record.update(frames=len(outputs.frames[0]), fps=opts.fps)
                    with open(manifest_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    generated += per_item
                bar.update(len(batch))
            bar.close()
    finally:
        if getattr(pipe, "acceleration", None) is not None:
            pipe.acceleration.remove()
    state.wait_for_everyone()
    if state.is_main_process and state.num_processes > 1:
        _merge_manifests(opts.out)
    summary = {"items": len(items), "skipped_done": len(items) - len(todo), "replaced": len(changed),
               "assigned": assigned,
               "generated": generated, "kind": kind, "files": written,
               "seconds": seconds, "images_per_s": generated / seconds if seconds else 0.0,
               "process": state.process_index, "processes": state.num_processes}
    if opts.compare_baseline and seconds:
        summary["speedup"] = baseline_seconds / seconds
    return summary


def _slice_result(result, start: int, stop: int):
    from types import SimpleNamespace

    if hasattr(result, "frames"):
        return SimpleNamespace(frames=result.frames[start:stop])
    return SimpleNamespace(images=result.images[start:stop])


def _merge_manifests(out: Path) -> None:
    """One manifest.jsonl from the per-process ones (previous merged records kept)."""
    records: dict[str, str] = {}
    merged = out / "manifest.jsonl"
    sources = ([merged] if merged.exists() else []) + sorted(out.glob("manifest.rank*.jsonl"))
    for path in sources:
        for line in path.read_text().splitlines():
            try:
                records[json.loads(line)["key"]] = line
            except (json.JSONDecodeError, KeyError):
                continue
    tmp = out / ".manifest.tmp.jsonl"
    tmp.write_text("".join(records[k] + "\n" for k in sorted(records)))
    os.replace(tmp, merged)
    for path in out.glob("manifest.rank*.jsonl"):
        path.unlink()


# Size factors of the built-in tiny and demo pipelines (what their input checks require).
TINY_FACTORS = {"sd": 8, "sdxl": 8, "pixart": 8, "sd3": 16, "flux": 16, "wan": 16}
DEMO_FACTORS = {"demo-dit": 8, "demo-unet": 8, "demo-ar_video": 8}
# Call arguments of the tiny pipelines that are fixed by how they were built, not per item.
_TINY_FIXED = ("max_sequence_length", "use_resolution_binning", "clean_caption", "num_frames")


def model_defaults(model: str, size: str = "micro", num_frames: int | None = None) -> tuple[int | None, dict, dict]:
    """For a model name: its size factor (None: unknown until loaded), the fixed call arguments
    it needs, and its default settings (steps, guidance, height, width) when none are given."""
    from . import testing

    if model in testing.PIPELINES:
        kw = testing.call_kwargs(model, size)
        extra = {k: v for k, v in kw.items() if k in _TINY_FIXED}
        defaults = {k: kw[k] for k in ("height", "width") if k in kw}
    elif model == "demo-ar_video":
        from .demo import video

        frames = num_frames or (16 - 1) * video.TEMPORAL_FACTOR + 1
        if (frames - 1) % video.TEMPORAL_FACTOR:
            raise ValueError(f"--num-frames: the demo video model makes {video.TEMPORAL_FACTOR}k+1 frames "
                             f"(e.g. 5, 33, 61); got {frames}")
        kw = video.call_kwargs(latent_frames=(frames - 1) // video.TEMPORAL_FACTOR + 1)
        extra = {k: kw[k] for k in ("num_frames", "chunk_partition", "max_sequence_length")}
        defaults = {"steps": video.DEFAULT_STEPS, "guidance": video.DEFAULT_GUIDANCE,
                    "height": kw["height"], "width": kw["width"]}
        return DEMO_FACTORS[model], extra, defaults
    elif model in DEMO_FACTORS:
        from . import demo

        extra = {}
        defaults = {"steps": demo.DEFAULT_STEPS, "guidance": demo.DEFAULT_GUIDANCE,
                    "height": demo.IMAGE_SIZE, "width": demo.IMAGE_SIZE}
    else:
        extra, defaults = {}, {}
    if num_frames is not None:
        extra["num_frames"] = num_frames
    factor = TINY_FACTORS.get(model) or DEMO_FACTORS.get(model) or config_factor(model)
    return factor, extra, defaults


def _takes(pipe, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(type(pipe).__call__).parameters
    except (TypeError, ValueError):
        return True


def run_cli(args) -> int:
    """``accelerate-diffusion generate``: validate everything, then load, then generate."""
    from .loading import load_pipeline, parse_overrides
    from .presets import get_preset

    if bool(args.prompt) == bool(args.prompts):
        raise ValueError("generate: give exactly one of --prompt or --prompts FILE")
    items = read_prompts(args.prompts) if args.prompts else [Item(0, **parse_row({"prompt": args.prompt}, "--prompt"))]
    auto = {}
    if args.preset == "auto":
        if (args.target_psnr is None) == (args.target_ssim is None):
            raise ValueError("--preset auto: give one quality target, --target-psnr DB or --target-ssim 0..1")
        auto = {"target_psnr": args.target_psnr} if args.target_psnr is not None else {"target_ssim": args.target_ssim}
        auto["budget"] = args.calibration_budget
    else:
        get_preset(args.preset)
        if args.target_psnr is not None or args.target_ssim is not None:
            raise ValueError(f"--target-psnr/--target-ssim: only with --preset auto (got --preset {args.preset})")
    overrides = parse_overrides(args.set)
    for name in ("batch_size", "num_images_per_prompt", "fps", "max_pixels"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be at least 1")
    if args.num_frames is not None and args.num_frames < 1:
        raise ValueError("--num-frames: must be at least 1")
    opts = GenerateOptions(out=Path(args.out), preset=args.preset, overrides=overrides, seed=args.seed,
                           height=args.height, width=args.width, steps=args.steps,
                           guidance=args.guidance, batch_size=args.batch_size,
                           num_images_per_prompt=args.num_images_per_prompt,
                           compare_baseline=args.compare_baseline, fps=args.fps,
                           max_pixels=args.max_pixels, memory_check=not args.no_memory_check,
                           overwrite=args.overwrite, auto=auto)
    model = opts.model = args.model or "demo-dit"
    factor, opts.extra, defaults = model_defaults(model, args.size, args.num_frames)
    for name, value in defaults.items():
        if getattr(opts, name) is None:
            setattr(opts, name, value)
    check_sizes(items, opts, factor or 1)    # before any model loads
    pipe = load_pipeline(model, args.size, args.device, args.dtype)
    if "num_frames" in opts.extra and not _takes(pipe, "num_frames"):
        raise ValueError(f"--num-frames: {model!r} ({type(pipe).__name__}) makes images, not videos")
    summary = generate(pipe, items, opts, progress=not args.quiet)
    unit = "videos" if summary["kind"] == "video" else "images"
    line = (f"generated {summary['generated']} output(s) for {summary['assigned']} item(s) "
            f"({summary['skipped_done']} of {summary['items']} already done) in {summary['seconds']:.2f} s: "
            f"{summary['images_per_s']:.2f} {unit}/s")
    if "speedup" in summary:
        line += f", speedup vs baseline {summary['speedup']:.2f}x"
    if summary["replaced"]:
        line += f"; replaced {summary['replaced']} item(s) made with other settings (--overwrite)"
    if summary["processes"] > 1:
        line = f"[process {summary['process']}/{summary['processes']}] " + line
    print(line)
    if summary["kind"] == "video" and mp4_writer_missing():
        print(f"note: {mp4_writer_missing()}")
    files = summary["files"]
    shown = ", ".join(str(opts.out / name) for name in files[:4]) + (f" (+{len(files) - 4} more)" if len(files) > 4 else "")
    print(f"{unit}: {shown or 'none new'}; manifest: {opts.out / 'manifest.jsonl'}")
    return 0


def register(sub) -> None:
    """Add the ``generate`` subcommand to the CLI's subparsers."""
    import torch as _torch

    from .presets import PRESETS

    p = sub.add_parser("generate", help="generate images/videos for a prompt or a prompts file")
    p.add_argument("--prompt", default=None, help="a single prompt")
    p.add_argument("--prompts", default=None, help="prompts file: .txt (one per line, # comments), .jsonl or "
                   ".csv with fields prompt, negative_prompt, seed, height, width, steps, guidance")
    p.add_argument("--model", default=None, help="diffusers id or local path, demo-dit (default), demo-unet, "
                   "demo-ar_video (video), or a tiny test pipeline name (sd, sdxl, pixart, sd3, flux, wan)")
    p.add_argument("--size", default="micro", choices=["micro", "small"], help="tiny pipeline size")
    p.add_argument("--preset", default="balanced", choices=[*PRESETS, "auto"],
                   help="acceleration preset; auto: calibrated on this model for --target-psnr/--target-ssim "
                        "(once per model, steps, size and guidance; stored in the user cache directory)")
    p.add_argument("--target-psnr", type=float, default=None, help="--preset auto: PSNR (dB) vs the unaccelerated output")
    p.add_argument("--target-ssim", type=float, default=None, help="--preset auto: SSIM (0..1) vs the unaccelerated output")
    p.add_argument("--calibration-budget", type=int, default=6,
                   help="--preset auto: generations calibration may run (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="TECH.FIELD=VALUE",
                   help="override a technique setting of the preset, e.g. block_cache.schedule=fora:2 or "
                        "guidance=off (repeatable)")
    p.add_argument("--out", required=True,
                   help="output folder. Rerun to resume: items whose manifest settings (model, preset, "
                        "--set, steps, guidance, size, seed, scheduler, prompt, ...) match are skipped; "
                        "items made with other settings stop the run with an error unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate items in --out made with other settings, replacing their files")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per pipeline call")
    p.add_argument("--num-images-per-prompt", type=int, default=1, help="outputs per prompt (images or videos)")
    p.add_argument("--seed", type=int, default=0, help="base seed; item i uses seed+i unless its row sets one")
    p.add_argument("--height", type=int, default=None, help="pixels (default: the model's; demo models 64)")
    p.add_argument("--width", type=int, default=None, help="pixels (default: the model's; demo models 64)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps, 1 to 1000 (default: the model's; "
                   "demo-dit/demo-unet 25, demo-ar_video 8)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's; "
                   "demo-dit/demo-unet 5, demo-ar_video 3)")
    p.add_argument("--num-frames", type=int, default=None,
                   help="video models: frames per video (default: the model's; demo-ar_video: 61)")
    p.add_argument("--fps", type=int, default=16, help="video models: frames per second of the MP4/GIF")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse sizes with more pixels per image/frame than this (default: %(default)s = 4096 x 4096)")
    p.add_argument("--no-memory-check", action="store_true",
                   help="run even when the estimated memory of a call exceeds the free memory")
    p.add_argument("--compare-baseline", action="store_true",
                   help="also time each batch unaccelerated and print the speedup")
    p.add_argument("--device", default="cuda" if _torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_cli)
