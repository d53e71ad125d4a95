"""The demo autoregressive video model: moving-shape clips, model configuration, VAE adapter.

The pipeline is diffusers' own ``AnyFlowFARPipeline`` (so the ``kv_cache`` technique applies
unchanged) built from small parts:

- transformer: ``AnyFlowFARTransformer3DModel`` (4 layers, 4 heads x 36, 16x16x4 latents,
  64 tokens per frame at patch 2, 16 per compressed frame), trained here as a plain
  flow-matching velocity model. ``gate_value=0`` switches the flow-map "delta" timestep
  embedding off, so the model ignores ``r_timestep`` and ``use_mean_velocity`` makes no
  difference: sampling is plain Euler with ``FlowMapEulerDiscreteScheduler``.
- text encoder / tokenizer: the demo CLIP text tower and tokenizer (32 tokens): pass
  ``max_sequence_length=MAX_SEQUENCE_LENGTH`` (the pipeline's default 512 exceeds CLIP's
  positions and fails loudly).
- vae: `DemoVideoVAE`, an adapter around the demo image ``AutoencoderKL`` with no weights of
  its own: one latent frame <-> one 64x64 frame.

Frame convention. The pipeline reads ``vae.config.scale_factor_temporal`` (4 here, as Wan)
and maps ``num_frames = 4 (T - 1) + 1`` to ``T`` latent frames. Each latent frame is one
key frame of the clip; the adapter decodes them and fills the 3 frames between two key
frames by linear blending, so ``pipe(..., num_frames=N, output_type="np")`` returns N frames
as asked (set ``vae.config.temporal_interpolation = False`` — or use ``output_type="latent"``
and `decode_keyframes` — for the T key frames only). Quality figures are taken on key frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from . import dataset as ds
from .models import TEXT_DIM
from .tokenizer import MAX_LENGTH

MAX_SEQUENCE_LENGTH = MAX_LENGTH  # pass as the pipeline's max_sequence_length
CLIP_FRAMES = 24                  # key frames per training clip
TEMPORAL_FACTOR = 4               # video frames per latent frame (Wan's arithmetic)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEED = (1.5, 3.0)                # pixels per key frame
DEFAULT_STEPS = 8
DEFAULT_GUIDANCE = 3.0
DEFAULT_CHUNK = 1                 # latent frames per chunk
DEFAULT_SHIFT = 2.0               # scheduler shift used for sampling

TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=3,
    num_attention_heads=4, attention_head_dim=36,  # head dim a multiple of 6: 3-axis RoPE
    in_channels=4, out_channels=4, text_dim=TEXT_DIM, freq_dim=64, ffn_dim=384, num_layers=4,
    rope_max_seq_len=256, gate_value=0.0, chunk_partition=(1,) * 21,
)


# ---------------------------------------------------------------- clips


@dataclass
class Mover:
    shape: ds.Shape
    direction: str
    vx: float
    vy: float


def _caption(movers: list[Mover], background: str) -> str:
    if len(movers) == 1:
        m = movers[0]
        s = m.shape
        body = f"a {s.size} {s.color} {s.kind} moving {m.direction}"
    else:  # sizes dropped to stay within the tokenizer's 32 tokens
        body = " and ".join(f"a {m.shape.color} {m.shape.kind} moving {m.direction}" for m in movers)
    return f"{body} on a {background} background"


def static_caption(caption: str) -> str:
    """The caption without its motion ("a large red circle on a gray background"): what the
    demo CLIP (trained on still images) can score."""
    import re

    return re.sub(r" moving (left|right|up|down)", "", caption)


def make_clip(index: int, seed: int = 0, split: str = "train", frames: int = CLIP_FRAMES):
    """Clip ``index`` of a split: ``(frames uint8 (T, 64, 64, 3), caption)``.

    One shape (60%) or two on a plain background, each moving left/right/up/down at 1.5-3
    pixels per frame and bouncing off the borders (the caption names the first direction).
    """
    rng = np.random.default_rng([seed, ds.SPLIT_IDS[split], index, 1])
    background = ds._choice(rng, tuple(ds.BACKGROUNDS))
    colors = tuple(c for c in ds.COLORS if c != background)
    n = 1 if rng.random() < 0.6 else 2
    movers = []
    for _ in range(n):
        s = ds._new_shape(rng, colors)
        while movers and (s.kind, s.color) == (movers[0].shape.kind, movers[0].shape.color):
            s = ds._new_shape(rng, colors)
        lo, hi = s.radius + 1, ds.IMAGE_SIZE - 1 - s.radius
        s.x, s.y = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
        d = ds._choice(rng, tuple(DIRECTIONS))
        v = float(rng.uniform(*SPEED))
        movers.append(Mover(s, d, DIRECTIONS[d][0] * v, DIRECTIONS[d][1] * v))
    scene = ds.Scene(shapes=[], background=background, texture="plain", layout="")
    bg = ds._background(scene, rng, ds.IMAGE_SIZE)
    shades = [float(rng.uniform(-10, 10)) for _ in movers]
    out = np.empty((frames, ds.IMAGE_SIZE, ds.IMAGE_SIZE, 3), dtype=np.uint8)
    for f in range(frames):
        img = bg.copy()
        for m, shade in zip(movers, shades):
            mask = ds.shape_mask(m.shape)[..., None]
            img = img * (1 - mask) + (np.array(ds.COLORS[m.shape.color], np.float32) + shade) * mask
        out[f] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        for m in movers:  # advance and bounce
            s = m.shape
            lo, hi = s.radius + 1, ds.IMAGE_SIZE - 1 - s.radius
            s.x += m.vx
            s.y += m.vy
            if not lo <= s.x <= hi:
                m.vx = -m.vx
                s.x = float(np.clip(2 * np.clip(s.x, lo, hi) - s.x, lo, hi))
            if not lo <= s.y <= hi:
                m.vy = -m.vy
                s.y = float(np.clip(2 * np.clip(s.y, lo, hi) - s.y, lo, hi))
    return out, _caption(movers, background)


def generate_clips(n: int, seed: int = 0, split: str = "train", frames: int = CLIP_FRAMES):
    """``n`` clips as ``(uint8 (n, T, 64, 64, 3), captions)``."""
    clips = np.empty((n, frames, ds.IMAGE_SIZE, ds.IMAGE_SIZE, 3), dtype=np.uint8)
    caps = []
    for i in range(n):
        clips[i], c = make_clip(i, seed, split, frames)
        caps.append(c)
    return clips, caps


# ---------------------------------------------------------------- VAE adapter


class DemoVideoVAE(ModelMixin, ConfigMixin):
    """The demo image VAE as the video VAE of ``AnyFlowFARPipeline``: frame by frame.

    Latents are ``(B, 4, T, 16, 16)``; ``latents_mean``/``latents_std`` (per channel, from the
    training clips) normalise them the way the pipeline expects. No weights of its own: the
    wrapped ``AutoencoderKL`` is attached as ``image_vae`` by the loader.
    """

    @register_to_config
    def __init__(self, z_dim: int = 4, scale_factor_temporal: int = TEMPORAL_FACTOR, scale_factor_spatial: int = 4,
                 latents_mean: tuple = (0.0,) * 4, latents_std: tuple = (1.0,) * 4,
                 temporal_interpolation: bool = True):
        super().__init__()
        self.image_vae = None

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)

    def _video(self, x: torch.Tensor, b: int) -> torch.Tensor:
        return x.reshape(b, -1, *x.shape[1:]).permute(0, 2, 1, 3, 4)

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixel video (B, 3, N, H, W), N = 4 (T - 1) + 1 -> posterior moments (B, 8, T, h, w)
        of its key frames (every ``scale_factor_temporal``-th frame)."""
        key = video[:, :, :: self.config.scale_factor_temporal]
        post = self.image_vae.encode(self._frames(key)).latent_dist
        return self._video(torch.cat([post.mean, post.logvar], 1), video.shape[0])

    def decode_keyframes(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, 4, T, h, w) -> frames (B, 3, T, H, W) in [-1, 1], one per latent frame."""
        return self._video(self.image_vae.decode(self._frames(z)).sample, z.shape[0])

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """Raw latents -> video (B, 3, N, H, W): key frames, blended in between when
        ``temporal_interpolation`` (N = 4 (T - 1) + 1, what ``num_frames`` asked for)."""
        video = self.decode_keyframes(z)
        k = self.config.scale_factor_temporal
        if self.config.temporal_interpolation and video.shape[2] > 1 and k > 1:
            b, c, t, h, w = video.shape
            video = F.interpolate(video.permute(0, 1, 3, 4, 2).reshape(b, c * h * w, t), size=(t - 1) * k + 1,
                                  mode="linear", align_corners=True)
            video = video.reshape(b, c, h, w, -1).permute(0, 1, 4, 2, 3)
        return (video,) if not return_dict else _Decoded(video)


@dataclass
class _Decoded:
    sample: torch.Tensor


def normalize(raw: torch.Tensor, vae: DemoVideoVAE, dim: int = 1) -> torch.Tensor:
    """Raw VAE latents -> the pipeline's normalised latents (channel axis ``dim``)."""
    shape = [1] * raw.ndim
    shape[dim] = -1
    mean = torch.tensor(vae.config.latents_mean, dtype=raw.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, dtype=raw.dtype).view(shape)
    return (raw - mean) / std


def denormalize(z: torch.Tensor, vae: DemoVideoVAE, dim: int = 1) -> torch.Tensor:
    shape = [1] * z.ndim
    shape[dim] = -1
    mean = torch.tensor(vae.config.latents_mean, dtype=z.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, dtype=z.dtype).view(shape)
    return z * std + mean


@torch.no_grad()
def decode_keyframes(pipe, latents: torch.Tensor) -> torch.Tensor:
    """The pipeline's ``output_type="latent"`` output (B, 4, T, h, w) -> key frames
    (B, T, 3, 64, 64) in [0, 1]."""
    vae = pipe.vae
    video = vae.decode_keyframes(denormalize(latents.to(vae.dtype), vae))
    return ((video.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)


# ---------------------------------------------------------------- pipeline


def partition(latent_frames: int, chunk: int = DEFAULT_CHUNK) -> list[int]:
    """``latent_frames`` split into chunks of ``chunk`` (the last one shorter if needed)."""
    return [chunk] * (latent_frames // chunk) + ([latent_frames % chunk] if latent_frames % chunk else [])


def call_kwargs(prompt: str | list[str] = "a large red circle moving right on a gray background",
                latent_frames: int = 16, chunk: int = DEFAULT_CHUNK, steps: int = DEFAULT_STEPS,
                guidance: float = DEFAULT_GUIDANCE, seed: int = 0, **overrides) -> dict:
    """Arguments for one rollout of ``latent_frames`` key frames (64x64) in chunks of ``chunk``."""
    kw = dict(prompt=prompt, height=ds.IMAGE_SIZE, width=ds.IMAGE_SIZE,
              num_frames=(latent_frames - 1) * TEMPORAL_FACTOR + 1, num_inference_steps=steps,
              guidance_scale=guidance, chunk_partition=partition(latent_frames, chunk),
              max_sequence_length=MAX_SEQUENCE_LENGTH, generator=torch.Generator("cpu").manual_seed(seed))
    kw.update(overrides)
    return kw


def new_transformer():
    from diffusers import AnyFlowFARTransformer3DModel

    return AnyFlowFARTransformer3DModel(**TRANSFORMER_CONFIG)


def new_scheduler():
    from diffusers import FlowMapEulerDiscreteScheduler

    return FlowMapEulerDiscreteScheduler(num_train_timesteps=1000, shift=DEFAULT_SHIFT)


def build_pipeline(transformer, clip, tokenizer, image_vae, vae_config: dict, scheduler=None):
    """``AnyFlowFARPipeline`` from demo parts (used by the loader and by training)."""
    from diffusers import AnyFlowFARPipeline

    from .models import text_encoder_from_clip

    vae = DemoVideoVAE(**vae_config)
    vae.image_vae = image_vae
    vae.to(image_vae.dtype).eval()
    pipe = AnyFlowFARPipeline(tokenizer=tokenizer, text_encoder=text_encoder_from_clip(clip, with_projection=False),
                              transformer=transformer, vae=vae, scheduler=scheduler or new_scheduler())
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return pipe


def load_video_pipeline(directory: Path, dtype: torch.dtype = torch.float32, weights_dir=None):
    from diffusers import AnyFlowFARTransformer3DModel, FlowMapEulerDiscreteScheduler

    from .loaders import load_clip, load_vae

    clip, tok = load_clip(dtype=dtype, weights_dir=weights_dir)
    transformer = AnyFlowFARTransformer3DModel.from_pretrained(directory, torch_dtype=dtype, local_files_only=True)
    sched = FlowMapEulerDiscreteScheduler.from_pretrained(directory / "scheduler", local_files_only=True)
    vae_config = DemoVideoVAE.load_config(directory / "vae")
    vae_config = {k: v for k, v in vae_config.items() if not k.startswith("_")}
    return build_pipeline(transformer, clip, tok, load_vae(dtype=dtype, weights_dir=weights_dir), vae_config, sched)
