"""Tiny, offline autoregressive video pipelines (AnyFlow-FAR) for tests and benchmarks.

Kept apart from ``testing.py`` because these pipelines roll out chunk by chunk and need
their own call arguments (``chunk_partition``, frame counts of the form 4n+1).

    pipe = make_far_pipeline("micro")
    latents = run_far(pipe, "micro", latent_frames=16, chunk=2)
"""

from __future__ import annotations

import torch

from .testing import _t5, _t5_tokenizer

SIZES = ("micro", "small")

# Transformer settings per size. Head dims are multiples of 6 so AnyFlow's 3-axis RoPE
# split (t, h, w) is even; rope_max_seq_len bounds the number of latent frames.
_TRANSFORMER = {
    "micro": dict(num_attention_heads=2, attention_head_dim=12, num_layers=2, ffn_dim=32),
    "small": dict(num_attention_heads=4, attention_head_dim=48, num_layers=6, ffn_dim=512),
}
# Latent spatial size per size: micro 8x8 latents (16 tokens per frame), small 16x16 (64).
LATENT_HW = {"micro": 8, "small": 16}


def make_far_pipeline(size: str = "micro", seed: int = 0, full_chunk_limit: int = 3):
    """An ``AnyFlowFARPipeline`` of the real classes with deterministic random weights (CPU, fp32)."""
    from diffusers import (AnyFlowFARPipeline, AnyFlowFARTransformer3DModel, AutoencoderKLWan,
                           FlowMapEulerDiscreteScheduler)

    if size not in SIZES:
        raise ValueError(f"size: unknown size {size!r}; allowed: {', '.join(SIZES)}")
    torch.manual_seed(seed)
    d = 32
    transformer = AnyFlowFARTransformer3DModel(
        patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=full_chunk_limit,
        in_channels=16, out_channels=16, text_dim=d, freq_dim=32, rope_max_seq_len=512,
        chunk_partition=(1, 2), **_TRANSFORMER[size],
    )
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    pipe = AnyFlowFARPipeline(tokenizer=_t5_tokenizer(), text_encoder=_t5(d, 2, umt5=True), vae=vae,
                              transformer=transformer, scheduler=FlowMapEulerDiscreteScheduler(shift=5.0))
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def far_call_kwargs(size: str = "micro", latent_frames: int = 8, chunk: int = 2, steps: int = 2,
                    seed: int = 0, **overrides):
    """Arguments for one deterministic rollout: ``latent_frames`` split in chunks of ``chunk``."""
    if latent_frames < 1 or chunk < 1:
        raise ValueError("latent_frames and chunk must be >= 1")
    partition = [chunk] * (latent_frames // chunk) + ([latent_frames % chunk] if latent_frames % chunk else [])
    hw = LATENT_HW[size] * 8
    kw = dict(prompt="a red circle moving right", height=hw, width=hw,
              num_frames=(latent_frames - 1) * 4 + 1, num_inference_steps=steps,
              chunk_partition=partition, max_sequence_length=32, guidance_scale=1.0,
              generator=torch.Generator("cpu").manual_seed(seed), output_type="latent")
    kw.update(overrides)
    return kw


def run_far(pipe, size: str = "micro", **kw) -> torch.Tensor:
    """Roll out and return the latent video (B, C, T, H, W)."""
    return pipe(**far_call_kwargs(size, **kw)).frames
