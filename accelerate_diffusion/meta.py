"""The published denoisers (``published.py``) on the meta device, driven by their real pipelines.

A denoiser built under ``torch.device("meta")`` has shapes but no storage: even Wan 14B builds
in seconds and runs a whole generation without computing anything, while ``FlopCounterMode``
counts every op from its shapes. The pipeline is the real diffusers class (its loop, scheduler
and CFG layout), given text embeddings of the published shapes (zeros) instead of text
encoders, and no VAE (latent output). A hook registered on the denoiser *before* acceleration,
so the innermost of all, moves each call's inputs to meta and hands back zeros on the CPU of
the output's shape: the technique hooks outside it and the scheduler see ordinary CPU tensors,
the hooks inside it (blocks, attention) see meta tensors.

    pipe = meta_pipeline("wan21_14b")
    accelerate(pipe, "fast", measure_macs=True)
    pipe(**meta_call_kwargs("wan21_14b"))
    pipe.acceleration.state.macs
"""

from __future__ import annotations

import dataclasses
import inspect

import torch

from .published import Published, get_published

BRIDGE_HOOK = "accelerate_diffusion.meta_bridge"


def build_denoiser(name: str, device: str | torch.device = "meta") -> torch.nn.Module:
    """The published denoiser ``name`` with its real config, on ``device`` (meta: no storage)."""
    import diffusers

    spec = get_published(name)
    cls = getattr(diffusers, spec.denoiser)
    with torch.device(device):
        model = cls(**spec.config)
    return model.eval().requires_grad_(False)


def _to_meta(value):
    if isinstance(value, torch.Tensor):
        return value.to("meta")
    if isinstance(value, dict):
        return {k: _to_meta(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_to_meta(v) for v in value)
    return value


def _to_cpu_zeros(value):
    if isinstance(value, torch.Tensor):
        return torch.zeros(value.shape, dtype=value.dtype) if value.device.type == "meta" else value
    if isinstance(value, tuple):
        return tuple(_to_cpu_zeros(v) for v in value)
    if dataclasses.is_dataclass(value):     # diffusers BaseOutput
        return type(value)(**{k: _to_cpu_zeros(v) for k, v in value.items()})
    return value


# Denoisers that read a call argument's values on the host: Lumina 2 counts each row's prompt tokens
# (``encoder_attention_mask.sum(1).tolist()`` in its rope_embedder, whose second argument it is). That
# submodule is handed the CPU tensor the pipeline passed; everything else sees meta tensors.
# class name -> (submodule, call argument, its position in the submodule's arguments)
HOST_READS = {"Lumina2Transformer2DModel": ("rope_embedder", "encoder_attention_mask", 1)}


def _bridge_hook(denoiser):
    from diffusers.hooks import ModelHook

    read = HOST_READS.get(type(denoiser).__name__)

    class MetaBridge(ModelHook):
        """Innermost hook on a meta denoiser: CPU inputs in, meta inside, CPU zeros out."""

        host = None

        def new_forward(self, module, *args, **kwargs):
            if read is not None:
                self.host = kwargs.get(read[1])
            out = self.fn_ref.original_forward(*_to_meta(args), **_to_meta(kwargs))
            return _to_cpu_zeros(out)

    bridge = MetaBridge()
    if read is not None:
        def host_values(module, args):
            return (*args[:read[2]], bridge.host, *args[read[2] + 1:])

        denoiser.get_submodule(read[0]).register_forward_pre_hook(host_values)
    return bridge


def _cpu_pipeline_class(cls):
    """``cls`` whose latents, embeddings and timesteps live on the CPU although its denoiser is
    on meta (diffusers would otherwise take the meta device as the execution device)."""
    cpu = property(lambda self: torch.device("cpu"))
    return type(cls.__name__, (cls,), {"_execution_device": cpu, "device": cpu,
                                       "__module__": cls.__module__})


def meta_pipeline(name: str, device: str = "meta"):
    """The published model's pipeline class with its scheduler, the denoiser on meta (and a second
    expert where the spec has a boundary_ratio), no text encoders and no VAE; call it with :func:`meta_call_kwargs`. ``device="cpu"``: the same with a
    real denoiser of random weights (for real calls at a reduced size)."""
    import diffusers
    from diffusers.hooks import HookRegistry

    spec = get_published(name)
    denoiser = build_denoiser(name, device)
    scheduler = getattr(diffusers, spec.scheduler)(**spec.scheduler_config)
    cls = getattr(diffusers, spec.pipeline)
    if torch.device(device).type == "meta":
        HookRegistry.check_if_exists_or_initialize(denoiser).register_hook(_bridge_hook(denoiser), BRIDGE_HOOK)
        cls = _cpu_pipeline_class(cls)
    attr = "unet" if spec.denoiser == "UNet2DConditionModel" else "transformer"
    components = {k: None for k in cls._get_signature_keys(cls)[0]}
    components.update({attr: denoiser, "scheduler": scheduler})
    if spec.boundary_ratio is not None:     # Wan 2.2 A14B: the low-noise expert, same config, its own bridge
        expert = build_denoiser(name, device)
        if torch.device(device).type == "meta":
            HookRegistry.check_if_exists_or_initialize(expert).register_hook(_bridge_hook(expert), BRIDGE_HOOK)
        components.update(transformer_2=expert, boundary_ratio=spec.boundary_ratio)
    parameters = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in components.items() if k in parameters}
    for flag in ("requires_safety_checker", "add_watermarker"):   # SD's checker, SDXL's watermark: off
        if flag in parameters:
            kwargs[flag] = False
    pipe = cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _embeds(spec: Published, batch: int = 1) -> dict:
    """Zero text embeddings of the published shapes, negative ones too where the call runs CFG
    (their values do not change MACs; an attention mask of ones where the pipeline takes one)."""
    out = {}
    cfg = spec.cfg in ("batched", "separate") and spec.guidance_scale > 1
    for key, shape in spec.embeds.items():
        # a text mask (Chroma's prompt_attention_mask, Qwen-Image's prompt_embeds_mask): every token valid, in
        # the embeddings' dtype as their pipelines make it
        value = torch.ones(batch, *shape) if key.endswith("_mask") else torch.zeros(batch, *shape)
        out[key] = value
        if cfg:
            out["negative_" + key] = value.clone()
    params = _call_parameters(spec.pipeline)
    if "prompt_attention_mask" in params and "prompt_attention_mask" not in out:
        # PixArt, SANA, Lumina 2, LTX-Video, HunyuanVideo: a mask of ones (Chroma's is a published embedding)
        n = spec.embeds["prompt_embeds"][0]
        out["prompt_attention_mask"] = torch.ones(batch, n, dtype=torch.long)
        if cfg and "negative_prompt_attention_mask" in params:
            out["negative_prompt_attention_mask"] = torch.ones(batch, n, dtype=torch.long)
    if cfg and "negative_prompt" in params and "negative_prompt_embeds" in out:
        out["negative_prompt"] = None     # a default "" (PixArt, SANA, Lumina 2) may not be given with the embeddings
    return out


def meta_call_kwargs(name: str, steps: int | None = None, height: int | None = None,
                     width: int | None = None, num_frames: int | None = None, **overrides) -> dict:
    """Arguments of the published default call (resolution, steps, guidance), latent output."""
    spec = get_published(name)
    kw = dict(height=height or spec.height, width=width or spec.width,
              num_inference_steps=steps or spec.steps, output_type="latent",
              generator=torch.Generator("cpu").manual_seed(0), **_embeds(spec))
    if spec.guidance_scale:
        kw["guidance_scale"] = spec.guidance_scale
    elif "Flux" in spec.pipeline:
        kw["guidance_scale"] = 0.0
    if spec.num_frames is not None:
        kw["num_frames"] = num_frames or spec.num_frames
    if "max_sequence_length" in _call_parameters(spec.pipeline) and spec.pipeline != "StableDiffusion3Pipeline":
        kw["max_sequence_length"] = spec.embeds["prompt_embeds"][0]
    kw.update(spec.extra_call)        # e.g. Wan 2.2 A14B's guidance_scale_2 (the low-noise expert's)
    kw.update(overrides)
    return kw


def _call_parameters(pipeline: str) -> set[str]:
    import diffusers

    return set(inspect.signature(getattr(diffusers, pipeline).__call__).parameters)
