"""The published denoisers as data: each model's ``config.json`` numbers and its pipeline's defaults.

Facts only (no weights, nothing downloaded): the denoiser config of each checkpoint on the
Hugging Face hub, the scheduler class its pipeline ships with (it fixes how many denoiser
calls a generation makes: PNDM runs 51 for 50 steps), the default resolution, step count and
guidance of its pipeline or model card, and the per-sample shape of the text embeddings the
pipeline hands the denoiser (sequence length x width). With these the real architectures can
be built on the meta device and driven through a whole generation: for a fixed schedule the
MACs do not depend on the weights (``benchmarks/real_architectures.py``).

Config keys not listed take the diffusers default for the class, which equals the published
value (or does not change the network, e.g. ``_diffusers_version``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

_SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@dataclass(frozen=True)
class Published:
    """One published checkpoint: its denoiser config and how its pipeline runs it by default."""

    name: str                       # short key, e.g. "sd15"
    title: str                      # e.g. "Stable Diffusion 1.5"
    repo: str                       # hub repository whose <subfolder>/config.json these numbers are
    denoiser: str                   # diffusers class of the denoiser
    config: dict                    # the denoiser's config.json numbers
    pipeline: str                   # diffusers pipeline class
    scheduler: str                  # scheduler class the repository ships
    scheduler_config: dict
    height: int
    width: int
    steps: int
    guidance_scale: float           # 0: none (distilled or CFG-free)
    cfg: str                        # "batched" | "separate" | "distilled" (guidance embedded, one call per step)
    embeds: dict = field(default_factory=dict)   # pipeline kwarg -> per-sample shape of the text embedding
    num_frames: int | None = None   # video models
    extra_call: dict = field(default_factory=dict)   # other pipeline kwargs of the default call
    notes: str = ""
    # set: a second expert `transformer_2` of the same config denoises the steps with
    # t < boundary_ratio * num_train_timesteps (the pipeline's boundary_ratio; Wan 2.2 A14B)
    boundary_ratio: float | None = None


_SD15_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280), center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4, sample_size=64,
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)

_SDXL_UNET = dict(
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=(5, 10, 20), block_out_channels=(320, 640, 1280), center_input_sample=False,
    cross_attention_dim=2048, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4, sample_size=128,
    transformer_layers_per_block=(1, 2, 10), up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    use_linear_projection=True,
)

_PIXART = dict(
    activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=72, attention_type="default",
    caption_channels=4096, cross_attention_dim=1152, dropout=0.0, in_channels=4, norm_elementwise_affine=False,
    norm_eps=1e-6, norm_num_groups=32, norm_type="ada_norm_single", num_attention_heads=16,
    num_embeds_ada_norm=1000, num_layers=28, out_channels=8, patch_size=2, upcast_attention=False,
)
_PIXART_SCHEDULER = ("DPMSolverMultistepScheduler", dict(_SD_BETAS, beta_end=0.02, beta_start=0.0001,
                                                         beta_schedule="linear", solver_order=2,
                                                         prediction_type="epsilon"))

_SD3 = dict(attention_head_dim=64, in_channels=16, joint_attention_dim=4096, out_channels=16, patch_size=2,
            pooled_projection_dim=2048, sample_size=128)
_FLOW_SD3 = ("FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=3.0))

_FLUX = dict(attention_head_dim=128, axes_dims_rope=(16, 56, 56), in_channels=64, joint_attention_dim=4096,
             num_attention_heads=24, num_layers=19, num_single_layers=38, patch_size=1, pooled_projection_dim=768)
_FLOW_FLUX = ("FlowMatchEulerDiscreteScheduler", dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096))

_WAN = dict(added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-6, freq_dim=256,
            image_dim=None, in_channels=16, out_channels=16, patch_size=(1, 2, 2),
            qk_norm="rms_norm_across_heads", rope_max_seq_len=1024, text_dim=4096)
_UNIPC_WAN = ("UniPCMultistepScheduler", dict(
    num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
    solver_order=2, predict_x0=True, solver_type="bh2", lower_order_final=True))

# Lumina-Image 2.0: the diffusers class defaults are its config (2.61B parameters built, the 2.6B of its
# card), except cap_feat_dim: the class default is 1024, the checkpoint reads Gemma-2-2B's 2304-wide states.
_LUMINA2 = dict(sample_size=128, patch_size=2, in_channels=16, hidden_size=2304, num_layers=26, num_refiner_layers=2,
                num_attention_heads=24, num_kv_heads=8, multiple_of=256, norm_eps=1e-5, axes_dim_rope=(32, 32, 32),
                axes_lens=(300, 512, 512), cap_feat_dim=2304)
# SANA 1600M 1024px: the diffusers class defaults are its config (1.60B parameters built): 20 blocks of 2240
# wide linear attention (70 heads of 32), cross-attention 20 heads of 112, Gemma-2-2B captions (2304), DC-AE
# 32x latents with 32 channels: 1024 px is 32 x 32 tokens at patch 1.
_SANA_1600M = dict(in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_layers=20,
                   num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240,
                   caption_channels=2304, mlp_ratio=2.5, sample_size=32, patch_size=1)
# Kolors: SDXL base's UNet (its technical report), fed ChatGLM3-6B text: the 4096-wide hidden states are
# projected to SDXL's 2048 cross-attention width inside the UNet (encoder_hid_dim_type "text_proj"), and the
# pooled 4096 plus SDXL's six 256-wide time ids make the added embedding's 5632 inputs (pipeline_kolors.py
# builds both from ChatGLM's hidden states).
_KOLORS_UNET_TEXT = dict(encoder_hid_dim=4096, encoder_hid_dim_type="text_proj",
                         projection_class_embeddings_input_dim=5632)
# Chroma1-HD, FLUX.2 [dev], Qwen-Image: their denoiser configs are the diffusers classes' __init__ defaults
# (ChromaTransformer2DModel, Flux2Transformer2DModel, QwenImageTransformer2DModel in diffusers 0.42.1 default
# to these checkpoints), written out here. Steps, guidance and resolution: each pipeline's __call__ defaults.
# Their schedulers' shift settings move the timesteps, not the MACs, and are not checked here.
_CHROMA = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
               num_attention_heads=24, joint_attention_dim=4096, axes_dims_rope=(16, 56, 56),
               approximator_num_channels=64, approximator_hidden_dim=5120, approximator_layers=5)
_FLUX2_DEV = dict(patch_size=1, in_channels=128, num_layers=8, num_single_layers=48, attention_head_dim=128,
                  num_attention_heads=48, joint_attention_dim=15360, timestep_guidance_channels=256, mlp_ratio=3.0,
                  axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=True)
_QWENIMAGE = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56), guidance_embeds=False)
_FLOW_DYNAMIC = ("FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, use_dynamic_shifting=True))
# CogVideoX 5B (THUDM/CogVideoX-5b transformer/config.json): 48 heads x 64, 42 layers, RoPE; the diffusers
# class defaults are the 2B (30 x 64, 30 layers, sincos positions)
_COGVIDEOX_5B = dict(activation_fn="gelu-approximate", attention_bias=True, attention_head_dim=64, in_channels=16,
                     max_text_seq_length=226, norm_eps=1e-5, num_attention_heads=48, num_layers=42, out_channels=16,
                     patch_size=2, sample_frames=49, sample_height=60, sample_width=90, text_embed_dim=4096,
                     time_embed_dim=512, use_learned_positional_embeddings=False,
                     use_rotary_positional_embeddings=True)
# HunyuanVideo 13B (hunyuanvideo-community/HunyuanVideo transformer/config.json): the diffusers class
# defaults, written out: 24 heads x 128, 20 dual- and 40 single-stream blocks, guidance embedded
_HUNYUAN_VIDEO = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                      num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                      qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
                      rope_theta=256.0, rope_axes_dim=(16, 56, 56))
# LTX-Video 2B 0.9.x (Lightricks/LTX-Video transformer/config.json): the diffusers class defaults, written
# out: 32 heads x 64, 28 layers, patch 1 on the 32x / 8x latents of its VAE
_LTX_VIDEO = dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
                  attention_head_dim=64, cross_attention_dim=2048, num_layers=28, activation_fn="gelu-approximate",
                  qk_norm="rms_norm_across_heads", norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=4096,
                  attention_bias=True, attention_out_bias=True)

PUBLISHED: dict[str, Published] = {p.name: p for p in (
    Published(
        "sd15", "Stable Diffusion 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", "UNet2DConditionModel",
        _SD15_UNET, "StableDiffusionPipeline",
        "PNDMScheduler", dict(_SD_BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False),
        512, 512, 50, 7.5, "batched", {"prompt_embeds": (77, 768)},
        notes="PNDM (PLMS) makes 51 denoiser calls for 50 steps"),
    Published(
        "sd21", "Stable Diffusion 2.1", "stabilityai/stable-diffusion-2-1", "UNet2DConditionModel",
        dict(_SD15_UNET, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, sample_size=96,
             use_linear_projection=True, upcast_attention=True),
        "StableDiffusionPipeline",
        "DDIMScheduler", dict(_SD_BETAS, prediction_type="v_prediction", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1),
        768, 768, 50, 7.5, "batched", {"prompt_embeds": (77, 1024)}),
    Published(
        "sdxl", "SDXL base 1.0", "stabilityai/stable-diffusion-xl-base-1.0", "UNet2DConditionModel",
        dict(_SDXL_UNET, projection_class_embeddings_input_dim=2816),
        "StableDiffusionXLPipeline",
        "EulerDiscreteScheduler", dict(_SD_BETAS, timestep_spacing="leading", steps_offset=1),
        1024, 1024, 50, 5.0, "batched",
        {"prompt_embeds": (77, 2048), "pooled_prompt_embeds": (1280,)}),
    Published(
        "pixart_alpha_512", "PixArt-α 512", "PixArt-alpha/PixArt-XL-2-512x512", "PixArtTransformer2DModel",
        dict(_PIXART, sample_size=64), "PixArtAlphaPipeline", *_PIXART_SCHEDULER,
        512, 512, 20, 4.5, "batched", {"prompt_embeds": (120, 4096)},
        extra_call=dict(use_resolution_binning=True)),
    Published(
        "pixart_alpha_1024", "PixArt-α 1024", "PixArt-alpha/PixArt-XL-2-1024-MS", "PixArtTransformer2DModel",
        dict(_PIXART, sample_size=128), "PixArtAlphaPipeline", *_PIXART_SCHEDULER,
        1024, 1024, 20, 4.5, "batched", {"prompt_embeds": (120, 4096)},
        notes="micro-conditions (resolution, aspect ratio) on: sample_size 128"),
    Published(
        "pixart_sigma", "PixArt-Σ 1024", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "PixArtTransformer2DModel",
        dict(_PIXART, sample_size=128, use_additional_conditions=False),
        "PixArtSigmaPipeline", *_PIXART_SCHEDULER,
        1024, 1024, 20, 4.5, "batched", {"prompt_embeds": (300, 4096)}),
    Published(
        "sd3_medium", "SD3 medium", "stabilityai/stable-diffusion-3-medium-diffusers", "SD3Transformer2DModel",
        dict(_SD3, caption_projection_dim=1536, num_attention_heads=24, num_layers=24, pos_embed_max_size=192),
        "StableDiffusion3Pipeline", *_FLOW_SD3,
        1024, 1024, 28, 7.0, "batched",
        {"prompt_embeds": (333, 4096), "pooled_prompt_embeds": (2048,)},
        notes="333 text tokens: 77 CLIP + 256 T5"),
    Published(
        "sd35_medium", "SD3.5 medium", "stabilityai/stable-diffusion-3.5-medium", "SD3Transformer2DModel",
        dict(_SD3, caption_projection_dim=1536, num_attention_heads=24, num_layers=24, pos_embed_max_size=384,
             qk_norm="rms_norm", dual_attention_layers=tuple(range(13))),
        "StableDiffusion3Pipeline", *_FLOW_SD3,
        1024, 1024, 40, 4.5, "batched",
        {"prompt_embeds": (333, 4096), "pooled_prompt_embeds": (2048,)},
        notes="MMDiT-X: blocks 0-12 have a second, image-only attention (attn2)"),
    Published(
        "sd35_large", "SD3.5 large", "stabilityai/stable-diffusion-3.5-large", "SD3Transformer2DModel",
        dict(_SD3, caption_projection_dim=2432, num_attention_heads=38, num_layers=38, pos_embed_max_size=192,
             qk_norm="rms_norm"),
        "StableDiffusion3Pipeline", *_FLOW_SD3,
        1024, 1024, 28, 3.5, "batched",
        {"prompt_embeds": (333, 4096), "pooled_prompt_embeds": (2048,)},
        notes="no attn2 (only SD3.5 medium has dual attention)"),
    Published(
        "flux_dev", "FLUX.1-dev", "black-forest-labs/FLUX.1-dev", "FluxTransformer2DModel",
        dict(_FLUX, guidance_embeds=True), "FluxPipeline", *_FLOW_FLUX,
        1024, 1024, 28, 3.5, "distilled",
        {"prompt_embeds": (512, 4096), "pooled_prompt_embeds": (768,)},
        notes="guidance-distilled: the scale is an input of one call per step, no CFG batch"),
    Published(
        "flux_schnell", "FLUX.1-schnell", "black-forest-labs/FLUX.1-schnell", "FluxTransformer2DModel",
        dict(_FLUX, guidance_embeds=False), "FluxPipeline",
        "FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False),
        1024, 1024, 4, 0.0, "distilled",
        {"prompt_embeds": (256, 4096), "pooled_prompt_embeds": (768,)},
        notes="timestep-distilled: 4 steps, no guidance"),
    Published(
        "wan21_1_3b", "Wan 2.1 T2V 1.3B", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "WanTransformer3DModel",
        dict(_WAN, ffn_dim=8960, num_attention_heads=12, num_layers=30), "WanPipeline", *_UNIPC_WAN,
        480, 832, 50, 5.0, "separate", {"prompt_embeds": (512, 4096)}, num_frames=81,
        notes="480p, 81 frames: 21 x 30 x 52 = 32,760 video tokens; CFG as two calls per step"),
    Published(
        "wan21_14b", "Wan 2.1 T2V 14B", "Wan-AI/Wan2.1-T2V-14B-Diffusers", "WanTransformer3DModel",
        dict(_WAN, ffn_dim=13824, num_attention_heads=40, num_layers=40), "WanPipeline", *_UNIPC_WAN,
        480, 832, 50, 5.0, "separate", {"prompt_embeds": (512, 4096)}, num_frames=81,
        notes="run at 480p here (its card also lists 720p)"),
    # Wan 2.2 T2V A14B: two experts of the Wan 2.1 14B config, `transformer` for t >= 875, `transformer_2`
    # below. Steps 40, boundary 0.875, guidance 4.0 (high noise) then 3.0 (low noise): the model's published
    # sampling settings. 480x832, 81 frames: WanPipeline's __call__ defaults in diffusers 0.42.1 (the model's
    # own default size is 1280x720). Scheduler: the Wan 2.1 entry's UniPC with flow_shift 3.0, not checked for
    # this checkpoint (the model's own sampler uses shift 12.0). The shift moves the timesteps, so it sets how
    # many steps each expert takes, not the number of calls.
    Published(
        "wan22_a14b", "Wan 2.2 T2V A14B", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "WanTransformer3DModel",
        dict(_WAN, ffn_dim=13824, num_attention_heads=40, num_layers=40), "WanPipeline", *_UNIPC_WAN,
        480, 832, 40, 4.0, "separate", {"prompt_embeds": (512, 4096)}, num_frames=81,
        extra_call=dict(guidance_scale_2=3.0), boundary_ratio=0.875,
        notes="two experts (transformer, transformer_2) switched at t = 0.875 * 1000; CFG as two calls per step"),
    # -- image families added together: Lumina 2, SANA, Kolors --------------------------------------------
    Published(
        "lumina2", "Lumina-Image 2.0", "Alpha-VLLM/Lumina-Image-2.0", "Lumina2Transformer2DModel", _LUMINA2,
        "Lumina2Pipeline", "FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000),
        1024, 1024, 30, 4.0, "separate", {"prompt_embeds": (256, 2304)},
        notes="Lumina2Pipeline's defaults (30 steps, guidance 4, CFG on every step: cfg_trunc_ratio 1); text mask "
              "all ones: 256 text tokens, the most its default max_sequence_length keeps (real prompts are "
              "shorter); 64 x 64 = 4096 image tokens"),
    Published(
        "sana_1600m", "SANA 1600M 1024px", "Efficient-Large-Model/Sana_1600M_1024px_diffusers", "SanaTransformer2DModel",
        _SANA_1600M, "SanaPipeline", "DPMSolverMultistepScheduler",
        dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
        1024, 1024, 20, 4.5, "batched", {"prompt_embeds": (300, 2304)},
        notes="SanaPipeline's defaults (20 steps, guidance 4.5, 300 text tokens); DPM-Solver++ makes one call per "
              "step, so its shift does not change the MACs"),
    Published(
        "kolors", "Kolors", "Kwai-Kolors/Kolors-diffusers", "UNet2DConditionModel",
        dict(_SDXL_UNET, **_KOLORS_UNET_TEXT), "KolorsPipeline",
        "EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1),
        1024, 1024, 50, 5.0, "batched", {"prompt_embeds": (256, 4096), "pooled_prompt_embeds": (4096,)},
        notes="KolorsPipeline's defaults (50 steps, guidance 5, 256 ChatGLM tokens); the scheduler's betas are left "
              "at the class defaults (not checked against the repository): an Euler scheduler makes one call per "
              "step whatever they are, so they do not change the MACs"),
    Published(
        "chroma1_hd", "Chroma1-HD", "lodestones/Chroma1-HD", "ChromaTransformer2DModel", _CHROMA,
        "ChromaPipeline", *_FLOW_DYNAMIC, 1024, 1024, 35, 5.0, "separate",
        {"prompt_embeds": (512, 4096), "prompt_attention_mask": (512,)},
        notes="real CFG: a negative call per step; 512 T5 tokens (padded, masked)"),
    Published(
        "flux2_dev", "FLUX.2 [dev]", "black-forest-labs/FLUX.2-dev", "Flux2Transformer2DModel", _FLUX2_DEV,
        "Flux2Pipeline", *_FLOW_DYNAMIC, 1024, 1024, 50, 4.0, "distilled", {"prompt_embeds": (512, 15360)},
        notes="guidance-distilled: one call per step; text: 3 Mistral Small 3.1 layers stacked (3 x 5120)"),
    Published(
        "qwenimage", "Qwen-Image", "Qwen/Qwen-Image", "QwenImageTransformer2DModel", _QWENIMAGE,
        "QwenImagePipeline", *_FLOW_DYNAMIC, 1024, 1024, 50, 4.0, "separate",
        {"prompt_embeds": (77, 3584), "prompt_embeds_mask": (77,)},
        extra_call=dict(true_cfg_scale=4.0, guidance_scale=None),
        notes="true CFG (true_cfg_scale 4 with a negative prompt): a negative call per step; Qwen-Image does not "
              "pad its prompts, a 77-token prompt is assumed here"),
    # The video pipelines' defaults below are their __call__ defaults in diffusers 0.42.1 (resolution,
    # frames, steps, guidance, text length); a flow-matching or DPM scheduler makes one call per step
    # whatever its shift settings, so those do not change the MACs.
    Published(
        "cogvideox_5b", "CogVideoX 5B", "THUDM/CogVideoX-5b", "CogVideoXTransformer3DModel", _COGVIDEOX_5B,
        "CogVideoXPipeline",
        "CogVideoXDPMScheduler", dict(_SD_BETAS, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                      set_alpha_to_one=True, timestep_spacing="trailing", clip_sample=False),
        480, 720, 50, 6.0, "batched", {"prompt_embeds": (226, 4096)}, num_frames=49,
        notes="49 frames at 720x480: 13 latent frames of 30 x 45 tokens = 17,550 video tokens and 226 text "
              "tokens in one joint attention; CFG batched"),
    Published(
        "hunyuan_video", "HunyuanVideo 13B", "hunyuanvideo-community/HunyuanVideo", "HunyuanVideoTransformer3DModel",
        _HUNYUAN_VIDEO, "HunyuanVideoPipeline",
        "FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=7.0),
        720, 1280, 50, 6.0, "distilled", {"prompt_embeds": (256, 4096), "pooled_prompt_embeds": (768,)},
        num_frames=129,
        notes="129 frames at 1280x720: 33 latent frames of 45 x 80 tokens = 118,800 video tokens; guidance "
              "distilled (guidance_scale is an embedding, one call per step, no true CFG by default)"),
    Published(
        "ltx_video_2b", "LTX-Video 2B (0.9.x)", "Lightricks/LTX-Video", "LTXVideoTransformer3DModel", _LTX_VIDEO,
        "LTXPipeline",
        "FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, use_dynamic_shifting=True,
                                                base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                                                max_image_seq_len=4096, shift_terminal=0.1),
        512, 704, 50, 3.0, "batched", {"prompt_embeds": (128, 4096)}, num_frames=161,
        notes="161 frames at 704x512: 21 latent frames of 16 x 22 tokens = 7,392 video tokens (VAE 32x in space, "
              "8x in time, patch 1); CFG batched"),
)}


def get_published(name: str) -> Published:
    if name not in PUBLISHED:
        raise ValueError(f"model: unknown published model {name!r}; allowed: {', '.join(PUBLISHED)}")
    return PUBLISHED[name]
