"""Configurations of the demo models and helpers shared by training and loading."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from transformers import CLIPConfig, CLIPModel

from .tokenizer import MAX_LENGTH

IMAGE_SIZE = 64
LATENT_SIZE = 16
LATENT_CHANNELS = 4
TEXT_DIM = 128  # CLIP text hidden size
PROJ_DIM = 64  # CLIP joint embedding size
# StableDiffusion3Pipeline pads the prompt with `max_sequence_length` zero "T5" tokens
# when text_encoder_3 is None (256 by default); see `ZeroTokenBiasProcessor`.
SD3_DEFAULT_T5_TOKENS = 256


def clip_config(vocab_size: int) -> CLIPConfig:
    text = dict(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=PROJ_DIM,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=2,
        projection_dim=PROJ_DIM,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJ_DIM)


def new_clip(vocab_size: int) -> CLIPModel:
    return CLIPModel(clip_config(vocab_size))


def new_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
        scaling_factor=1.0,  # set from data after training
        shift_factor=0.0,
    )


def new_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,  # number of heads per attention layer (diffusers' naming)
        norm_num_groups=16,
        # an attention-pooled summary of the prompt added to the time embedding: global
        # conditioning for every block (what the DiT gets from its pooled projection)
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


def new_dit() -> SD3Transformer2DModel:
    return SD3Transformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=6,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=2 * TEXT_DIM,  # both CLIP slots hold the demo text encoder
        caption_projection_dim=128,
        pooled_projection_dim=2 * PROJ_DIM,
        pos_embed_max_size=LATENT_SIZE,
    )


def ddpm_train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
    )


def ddim_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


def flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


class ZeroTokenBiasProcessor:
    """Joint attention for training the SD3 demo transformer cheaply.

    With ``text_encoder_3=None`` the SD3 pipeline appends ``n`` all-zero "T5" tokens to
    the prompt. They enter the transformer as ``n`` identical tokens, stay identical in
    every block (same input, same per-token maths) and, as keys, act exactly like one
    token whose attention logit is raised by ``log(n)``. Training therefore feeds one
    zero token and adds ``log(n)`` to its logit: the same function at a fraction of the
    cost. `attention_bias` is the additive bias over the joint key sequence.
    """

    def __init__(self, attention_bias: torch.Tensor):
        self.attention_bias = attention_bias

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        b = hidden_states.shape[0]
        h = attn.heads

        def split(x):
            return x.view(b, -1, h, x.shape[-1] // h).transpose(1, 2)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        n_img = hidden_states.shape[1]
        eq = split(attn.add_q_proj(encoder_hidden_states))
        ek = split(attn.add_k_proj(encoder_hidden_states))
        ev = split(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
        q, k, v = torch.cat([q, eq], 2), torch.cat([k, ek], 2), torch.cat([v, ev], 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.attention_bias.to(q.dtype))
        out = out.transpose(1, 2).reshape(b, -1, h * q.shape[-1]).to(q.dtype)
        img, ctx = out[:, :n_img], out[:, n_img:]
        img = attn.to_out[1](attn.to_out[0](img))
        if not attn.context_pre_only:
            ctx = attn.to_add_out(ctx)
        return img, ctx


def zero_token_bias(n_img: int, n_text: int, n_zero: int = SD3_DEFAULT_T5_TOKENS) -> torch.Tensor:
    """Additive attention bias for ``n_img`` image + ``n_text`` text + 1 zero token."""
    bias = torch.zeros(n_img + n_text + 1)
    bias[-1] = math.log(n_zero)
    return bias[None, :]


def text_encoder_from_clip(clip: CLIPModel, with_projection: bool):
    """The text tower of `clip` as a `CLIPTextModel` (Stable Diffusion's slot) or a
    `CLIPTextModelWithProjection` (SD3's two CLIP slots), sharing no storage with it."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    cfg = clip.config.text_config
    model = cls(cfg)
    src = clip.state_dict()
    state = {}
    for key in model.state_dict():
        # transformers 5 flattens the text tower of the standalone classes
        for cand in (key, "text_model." + key, "text_model." + key.removeprefix("text_model.")):
            if cand in src:
                state[key] = src[cand]
                break
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"text encoder weights do not match: missing={missing} unexpected={unexpected}")
    return model.to(dtype=clip.dtype).eval()
