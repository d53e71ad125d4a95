"""Embedded demo models: small, trained text-to-image pipelines that need no download.

Trained here on a procedural dataset of coloured shapes (`dataset.py`), 64x64 RGB:

- ``load_pipeline("unet")``: `StableDiffusionPipeline` (UNet2DConditionModel, DDIM, epsilon)
- ``load_pipeline("dit")``: `StableDiffusion3Pipeline` (SD3Transformer2DModel, flow matching,
  FlowMatchEulerDiscreteScheduler; both CLIP slots hold the demo text encoder, no T5)
- ``load_pipeline("ar_video")``: `AnyFlowFARPipeline` (AnyFlowFARTransformer3DModel), an
  autoregressive text-to-video model trained on moving-shape clips (`video.py`); call it
  with ``video.call_kwargs(prompt, latent_frames=16)`` (64x64 frames, chunks of 1 latent
  frame, 8 steps, guidance 3, ``max_sequence_length=32``)
- ``load_clip()``: the demo `CLIPModel` and its tokenizer, for CLIP score and for Frechet
  distance features (`clip_score`, `image_features`).

Both pipelines share the demo VAE (`AutoencoderKL`, 64x64x3 <-> 16x16x4) and the demo
CLIP text encoder; the defaults (`pipe(prompt)`) give 64x64 images. Suggested sampling:
``num_inference_steps=25, guidance_scale=5.0`` (`DEFAULT_STEPS`, `DEFAULT_GUIDANCE`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .loaders import WEIGHTS_DIR, _dir, is_available, load_clip, load_tokenizer, load_vae

KINDS = ("unet", "dit")           # text-to-image
VIDEO_KINDS = ("ar_video",)       # text-to-video (`video.py`)
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 5.0
IMAGE_SIZE = 64

__all__ = [
    "KINDS",
    "VIDEO_KINDS",
    "WEIGHTS_DIR",
    "DEFAULT_STEPS",
    "DEFAULT_GUIDANCE",
    "IMAGE_SIZE",
    "load_pipeline",
    "is_available",
    "load_clip",
    "load_vae",
    "load_tokenizer",
    "clip_score",
    "image_features",
    "to_pixel_values",
]


def load_pipeline(
    kind: str = "dit",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    weights_dir: str | Path | None = None,
    progress_bar: bool = False,
):
    """A ready text-to-image pipeline built from the embedded weights (no network).

    kind: ``"unet"`` -> `StableDiffusionPipeline`, ``"dit"`` -> `StableDiffusion3Pipeline`,
    ``"ar_video"`` -> `AnyFlowFARPipeline` (text-to-video; see `video.call_kwargs` for its
    arguments). Weights are stored in fp16 and cast to `dtype` (float32 by default, best on CPU).
    """
    from diffusers import (
        DDIMScheduler,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    from .models import text_encoder_from_clip

    if kind not in KINDS + VIDEO_KINDS:
        raise ValueError(f"unknown demo pipeline {kind!r}; choose one of {KINDS + VIDEO_KINDS}")
    if kind == "ar_video":
        from .video import load_video_pipeline

        pipe = load_video_pipeline(_dir("ar_video", weights_dir), dtype=dtype, weights_dir=weights_dir).to(device)
        pipe.set_progress_bar_config(disable=not progress_bar)
        return pipe
    clip, tok = load_clip(dtype=dtype, weights_dir=weights_dir)
    vae = load_vae(dtype=dtype, weights_dir=weights_dir)
    if kind == "unet":
        d = _dir("unet", weights_dir)
        unet = UNet2DConditionModel.from_pretrained(d, torch_dtype=dtype, local_files_only=True)
        sched = DDIMScheduler.from_pretrained(d / "scheduler", local_files_only=True)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder_from_clip(clip, with_projection=False),
            tokenizer=tok,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        d = _dir("dit", weights_dir)
        transformer = SD3Transformer2DModel.from_pretrained(d, torch_dtype=dtype, local_files_only=True)
        sched = FlowMatchEulerDiscreteScheduler.from_pretrained(d / "scheduler", local_files_only=True)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=sched,
            vae=vae,
            text_encoder=text_encoder_from_clip(clip, with_projection=True),
            tokenizer=tok,
            text_encoder_2=text_encoder_from_clip(clip, with_projection=True),
            tokenizer_2=tok,
            text_encoder_3=None,
            tokenizer_3=None,
        )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress_bar)
    return pipe


def to_pixel_values(images) -> torch.Tensor:
    """PIL images, a uint8 array (N, H, W, 3) or a float tensor (N, 3, H, W) in [0, 1]
    -> float tensor (N, 3, 64, 64) in [-1, 1], as the demo CLIP expects."""
    from PIL import Image

    if isinstance(images, torch.Tensor):
        x = images.float()
        if x.ndim == 3:
            x = x[None]
        x = x * 2 - 1
    else:
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = images[None]
        arr = np.stack([np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
    return x


@torch.no_grad()
def image_features(images, clip=None, batch_size: int = 256) -> torch.Tensor:
    """Demo-CLIP image embeddings (before normalisation), shape (N, 64): Frechet features."""
    model = (clip or load_clip())[0] if not isinstance(clip, torch.nn.Module) else clip
    x = to_pixel_values(images)
    out = [model.get_image_features(pixel_values=x[i : i + batch_size].to(model.dtype)) for i in range(0, len(x), batch_size)]
    return torch.cat([o if isinstance(o, torch.Tensor) else o.pooler_output for o in out]).float()


@torch.no_grad()
def clip_score(images, prompts: Sequence[str], clip=None) -> torch.Tensor:
    """Per-image CLIP score ``100 * max(cos(image, text), 0)`` with the demo CLIP."""
    model, tok = clip if clip is not None else load_clip()
    img = image_features(images, model)
    ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    txt = model.get_text_features(input_ids=ids)
    txt = (txt if isinstance(txt, torch.Tensor) else txt.pooler_output).float()
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    return 100 * cos.clamp(min=0)
