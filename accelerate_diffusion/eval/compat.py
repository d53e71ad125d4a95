"""The usage matrix: every way people run diffusers pipelines, under ``accelerate()``.

Rows are the families (tiny pipelines of the real classes), columns are usages (offload hooks,
LoRA, ControlNet, img2img/inpaint, derived pipelines, schedulers, few-step runs, dtypes,
save_pretrained, callbacks, batches). :func:`check` runs one cell under a preset and says:

- ``works``: the accelerated output is the same on a second call (no stale state) and equal to
  a freshly accelerated pipeline's, the acceleration did what the report says, and ``remove()``
  gives back the unaccelerated output bit for bit;
- ``refused``: ``accelerate()`` raised a one-line ``ValueError`` naming the conflict;
- ``n/a``: diffusers itself has no such usage for that family;
- ``FAILS``: anything else (a crash, a mix, a stale result). The tests require no FAILS.

``scripts/compat_matrix.py`` writes docs/compatibility.md from these cells.
"""

from __future__ import annotations

import copy
import inspect
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..api import accelerate
from ..families import find_denoiser
from ..testing import call_kwargs, make_pipeline, surface
from ..testing_video import far_call_kwargs, make_far_pipeline, make_skyreels_df_pipeline, run_skyreels

ROWS = ("sd", "sdxl", "pixart", "sd3", "flux", "qwenimage", "chroma", "flux2", "wan", "wan22", "wan_vace", "cogvideox",
        "hunyuan_video", "hunyuan_video15", "ltx_video", "ltx2", "lumina2", "sana", "kolors", "anyflow_far", "skyreels_v2")
PRESETS = ("fast", "max")
STEPS = 8                      # the presets leave fewer steps untouched
IMAGE_ROWS = ("sd", "sdxl", "pixart", "sd3", "flux", "qwenimage", "chroma", "flux2", "lumina2", "sana", "kolors")
VIDEO_ROWS = ("wan", "wan22", "wan_vace", "cogvideox", "hunyuan_video", "hunyuan_video15", "ltx_video",
              "ltx2")            # text-to-video pipelines called like the image ones
UNET_ROWS = ("sd", "sdxl", "kolors")


class NotSupported(Exception):
    """diffusers has no such usage for this family."""


@dataclass
class Case:
    """A pipeline set up for a usage, and how to generate with it (a tensor out)."""

    pipe: Any
    call: Callable[[Any], torch.Tensor]
    after: Callable[[Any], None] | None = None       # done after accelerate() (then also on the reference)
    expect_untouched: bool = False                    # the usage must leave the output exactly as it was
    reload: bool = False                              # also check save_pretrained / from_pretrained
    shared_with: Any = None                           # the accelerated pipeline, when `pipe` only shares its parts


@dataclass
class Outcome:
    status: str                  # "works" | "refused" | "n/a" | "FAILS"
    detail: str = ""
    ran: dict = field(default_factory=dict)

    def cell(self) -> str:
        return self.status + (f": {self.detail}" if self.detail else "")


# -- rows -------------------------------------------------------------------------------------------
def _images(out) -> torch.Tensor:
    result = out.frames if hasattr(out, "frames") else out.images
    return result if isinstance(result, torch.Tensor) else torch.as_tensor(result)


def base(row: str) -> Case:
    """The family's tiny pipeline and its default deterministic call."""
    if row == "anyflow_far":
        return Case(make_far_pipeline("micro"), lambda p, **kw: p(**far_call_kwargs(
            "micro", latent_frames=6, chunk=2, **kw)).frames)
    if row == "skyreels_v2":
        return Case(make_skyreels_df_pipeline("micro"), lambda p, **kw: run_skyreels(
            p, "micro", latent_frames=8, block=2, ar_step=1, steps=2, **kw))
    return Case(make_pipeline(row), lambda p, **kw: _images(p(**call_kwargs(row, steps=STEPS, **kw))))


def _with(case: Case, **extra) -> Case:
    """The same pipeline called with extra arguments."""
    call = case.call
    return Case(case.pipe, lambda p: call(p, **extra))


def _image(seed: int, size: int = 32) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- usages -----------------------------------------------------------------------------------------
def _offload_hook(pipe) -> None:
    from accelerate.hooks import CpuOffload, add_hook_to_module

    add_hook_to_module(find_denoiser(pipe)[1], CpuOffload(execution_device="cpu"))


def model_offload(row):
    """HF Accelerate's model-offload hook on the denoiser (what enable_model_cpu_offload installs)."""
    case = base(row)
    _offload_hook(case.pipe)
    return case


def model_offload_after(row):
    """The same hook installed after accelerate()."""
    case = base(row)
    case.after = _offload_hook
    return case


def sequential_offload(row):
    """accelerate.cpu_offload on the denoiser: weights offloaded, AlignDevicesHook on every leaf."""
    from accelerate import cpu_offload

    case = base(row)
    cpu_offload(find_denoiser(case.pipe)[1], execution_device=torch.device("cpu"))
    return case


def _lora_state(pipe, denoiser_attr: str):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    denoiser = getattr(pipe, denoiser_attr)
    torch.manual_seed(1)
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name="made")
    layers = get_peft_model_state_dict(denoiser, adapter_name="made")
    denoiser.delete_adapters("made")
    return layers


def _load_lora(pipe) -> None:
    attr = find_denoiser(pipe)[0]
    if not hasattr(pipe, "load_lora_weights"):
        raise NotSupported(f"{type(pipe).__name__} has no LoRA loader in diffusers")
    layers = _lora_state(pipe, attr)
    with tempfile.TemporaryDirectory() as folder:
        type(pipe).save_lora_weights(folder, **{f"{attr}_lora_layers": layers})
        pipe.load_lora_weights(folder, adapter_name="style")
    pipe.set_adapters(["style"], [0.7])


def lora(row):
    """A LoRA loaded through diffusers' PEFT integration (saved state dict, load_lora_weights,
    set_adapters, fuse_lora) before accelerate()."""
    case = base(row)
    _load_lora(case.pipe)
    case.pipe.fuse_lora()
    return case


def lora_after(row):
    """A LoRA loaded (not fused) after accelerate()."""
    case = base(row)
    if not hasattr(case.pipe, "load_lora_weights"):
        raise NotSupported(f"{type(case.pipe).__name__} has no LoRA loader in diffusers")
    case.after = _load_lora
    return case


def controlnet(row):
    """The family's diffusers ControlNet pipeline with a tiny ControlNet."""
    from diffusers import (ControlNetModel, FluxControlNetModel, FluxControlNetPipeline, SD3ControlNetModel,
                           StableDiffusion3ControlNetPipeline, StableDiffusionControlNetPipeline,
                           StableDiffusionXLControlNetPipeline)

    if row not in ("sd", "sdxl", "sd3", "flux"):
        raise NotSupported("diffusers' ControlNet pipelines cover SD, SDXL, SD3 and Flux")
    parts = make_pipeline(row).components
    torch.manual_seed(2)
    if row in UNET_ROWS:
        net = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=(8, 16))
        cls = StableDiffusionControlNetPipeline if row == "sd" else StableDiffusionXLControlNetPipeline
        extra = dict(image=_image(3))
    elif row == "sd3":
        t = parts["transformer"].config
        net = SD3ControlNetModel(sample_size=t.sample_size, patch_size=t.patch_size, in_channels=t.in_channels,
                                 num_layers=1, attention_head_dim=t.attention_head_dim,
                                 num_attention_heads=t.num_attention_heads, joint_attention_dim=t.joint_attention_dim,
                                 caption_projection_dim=t.caption_projection_dim,
                                 pooled_projection_dim=t.pooled_projection_dim, out_channels=t.out_channels,
                                 pos_embed_max_size=t.pos_embed_max_size)
        cls, extra = StableDiffusion3ControlNetPipeline, dict(control_image=_image(3))
    else:
        t = parts["transformer"].config
        net = FluxControlNetModel(patch_size=t.patch_size, in_channels=t.in_channels, num_layers=1, num_single_layers=1,
                                  attention_head_dim=t.attention_head_dim, num_attention_heads=t.num_attention_heads,
                                  joint_attention_dim=t.joint_attention_dim, pooled_projection_dim=t.pooled_projection_dim,
                                  axes_dims_rope=t.axes_dims_rope)
        cls, extra = FluxControlNetPipeline, dict(control_image=_image(3))
    pipe = cls(**{k: v for k, v in parts.items() if k in _init_names(cls)}, controlnet=net.eval())
    pipe.set_progress_bar_config(disable=True)
    return Case(pipe, lambda p: _images(p(**call_kwargs(row, steps=STEPS), **extra)))


def _init_names(cls) -> set:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def _derived(row: str, kind: str):
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    if row not in ("sd", "sdxl", "sd3", "flux", "qwenimage"):
        raise NotSupported(f"the {kind} variants are SD, SDXL, SD3, Flux and Qwen-Image (diffusers' AutoPipeline)")
    # diffusers' SD3 inpaint pipeline takes 16-channel latents (the real SD3's), not the tiny 4
    base_pipe = make_pipeline(row, latent_channels=16) if (row, kind) == ("sd3", "inpaint") else make_pipeline(row)
    auto = AutoPipelineForImage2Image if kind == "img2img" else AutoPipelineForInpainting
    pipe = auto.from_pipe(base_pipe)
    pipe.set_progress_bar_config(disable=True)
    extra = dict(image=_image(4), strength=0.75, num_inference_steps=12)   # 9 steps run
    if kind == "inpaint":
        extra["mask_image"] = (_image(5)[:, :1] > 0.5).float()
    # SD-style img2img takes its size from the image; Qwen-Image's would default to 1024x1024
    dropped = ("height", "width") if kind == "img2img" and row != "qwenimage" else ()

    def call(p):
        kw = {k: v for k, v in call_kwargs(row, steps=12).items() if k not in dropped}
        return _images(p(**{**kw, **extra}))

    return Case(pipe, call)


def img2img(row):
    """AutoPipelineForImage2Image.from_pipe(text-to-image pipeline), strength 0.75."""
    return _derived(row, "img2img")


def inpaint(row):
    """AutoPipelineForInpainting.from_pipe(text-to-image pipeline)."""
    return _derived(row, "inpaint")


def shared_components(row):
    """A second pipeline built from the accelerated one's components (its own scheduler): it must
    run exactly the original code."""
    case = base(row)
    other = type(case.pipe)(**{**case.pipe.components, "scheduler": copy.deepcopy(case.pipe.scheduler)})
    other.set_progress_bar_config(disable=True)
    return Case(other, case.call, expect_untouched=True, shared_with=case.pipe)


def _scheduler(name: str):
    def usage(row):
        from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                               LCMScheduler, UniPCMultistepScheduler)

        if row not in UNET_ROWS:
            raise NotSupported("scheduler swaps checked on the UNet pipelines")
        cls = {"DDIM": DDIMScheduler, "DPM-Solver++ 2M": DPMSolverMultistepScheduler,
               "Euler ancestral": EulerAncestralDiscreteScheduler, "UniPC": UniPCMultistepScheduler,
               "LCM": LCMScheduler}[name]
        case = base(row)
        extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if name.startswith("DPM") else {}
        case.pipe.scheduler = cls.from_config(case.pipe.scheduler.config, **extra)
        return case

    usage.__doc__ = f"scheduler: {name}"
    return usage


def few_steps(row):
    """1-4 steps (few-step models): the presets must leave them untouched and say so."""
    if row not in IMAGE_ROWS + VIDEO_ROWS:
        raise NotSupported("rollouts of this family are per chunk")
    case = base(row)
    call = case.call
    return Case(case.pipe, lambda p: torch.cat([call(p, num_inference_steps=s) for s in (1, 2, 4)]),
                expect_untouched=True)


def _dtype(dtype: torch.dtype, after: bool = False):
    def usage(row):
        case = base(row)
        if after:
            case.after = lambda p: p.to(dtype)
        else:
            case.pipe.to(dtype)
        call = case.call
        case.call = lambda p: call(p).float()
        return case

    name = str(dtype).replace("torch.", "")
    usage.__doc__ = f"pipe.to({name}) " + ("after accelerate()" if after else "before accelerate()")
    return usage


def reload(pipe):
    """``save_pretrained`` then ``from_pretrained`` (components that are None stay None)."""
    absent = {name: None for name, part in pipe.components.items() if part is None}
    with tempfile.TemporaryDirectory() as folder:
        pipe.save_pretrained(folder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = type(pipe).from_pretrained(folder, **absent)
    out.set_progress_bar_config(disable=True)
    return out


def save_pretrained(row):
    """save_pretrained after accelerate(): nothing of the acceleration is saved; the reloaded
    pipeline is the same as one saved and reloaded without acceleration."""
    case = base(row)
    case.reload = True
    return case


def callback_on_step_end(row):
    """callback_on_step_end that edits the latents at step 2."""
    case = base(row)
    if "callback_on_step_end" not in inspect.signature(type(case.pipe).__call__).parameters:
        raise NotSupported(f"diffusers 0.42.1's {type(case.pipe).__name__} takes no callback_on_step_end")

    def edit(pipe, i, t, kw):
        return {"latents": kw["latents"] * 0.98} if i == 2 else {}

    return _with(case, callback_on_step_end=edit, callback_on_step_end_tensor_inputs=["latents"])


def legacy_callback(row):
    """PixArt's legacy ``callback`` / ``callback_steps``."""
    if row != "pixart":
        raise NotSupported("only PixArt pipelines take the legacy callback")
    seen = []
    return _with(base(row), callback=lambda i, t, latents: seen.append(i), callback_steps=1)


# pipelines whose own code cannot run the batch usage (checked unaccelerated)
_NO_BATCH = {
    "cogvideox": "diffusers 0.42.1's CogVideoXPipeline sets num_videos_per_prompt = 1 whatever it is given",
    "wan_vace": "diffusers 0.42.1's WanVACEPipeline refuses prompt lists (\"not yet supported\")",
    "hunyuan_video15": "diffusers 0.42.1's HunyuanVideo15Pipeline makes its image embeddings for the prompts, not "
                       "prompts x num_videos_per_prompt (size mismatch, unaccelerated)",
}


def batch(row):
    """Two prompts, two images each, one generator per image."""
    if row not in IMAGE_ROWS + VIDEO_ROWS:
        raise NotSupported("the rollout builders take one prompt")
    if row in _NO_BATCH:
        raise NotSupported(_NO_BATCH[row])
    import inspect

    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    case = base(row)
    call = case.call
    per_prompt = "num_images_per_prompt" if "num_images_per_prompt" in inspect.signature(
        type(case.pipe).__call__).parameters else "num_videos_per_prompt"
    prompts = ["a red circle", "a blue square"]
    # true-CFG pipelines (Qwen-Image, HunyuanVideo) take one negative prompt per prompt: a single
    # string is not broadcast to the batch there (diffusers 0.42.1)
    extra = {"negative_prompt": [" "] * len(prompts)} if "negative_prompt" in call_kwargs(row) else {}
    return Case(case.pipe, lambda p: call(p, prompt=prompts, **{per_prompt: 2}, **extra,
                                          generator=[g.manual_seed(s) for s, g in enumerate(gens)]))


def decoded(row):
    """output_type="pt" (through the VAE) instead of latents."""
    if row not in IMAGE_ROWS + VIDEO_ROWS:
        raise NotSupported("the rollout builders return latents")
    return _with(base(row), output_type="pt")


USAGES: dict[str, Callable[[str], Case]] = {
    "offload hook (model)": model_offload,
    "offload hook after accelerate()": model_offload_after,
    "sequential offload": sequential_offload,
    "LoRA, fused": lora,
    "LoRA after accelerate()": lora_after,
    "ControlNet": controlnet,
    "img2img (from_pipe)": img2img,
    "inpaint (from_pipe)": inpaint,
    "pipeline sharing the components": shared_components,
    "DDIM": _scheduler("DDIM"),
    "DPM-Solver++ 2M": _scheduler("DPM-Solver++ 2M"),
    "Euler ancestral": _scheduler("Euler ancestral"),
    "UniPC": _scheduler("UniPC"),
    "LCM": _scheduler("LCM"),
    "1-4 steps": few_steps,
    "bf16": _dtype(torch.bfloat16),
    "fp16": _dtype(torch.float16),
    "to(bf16) after accelerate()": _dtype(torch.bfloat16, after=True),
    "save_pretrained": save_pretrained,
    "callback_on_step_end": callback_on_step_end,
    "legacy callback": legacy_callback,
    "batch, prompt lists, generators": batch,
    "output_type pt": decoded,
}


# -- one cell ----------------------------------------------------------------------------------------
def _what_ran(pipe) -> dict:
    gen = pipe.acceleration.report().generation
    c = gen["counters"]
    ran = {k: c[k] for k in ("components_reused", "deepcache_cached", "guidance_nfe_saved", "attention_sparse_calls")
           if c.get(k)}
    handles = [h.technique for h in pipe.acceleration.handles]
    if "kv_cache" in handles:
        ran["kv_cache chunks"] = len(pipe.acceleration.stats()["kv_cache"].get("chunks", [])) or \
            len(pipe.acceleration.stats()["kv_cache"].get("rows", {}))
    ran.update({f"{t} paused": why for t, why in gen.get("paused", {}).items()})
    return ran


def check(row: str, usage: str, preset: str) -> Outcome:
    """Run one cell: see the module docstring for what each outcome means."""
    try:
        case = USAGES[usage](row)
    except NotSupported as exc:
        return Outcome("n/a", str(exc))
    target = case.shared_with if case.shared_with is not None else case.pipe
    try:
        reference = case.call(case.pipe)
        if case.after is not None:          # the usage's own effect, without acceleration
            fresh = USAGES[usage](row)
            fresh.after(fresh.pipe)
            reference = fresh.call(fresh.pipe)
        before = surface(target)
        try:
            accelerate(target, preset)
        except ValueError as exc:
            return Outcome("refused", str(exc).splitlines()[0])
        if case.after is not None:
            case.after(case.pipe)
        first, second = case.call(case.pipe), case.call(case.pipe)
        ran = _what_ran(target)
        if not torch.equal(first, second):
            return Outcome("FAILS", "a second call differs from the first (stale state)", ran)
        if case.expect_untouched and not torch.equal(first, reference):
            return Outcome("FAILS", "changed an output it must leave untouched", ran)
        if case.reload:
            reloaded, plain = reload(case.pipe), reload(USAGES[usage](row).pipe)
            if hasattr(reloaded, "acceleration") or not torch.equal(case.call(reloaded), case.call(plain)):
                return Outcome("FAILS", "the reloaded pipeline is not the original", ran)
        target.acceleration.remove()
        if case.after is None and surface(target) != before:
            return Outcome("FAILS", "remove() left changes behind", ran)
        if not torch.equal(case.call(case.pipe), reference):
            return Outcome("FAILS", "remove() did not restore the output", ran)
        again = USAGES[usage](row)
        again_target = again.shared_with if again.shared_with is not None else again.pipe
        accelerate(again_target, preset)
        if again.after is not None:
            again.after(again.pipe)
        if not torch.equal(again.call(again.pipe), first):
            return Outcome("FAILS", "differs from a freshly accelerated pipeline", ran)
        again_target.acceleration.remove()
    except NotSupported as exc:
        return Outcome("n/a", str(exc))
    except Exception as exc:                 # a crash is a finding, reported in the cell
        return Outcome("FAILS", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    return Outcome("works", "", ran)
