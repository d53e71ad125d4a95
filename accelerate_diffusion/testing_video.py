"""Tiny, offline autoregressive video pipelines (AnyFlow-FAR) for tests and benchmarks.

Kept apart from ``testing.py`` because these pipelines roll out chunk by chunk and need
their own call arguments (``chunk_partition``, frame counts of the form 4n+1).

    pipe = make_far_pipeline("micro")
    latents = run_far(pipe, "micro", latent_frames=16, chunk=2)
"""

from __future__ import annotations

import torch

from .testing import _ready, _t5, _t5_tokenizer, _wan_vae

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
    from diffusers import AnyFlowFARPipeline, AnyFlowFARTransformer3DModel, FlowMapEulerDiscreteScheduler

    if size not in SIZES:
        raise ValueError(f"size: unknown size {size!r}; allowed: {', '.join(SIZES)}")
    torch.manual_seed(seed)
    d = 32
    transformer = AnyFlowFARTransformer3DModel(
        patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=full_chunk_limit,
        in_channels=16, out_channels=16, text_dim=d, freq_dim=32, rope_max_seq_len=512,
        chunk_partition=(1, 2), **_TRANSFORMER[size],
    )
    vae = _wan_vae()
    pipe = AnyFlowFARPipeline(tokenizer=_t5_tokenizer(), text_encoder=_t5(d, 2, umt5=True), vae=vae,
                              transformer=transformer, scheduler=FlowMapEulerDiscreteScheduler(shift=5.0))
    return _ready(pipe)


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


# -- SkyReels-V2 diffusion forcing -----------------------------------------------------
# The same Wan-sized micro/small transformers; the pipeline re-runs every finished frame of
# its window at each step (block-causal attention when causal_block_size > 1).


def make_skyreels_df_pipeline(size: str = "micro", seed: int = 0):
    """A ``SkyReelsV2DiffusionForcingPipeline`` of the real classes with deterministic random weights."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    if size not in SIZES:
        raise ValueError(f"size: unknown size {size!r}; allowed: {', '.join(SIZES)}")
    torch.manual_seed(seed)
    d = 32
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=d, freq_dim=32,
        rope_max_seq_len=512, inject_sample_info=True, **_TRANSFORMER[size],
    )
    vae = _wan_vae()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0)
    pipe = SkyReelsV2DiffusionForcingPipeline(tokenizer=_t5_tokenizer(), text_encoder=_t5(d, 2, umt5=True),
                                              vae=vae, transformer=transformer, scheduler=scheduler)
    return _ready(pipe)


def skyreels_call_kwargs(size: str = "micro", latent_frames: int = 8, block: int = 2, ar_step: int = 1,
                         steps: int = 2, seed: int = 0, **overrides):
    """Arguments for one deterministic asynchronous rollout: ``latent_frames`` in causal blocks of
    ``block`` frames, each block ``ar_step`` steps behind the previous one."""
    if latent_frames < 1 or block < 1 or latent_frames % block:
        raise ValueError("latent_frames must be a positive multiple of block")
    hw = LATENT_HW[size] * 8
    num_frames = (latent_frames - 1) * 4 + 1
    kw = dict(prompt="a red circle moving right", height=hw, width=hw, num_frames=num_frames,
              base_num_frames=num_frames, num_inference_steps=steps, ar_step=ar_step, causal_block_size=block,
              max_sequence_length=32, guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(seed),
              output_type="latent")
    kw.update(overrides)
    return kw


def skyreels_prompt_embeds(pipe, prompt: str, max_sequence_length: int = 32) -> torch.Tensor:
    """The pipeline's T5 prompt encoding without its ftfy text clean-up (ftfy is not a dependency)."""
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=max_sequence_length, truncation=True,
                         add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    hidden = pipe.text_encoder(ids.input_ids, ids.attention_mask).last_hidden_state
    return hidden * ids.attention_mask[..., None]        # padded positions zeroed, as the pipeline does


def run_skyreels(pipe, size: str = "micro", **kw) -> torch.Tensor:
    """Roll out and return the latent video (B, C, T, H, W)."""
    kwargs = skyreels_call_kwargs(size, **kw)
    length = kwargs.pop("max_sequence_length")
    kwargs["prompt_embeds"] = skyreels_prompt_embeds(pipe, kwargs["prompt"], length)
    kwargs["prompt"] = None           # a required argument of this pipeline, unused with prompt_embeds
    if kwargs["guidance_scale"] > 1.0:
        kwargs["negative_prompt_embeds"] = skyreels_prompt_embeds(pipe, kwargs.pop("negative_prompt", ""), length)
    return pipe(**kwargs).frames
