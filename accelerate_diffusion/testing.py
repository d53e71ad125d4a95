"""Tiny, offline, deterministic pipelines built from the real diffusers classes.

Random weights, hub-free tokenizers, nothing downloaded. Two sizes:
``micro`` (diffusers' fast-test scale, for tests) and ``small`` (10-60M-parameter
denoisers, for benchmarks, where Python overhead no longer hides the work).

    pipe = make_pipeline("pixart", size="micro")
"""

from __future__ import annotations

import functools
import string

import torch

PIPELINES = ("sd", "sdxl", "pixart", "sd3", "flux", "wan", "qwenimage", "wan22", "cogvideox", "hunyuan_video",
             "wan_vace", "lumina2", "sana", "kolors",
             "chroma", "flux2", "qwenimage21",
             "ltx_video", "hunyuan_video15", "ltx2")
SIZES = ("micro", "small")

# Default call arguments per pipeline and size: resolution and frames kept tiny.
CALL_DEFAULTS = {
    ("sd", "micro"): dict(height=32, width=32),
    ("sd", "small"): dict(height=256, width=256),
    ("sdxl", "micro"): dict(height=32, width=32),
    ("sdxl", "small"): dict(height=256, width=256),
    ("pixart", "micro"): dict(height=32, width=32),
    ("pixart", "small"): dict(height=256, width=256),
    ("sd3", "micro"): dict(height=32, width=32),
    ("sd3", "small"): dict(height=256, width=256),
    ("flux", "micro"): dict(height=32, width=32),
    ("flux", "small"): dict(height=256, width=256),
    ("wan", "micro"): dict(height=16, width=16, num_frames=9),
    ("wan", "small"): dict(height=128, width=128, num_frames=9),
    ("qwenimage", "micro"): dict(height=64, width=64),
    ("qwenimage", "small"): dict(height=256, width=256),
    ("wan22", "micro"): dict(height=16, width=16, num_frames=9),
    ("wan22", "small"): dict(height=128, width=128, num_frames=9),
    ("cogvideox", "micro"): dict(height=32, width=32, num_frames=9),
    ("cogvideox", "small"): dict(height=128, width=128, num_frames=9),
    ("hunyuan_video", "micro"): dict(height=32, width=32, num_frames=9),
    ("hunyuan_video", "small"): dict(height=128, width=128, num_frames=9),
    ("wan_vace", "micro"): dict(height=16, width=16, num_frames=9),
    ("wan_vace", "small"): dict(height=128, width=128, num_frames=9),
    ("lumina2", "micro"): dict(height=32, width=32),
    ("lumina2", "small"): dict(height=256, width=256),
    ("sana", "micro"): dict(height=32, width=32),
    ("sana", "small"): dict(height=256, width=256),
    ("kolors", "micro"): dict(height=32, width=32),
    ("kolors", "small"): dict(height=256, width=256),
    ("chroma", "micro"): dict(height=32, width=32),
    ("chroma", "small"): dict(height=256, width=256),
    ("flux2", "micro"): dict(height=32, width=32),
    ("flux2", "small"): dict(height=256, width=256),
    ("qwenimage21", "micro"): dict(height=128, width=128),     # 16 px a token: 8 x 8 tokens
    ("qwenimage21", "small"): dict(height=256, width=256),
    ("ltx_video", "micro"): dict(height=32, width=32, num_frames=9),
    ("ltx_video", "small"): dict(height=128, width=128, num_frames=9),
    ("hunyuan_video15", "micro"): dict(height=32, width=32, num_frames=9),
    ("hunyuan_video15", "small"): dict(height=128, width=128, num_frames=9),
    ("ltx2", "micro"): dict(height=32, width=32, num_frames=9),
    ("ltx2", "small"): dict(height=128, width=128, num_frames=9),
}


def _clip_tokenizer(max_length: int = 77):
    """A character-level CLIP BPE tokenizer built in memory (no vocab file, no hub)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ",.!?'-":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = max_length
    return tok


def _t5_tokenizer(max_length: int = 128):
    """A character-level T5 unigram tokenizer built in memory."""
    from transformers import T5Tokenizer

    chars = string.ascii_lowercase + string.digits + ",.!?'-"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + c, -1.0) for c in chars] + [(c, -2.0) for c in chars]
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    tok.model_max_length = max_length
    return tok


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE tokenizers (GPT-2, Qwen) use for the bytes."""
    keep = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>")


def _qwen_tokenizer():
    """A byte-level Qwen2 tokenizer built in memory: one token per byte (no merges) plus the
    chat and vision special tokens Qwen-Image's prompt template and Qwen2.5-VL use."""
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_byte_chars())}
    for token in QWEN_SPECIAL:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL[1:])})
    return tok


def _qwen_vl(hidden: int, layers: int):
    """A tiny Qwen2.5-VL (text decoder and a one-block vision tower) for Qwen-Image's prompts."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = _qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    head = hidden // 4
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=None, eos_token_id=ids["<|endoftext|>"],
                         pad_token_id=ids["<|endoftext|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [head // 8, head // 8, head // 4]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=hidden,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    return Qwen2_5_VLForConditionalGeneration(cfg)


LLAMA_SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def _llama_tokenizer():
    """A byte-per-token Llama tokenizer built in memory, with the header tokens of HunyuanVideo's
    prompt template (spaces are the tokenizer's own "\u2581")."""
    from transformers import LlamaTokenizer

    vocab = {c: i for i, c in enumerate(_byte_chars() + ["\u2581"])}
    for token in LLAMA_SPECIAL:
        vocab[token] = len(vocab)
    tok = LlamaTokenizer(vocab=vocab, merges=[], bos_token=LLAMA_SPECIAL[0], eos_token=LLAMA_SPECIAL[1],
                         pad_token=LLAMA_SPECIAL[1], unk_token=None)
    tok.add_special_tokens({"additional_special_tokens": list(LLAMA_SPECIAL[2:])})
    return tok


def _llama(hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaModel

    tok = _llama_tokenizer()
    return LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=1024, pad_token_id=tok.pad_token_id))


GEMMA_SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")


def _gemma_tokenizer():
    """A byte-per-token Gemma tokenizer built in memory (spaces are its own "\u2581"), with the
    turn tokens SANA's prompt template names."""
    from transformers import GemmaTokenizer

    vocab = {t: i for i, t in enumerate(GEMMA_SPECIAL[:5])}
    for c in _byte_chars() + ["\u2581"]:
        vocab.setdefault(c, len(vocab))
    for t in GEMMA_SPECIAL[5:]:
        vocab[t] = len(vocab)
    tok = GemmaTokenizer(vocab=vocab, merges=[])
    tok.add_special_tokens({"additional_special_tokens": list(GEMMA_SPECIAL[5:])})
    return tok


def _gemma2(hidden: int, layers: int):
    """A tiny Gemma 2 decoder: the text encoder of Lumina 2 and SANA (they read its hidden states)."""
    from transformers import Gemma2Config, Gemma2Model

    tok = _gemma_tokenizer()
    return Gemma2Model(Gemma2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                                    num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                    head_dim=hidden // 4, max_position_embeddings=1024,
                                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id))


@functools.lru_cache(maxsize=None)


def _sentencepiece_folder():
    """A temporary folder holding a character-level SentencePiece model trained here on the alphabet
    (nothing downloaded), kept for the life of the process: Kolors' tokenizer class reads its model from
    a file, and copies that file again on ``save_pretrained``."""
    import io
    import tempfile

    import sentencepiece

    model = io.BytesIO()
    chars = list(string.ascii_lowercase + string.digits + ",.!?'-") + ["a red circle above a blue square"]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(chars * 4), model_writer=model, model_type="char", vocab_size=len(chars) + 8,
        character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=2, pad_id=-1, minloglevel=2)
    folder = tempfile.TemporaryDirectory()      # removed when the process ends
    with open(f"{folder.name}/tokenizer.model", "wb") as f:
        f.write(model.getvalue())
    return folder


def _chatglm_tokenizer():
    """Kolors' ChatGLM tokenizer (diffusers' own class) over the SentencePiece model above."""
    from diffusers.pipelines.kolors.tokenizer import ChatGLMTokenizer

    return ChatGLMTokenizer(vocab_file=f"{_sentencepiece_folder().name}/tokenizer.model")


def _chatglm(hidden: int, layers: int):
    """A tiny ChatGLM (diffusers' Kolors text encoder class): Kolors reads its last two hidden states."""
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel

    vocab = len(_chatglm_tokenizer()) + 8          # ChatGLM's [gMASK] and sop ids sit past the SentencePiece ones
    model = ChatGLMModel(ChatGLMConfig(
        num_layers=layers, padded_vocab_size=vocab, hidden_size=hidden, ffn_hidden_size=hidden * 2,
        kv_channels=hidden // 4, num_attention_heads=4, seq_length=512, multi_query_attention=True,
        multi_query_group_num=2, original_rope=True))
    with torch.no_grad():      # the class leaves its weights uninitialised (torch.empty): checkpoints fill them
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02) if p.ndim > 1 else torch.nn.init.ones_(p)   # 1-d: RMSNorm scales
    return model


def _clip_text(hidden: int, layers: int, projection: bool = False, proj_dim: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden,
        intermediate_size=hidden * 2, num_attention_heads=4, num_hidden_layers=layers,
        vocab_size=len(_clip_tokenizer()), layer_norm_eps=1e-5, hidden_act="gelu",
        projection_dim=proj_dim or hidden, max_position_embeddings=77,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _t5(d_model: int, layers: int, umt5: bool = False, vocab: int | None = None):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    Cfg, Model = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    cfg = Cfg(
        vocab_size=vocab or len(_t5_tokenizer()), d_model=d_model, d_kv=8, d_ff=d_model * 2,
        num_layers=layers, num_heads=4, relative_attention_num_buckets=8,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return Model(cfg)


def _vae(latent_channels: int, channels=(8, 8), **extra):
    from diffusers import AutoencoderKL

    n = len(channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=list(channels), layers_per_block=1, norm_num_groups=min(channels),
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        **extra,
    )


def _build_sd(size: str, xl: bool = False):
    from diffusers import (DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)

    if size == "micro":
        unet_kw = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       attention_head_dim=4, sample_size=16,
                       down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        hidden, vae_ch = 32, (8, 8)
    else:
        unet_kw = dict(block_out_channels=(32, 64, 128), layers_per_block=2, norm_num_groups=32,
                       attention_head_dim=8, sample_size=32,
                       down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
        hidden, vae_ch = 64, (16, 32, 32, 32)
    if xl:
        unet = UNet2DConditionModel(
            in_channels=4, out_channels=4, cross_attention_dim=hidden * 2,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + hidden, use_linear_projection=True,
            transformer_layers_per_block=1, **unet_kw,
        )
        vae = _vae(4, vae_ch)
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=_clip_text(hidden, 2), tokenizer=_clip_tokenizer(),
            text_encoder_2=_clip_text(hidden, 2, projection=True), tokenizer_2=_clip_tokenizer(),
            unet=unet, scheduler=EulerDiscreteScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                timestep_spacing="leading", steps_offset=1),
            add_watermarker=False,
        )
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, cross_attention_dim=hidden, **unet_kw)
    return StableDiffusionPipeline(
        vae=_vae(4, vae_ch), text_encoder=_clip_text(hidden, 2), tokenizer=_clip_tokenizer(),
        unet=unet, scheduler=DDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def _build_pixart(size: str):
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    if size == "micro":
        tkw = dict(sample_size=4, num_layers=2, num_attention_heads=2, attention_head_dim=8)
        d, vae_ch = 32, (8, 8)
    else:
        tkw = dict(sample_size=32, num_layers=12, num_attention_heads=6, attention_head_dim=64)
        d, vae_ch = 64, (16, 32, 32, 32)
    transformer = PixArtTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=8, cross_attention_dim=tkw["num_attention_heads"]
        * tkw["attention_head_dim"], caption_channels=d, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False, **tkw,
    )
    return PixArtAlphaPipeline(
        tokenizer=_t5_tokenizer(), text_encoder=_t5(d, 2), vae=_vae(4, vae_ch),
        transformer=transformer, scheduler=DDIMScheduler(),
    )


def _build_sd3(size: str, latent_channels: int = 4):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    if size == "micro":
        tkw = dict(sample_size=16, num_layers=2, attention_head_dim=8, num_attention_heads=4)
        hidden, vae_ch = 32, (8, 8)
    else:
        tkw = dict(sample_size=32, num_layers=12, attention_head_dim=64, num_attention_heads=6)
        hidden, vae_ch = 64, (16, 32, 32, 32)
    transformer = SD3Transformer2DModel(
        patch_size=2, in_channels=latent_channels, out_channels=latent_channels,
        caption_projection_dim=tkw["attention_head_dim"]
        * tkw["num_attention_heads"], joint_attention_dim=hidden, pooled_projection_dim=hidden * 2,
        pos_embed_max_size=96, **tkw,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(latent_channels, vae_ch, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=_clip_text(hidden, 2, projection=True), tokenizer=_clip_tokenizer(),
        text_encoder_2=_clip_text(hidden, 2, projection=True), tokenizer_2=_clip_tokenizer(),
        text_encoder_3=None, tokenizer_3=None,
    )


def _build_flux(size: str):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    if size == "micro":
        tkw = dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                   axes_dims_rope=[4, 4, 8])
        hidden, vae_ch = 32, (8, 8)
    else:
        tkw = dict(num_layers=4, num_single_layers=8, attention_head_dim=64, num_attention_heads=6,
                   axes_dims_rope=[16, 24, 24])
        hidden, vae_ch = 64, (16, 32, 32, 32)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, out_channels=None, joint_attention_dim=hidden,
        pooled_projection_dim=hidden, guidance_embeds=False, **tkw,
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(4, vae_ch, shift_factor=0.0609,
                                                                scaling_factor=1.5035),
        text_encoder=_clip_text(hidden, 2, projection=False), tokenizer=_clip_tokenizer(),
        text_encoder_2=_t5(hidden, 2), tokenizer_2=_t5_tokenizer(),
        transformer=transformer, image_encoder=None, feature_extractor=None,
    )


def _wan_vae():
    """The tiny Wan video VAE shared by the Wan, AnyFlow-FAR and SkyReels-V2 builders."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def _ready(pipe):
    """Eval mode, no gradients, no progress bars: how every tiny pipeline is handed out."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _wan_transformer(size: str, vace: bool = False):
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    if size == "micro":
        tkw = dict(num_attention_heads=2, attention_head_dim=12, num_layers=2, ffn_dim=32)
    else:
        tkw = dict(num_attention_heads=6, attention_head_dim=64, num_layers=8, ffn_dim=1024)
    if vace:     # control blocks feeding every other block (Wan2.1-VACE: every other of 30/40)
        tkw["vace_layers"] = list(range(0, tkw["num_layers"], 2))
    return (WanVACETransformer3DModel if vace else WanTransformer3DModel)(
        patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=_WAN_TEXT[size], freq_dim=32,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32, **tkw,
    )


_WAN_TEXT = {"micro": 32, "small": 64}
# Wan 2.2 A14B text-to-video switches experts at t = 0.875 * 1000 (its model_index.json).
WAN22_BOUNDARY = 0.875


def _build_wan(size: str, experts: int = 1, vace: bool = False):
    """Wan 2.1 (one transformer) or, with ``experts=2``, Wan 2.2's two experts: ``transformer`` for
    the high-noise steps (t >= boundary), ``transformer_2`` (other weights) for the rest; ``vace``:
    Wan VACE (control blocks beside the main ones), called here without a control video."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanVACEPipeline

    transformer = _wan_transformer(size, vace)
    transformer_2 = _wan_transformer(size, vace) if experts == 2 else None
    vae = _wan_vae()     # built before the text encoder: the seeded weights depend on the order
    extra = dict(transformer_2=transformer_2, boundary_ratio=WAN22_BOUNDARY) if experts == 2 else {}
    return (WanVACEPipeline if vace else WanPipeline)(
        tokenizer=_t5_tokenizer(), text_encoder=_t5(_WAN_TEXT[size], 2, umt5=True), vae=vae,
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), **extra,
    )


def _build_qwenimage(size: str):
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                           QwenImageTransformer2DModel)

    if size == "micro":
        tkw = dict(num_layers=2, attention_head_dim=16, num_attention_heads=2, axes_dims_rope=(4, 6, 6))
        hidden = 32
    else:
        tkw = dict(num_layers=8, attention_head_dim=64, num_attention_heads=6, axes_dims_rope=(16, 24, 24))
        hidden = 64
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16,
                                              joint_attention_dim=hidden, **tkw)
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True])
    return QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                             text_encoder=_qwen_vl(hidden, 2), tokenizer=_qwen_tokenizer(),
                             transformer=transformer)


def _build_cogvideox(size: str):
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)

    if size == "micro":
        tkw = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, time_embed_dim=8)
        d, latent = 32, 4
    else:
        tkw = dict(num_attention_heads=6, attention_head_dim=64, num_layers=8, time_embed_dim=64)
        d, latent = 64, 16
    transformer = CogVideoXTransformer3DModel(
        in_channels=4, out_channels=4, text_embed_dim=d, sample_width=latent, sample_height=latent,
        sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=48, **tkw)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    return CogVideoXPipeline(tokenizer=_t5_tokenizer(), text_encoder=_t5(d, 2), vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler())


def _build_hunyuan_video(size: str):
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)

    if size == "micro":
        tkw = dict(num_attention_heads=2, attention_head_dim=16, num_layers=1, num_single_layers=1,
                   rope_axes_dim=(4, 6, 6))
        d = 32
    else:
        tkw = dict(num_attention_heads=6, attention_head_dim=64, num_layers=4, num_single_layers=8,
                   rope_axes_dim=(16, 24, 24))
        d = 64
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=d, pooled_projection_dim=d, **tkw)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4)
    return HunyuanVideoPipeline(text_encoder=_llama(d, 2), tokenizer=_llama_tokenizer(), transformer=transformer,
                                vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                text_encoder_2=_clip_text(d, 2), tokenizer_2=_clip_tokenizer())


def _build_lumina2(size: str):
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    if size == "micro":
        tkw = dict(hidden_size=32, num_layers=2, num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1,
                   multiple_of=16, axes_dim_rope=(4, 6, 6), sample_size=4)
        d, vae_ch = 32, (8, 8, 8, 8)
    else:
        tkw = dict(hidden_size=384, num_layers=8, num_refiner_layers=2, num_attention_heads=6, num_kv_heads=2,
                   multiple_of=64, axes_dim_rope=(16, 24, 24), sample_size=32)
        d, vae_ch = 64, (16, 32, 32, 32)
    transformer = Lumina2Transformer2DModel(patch_size=2, in_channels=4, axes_lens=(512, 128, 128), cap_feat_dim=d,
                                            **tkw)
    # the pipeline's latents are 8x smaller than the image whatever the VAE: four VAE levels keep them so
    return Lumina2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                           vae=_vae(4, vae_ch, shift_factor=0.1159, scaling_factor=0.3611),   # the Flux VAE's
                           text_encoder=_gemma2(d, 2), tokenizer=_gemma_tokenizer())


def _dc_ae(levels: int):
    """A tiny DC-AE (SANA's VAE): the pipeline's latents are 2 ** (levels - 1) times smaller than the image."""
    from diffusers import AutoencoderDC

    return AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types="ResBlock",
        decoder_block_types="ResBlock", encoder_block_out_channels=(8,) * levels,
        decoder_block_out_channels=(8,) * levels, encoder_layers_per_block=(1,) * levels,
        decoder_layers_per_block=(1,) * levels, encoder_qkv_multiscales=((),) * levels,
        decoder_qkv_multiscales=((),) * levels, downsample_block_type="conv", upsample_block_type="interpolate",
        scaling_factor=0.41407)


def _build_sana(size: str):
    from diffusers import DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    if size == "micro":     # 32 px, 4x latents: 8 x 8 tokens
        tkw = dict(num_layers=2, num_attention_heads=2, attention_head_dim=8, num_cross_attention_heads=2,
                   cross_attention_head_dim=8, cross_attention_dim=16, sample_size=8)
        d, levels = 32, 3
    else:                   # 256 px, 8x latents: 32 x 32 tokens (SANA 1024 px: 32x latents, 32 x 32 tokens)
        tkw = dict(num_layers=12, num_attention_heads=6, attention_head_dim=64, num_cross_attention_heads=6,
                   cross_attention_head_dim=64, cross_attention_dim=384, sample_size=32)
        d, levels = 64, 4
    transformer = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, caption_channels=d, **tkw)
    # the scheduler SANA's checkpoints ship: DPM-Solver++ on flow sigmas
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return SanaPipeline(tokenizer=_gemma_tokenizer(), text_encoder=_gemma2(d, 2), vae=_dc_ae(levels),
                        transformer=transformer, scheduler=scheduler)


def _build_kolors(size: str):
    """Kolors: the SDXL UNet layout with ChatGLM text: its 4096-wide (here ``d``) hidden states are
    projected to the cross-attention width in the UNet (encoder_hid_dim_type "text_proj"), and the
    pooled text plus six 256-wide (here 8) time ids feed the added embedding (4096 + 6 * 256 = 5632)."""
    from diffusers import EulerDiscreteScheduler, KolorsPipeline, UNet2DConditionModel

    d = 32 if size == "micro" else 64
    if size == "micro":
        unet_kw = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=4,
                       sample_size=16, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=1)
        vae_ch = (8, 8)
    else:   # SDXL's three levels, the first without attention, transformer depths growing (SDXL: 1, 2, 10)
        unet_kw = dict(block_out_channels=(32, 64, 128), layers_per_block=2, norm_num_groups=32, attention_head_dim=8,
                       sample_size=32, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                       transformer_layers_per_block=(1, 2, 2))
        vae_ch = (16, 32, 32, 32)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=4, cross_attention_dim=d * 2, encoder_hid_dim=d, encoder_hid_dim_type="text_proj",
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + d,
        use_linear_projection=True, **unet_kw)
    return KolorsPipeline(
        vae=_vae(4, vae_ch), text_encoder=_chatglm(d, 2), tokenizer=_chatglm_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.014, beta_schedule="scaled_linear",
                                         num_train_timesteps=1100, timestep_spacing="leading", steps_offset=1))


def _build_chroma(size: str):
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    if size == "micro":
        tkw = dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                   axes_dims_rope=[4, 4, 8], approximator_hidden_dim=32, approximator_layers=1)
        hidden, vae_ch = 32, (8, 8)
    else:     # Flux's small size; the approximator as deep as Chroma1-HD's (5 layers), narrower
        tkw = dict(num_layers=4, num_single_layers=8, attention_head_dim=64, num_attention_heads=6,
                   axes_dims_rope=[16, 24, 24], approximator_hidden_dim=256, approximator_layers=5)
        hidden, vae_ch = 64, (16, 32, 32, 32)
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=16, joint_attention_dim=hidden,
                                           approximator_num_channels=16, **tkw)
    return ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(),
                          vae=_vae(4, vae_ch, shift_factor=0.0609, scaling_factor=1.5035),
                          text_encoder=_t5(hidden, 2), tokenizer=_t5_tokenizer(), transformer=transformer,
                          image_encoder=None, feature_extractor=None)


# Qwen3's chat layout as FLUX.2 [klein] formats its prompts (user turn, then the assistant's turn opened)
_QWEN_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# hidden states FLUX.2 [klein]'s prompt embedding stacks (its default: layers 9, 18, 27 of Qwen3)
FLUX2_TEXT_LAYERS = (1, 2, 3)


def _qwen3(hidden: int, layers: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = _qwen_tokenizer()
    return Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None))


def _build_flux2(size: str):
    """FLUX.2 [klein] (Qwen3 text encoder, real CFG): the Flux2Transformer2DModel pipeline whose text
    encoder builds tiny offline (FLUX.2 [dev]'s Mistral 3 needs its Pixtral processor)."""
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline,
                           Flux2Transformer2DModel)

    if size == "micro":
        tkw = dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                   axes_dims_rope=(4, 4, 4, 4), timestep_guidance_channels=32)
        hidden, vae_ch = 32, (8, 8)
    else:
        tkw = dict(num_layers=4, num_single_layers=8, attention_head_dim=64, num_attention_heads=6,
                   axes_dims_rope=(16, 16, 16, 16), timestep_guidance_channels=64)
        hidden, vae_ch = 64, (16, 32, 32, 32)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, joint_attention_dim=hidden * 3,
                                          guidance_embeds=False, **tkw)
    n = len(vae_ch)
    vae = AutoencoderKLFlux2(latent_channels=4, block_out_channels=vae_ch, layers_per_block=1,
                             norm_num_groups=min(vae_ch), down_block_types=("DownEncoderBlock2D",) * n,
                             up_block_types=("UpDecoderBlock2D",) * n)
    tokenizer = _qwen_tokenizer()
    tokenizer.chat_template = _QWEN_CHAT
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                              text_encoder=_qwen3(hidden, len(FLUX2_TEXT_LAYERS)), tokenizer=tokenizer,
                              transformer=transformer, is_distilled=False)


_QWEN21_TEXT = {"micro": 32, "small": 64}     # width of the tiny prompt embeddings


def _build_qwenimage21(size: str):
    """Qwen-Image 2.1's denoising part of QwenImage21ModularPipeline (its core denoise step: latents,
    timesteps, RoPE inputs, the guider's CFG loop, unpacking), driven with prompt embeddings: its
    Qwen3-VL text encoder and processor do not build tiny offline here."""
    from diffusers import ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler, QwenImage21Transformer2DModel
    from diffusers.modular_pipelines.qwenimage21.modular_blocks_qwenimage21 import QwenImage21CoreDenoiseStep

    if size == "micro":
        tkw = dict(num_layers=2, attention_head_dim=16, num_attention_heads=2, axes_dims_rope=(4, 6, 6))
    else:
        tkw = dict(num_layers=8, attention_head_dim=64, num_attention_heads=6, axes_dims_rope=(16, 24, 24))
    transformer = QwenImage21Transformer2DModel(in_channels=16, out_channels=16,
                                                context_in_dim=_QWEN21_TEXT[size], **tkw)
    pipe = QwenImage21CoreDenoiseStep().init_pipeline()
    pipe.update_components(transformer=transformer, guider=ClassifierFreeGuidance(guidance_scale=4.0),
                           scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    return pipe


def _qwenimage21_embeds(size: str, seed: int, tokens: int = 24) -> dict:
    """Random prompt and negative-prompt embeddings (all tokens valid, no image slots: text-to-image)."""
    g = torch.Generator("cpu").manual_seed(seed + 1)
    width = _QWEN21_TEXT[size]
    valid, slots = torch.ones(1, tokens, dtype=torch.bool), torch.zeros(1, tokens, dtype=torch.bool)
    return dict(prompt_embeds=torch.randn(1, tokens, width, generator=g), prompt_embeds_mask=valid,
                negative_prompt_embeds=torch.randn(1, tokens, width, generator=g),
                negative_prompt_embeds_mask=valid, image_pad_mask=slots, negative_image_pad_mask=slots)


# Qwen's chat layout, as HunyuanVideo 1.5's prompt template renders it (system, then user, then the
# assistant's turn); the in-memory tokenizer has no template of its own
_QWEN_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _build_hunyuan_video15(size: str):
    """HunyuanVideo 1.5 text-to-video with its guider's CFG (cond and uncond as separate calls). The
    pipeline's prompt lengths are cut for a CPU: a short system message (the template's cropped prefix
    is counted here), 48 Qwen and 48 ByT5 tokens, 8 image-embedding slots (1000, 256 and 729 in the
    release); the tiny VAE compresses 16x in space and 4x in time as the real one does."""
    from diffusers import (AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel)
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    if size == "micro":
        tkw = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, rope_axes_dim=(4, 6, 6))
        d = 32
    else:
        tkw = dict(num_attention_heads=6, attention_head_dim=64, num_layers=8, rope_axes_dim=(16, 24, 24))
        d = 64
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_refiner_layers=1, patch_size=1, patch_size_t=1, text_embed_dim=d,
        text_embed_2_dim=d, image_embed_dim=16, task_type="t2v", **tkw)
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8,) * 5, layers_per_block=1,
                                      spatial_compression_ratio=16, temporal_compression_ratio=4)
    tok = _qwen_tokenizer()
    tok.chat_template = _QWEN_CHAT
    end = tok.convert_tokens_to_ids("<|endoftext|>")
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tok), hidden_size=d, intermediate_size=d * 2, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=None, eos_token_id=end, pad_token_id=end,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                         "mrope_section": [d // 32, d // 32, d // 16]}))     # half the head dim (d / 4)
    byt5 = ByT5Tokenizer()
    text_encoder_2 = _t5(d, 1, vocab=len(byt5))
    pipe = HunyuanVideo15Pipeline(text_encoder=text_encoder, tokenizer=tok, transformer=transformer, vae=vae,
                                  scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2,
                                  tokenizer_2=byt5, guider=ClassifierFreeGuidance(guidance_scale=6.0))
    pipe.system_message = "Describe the video."
    prefix = tok.apply_chat_template([{"role": "system", "content": pipe.system_message}], tokenize=False)
    pipe.prompt_template_encode_start_idx = len(tok(prefix).input_ids)
    pipe.tokenizer_max_length, pipe.tokenizer_2_max_length, pipe.vision_num_semantic_tokens = 48, 48, 8
    return pipe


def _build_ltx2(size: str):
    """LTX-2 (audio + video) with a tiny Gemma-3 text model, text connectors, video and audio VAEs and
    vocoder. Its video VAE here compresses 16x in space and 4x in time (the real one 32x and 8x): 9 frames
    at 128x128 give 3 x 8 x 8 video tokens; the audio VAE's 16 mel bins give 4 latent bins (9 audio tokens
    for 9 frames at 24 fps)."""
    from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler,
                           LTX2Pipeline, LTX2VideoTransformer3DModel)
    from diffusers.pipelines.ltx2 import LTX2TextConnectors, LTX2Vocoder
    from transformers import Gemma3TextConfig, Gemma3TextModel

    if size == "micro":
        tkw = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, audio_num_attention_heads=2,
                   audio_attention_head_dim=8)
    else:
        tkw = dict(num_attention_heads=6, attention_head_dim=64, num_layers=8, audio_num_attention_heads=6,
                   audio_attention_head_dim=32)
    d, text_layers = 32, 2
    transformer = LTX2VideoTransformer3DModel(
        in_channels=8, out_channels=8, audio_in_channels=8, audio_out_channels=8, caption_channels=d,
        cross_attention_dim=tkw["num_attention_heads"] * tkw["attention_head_dim"],
        audio_cross_attention_dim=tkw["audio_num_attention_heads"] * tkw["audio_attention_head_dim"], **tkw)
    tok = _llama_tokenizer()
    text_encoder = Gemma3TextModel(Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=d, intermediate_size=2 * d, num_hidden_layers=text_layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, sliding_window=64))
    # the connectors read every hidden state of the text model (its layers + the embeddings)
    connectors = LTX2TextConnectors(
        caption_channels=d, text_proj_in_factor=text_layers + 1, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=16, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=16, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None)
    vae = AutoencoderKLLTX2Video(
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False), downsample_type=("spatiotemporal",) * 4,
        decoder_spatio_temporal_scaling=(True, True, False), upsample_factor=(1, 1, 1))
    # base_channels = latent channels x latent mel bins: the packed audio token width its statistics cover
    audio_vae = AutoencoderKLLTX2Audio(base_channels=8, ch_mult=(1, 2, 4), num_res_blocks=1, latent_channels=2,
                                       mel_bins=16)
    vocoder = LTX2Vocoder(in_channels=32, hidden_channels=8, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
                          resnet_kernel_sizes=[3], resnet_dilations=[[1]])
    return LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae,
                        text_encoder=text_encoder, tokenizer=tok, connectors=connectors, transformer=transformer,
                        vocoder=vocoder)


def _build_ltx_video(size: str):
    """LTX-Video: its VAE here compresses 16x in space and 4x in time (the real one 32x and 8x), so 9
    frames at 128x128 give 3 x 8 x 8 tokens (patch 1), the token count of the other small video pipelines."""
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline,
                           LTXVideoTransformer3DModel)

    if size == "micro":
        tkw = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2)
        d = 32
    else:
        tkw = dict(num_attention_heads=6, attention_head_dim=64, num_layers=8)
        d = 64
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, caption_channels=d,
        cross_attention_dim=tkw["num_attention_heads"] * tkw["attention_head_dim"], **tkw)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, patch_size=4, patch_size_t=1)
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_t5(d, 2),
                       tokenizer=_t5_tokenizer(), transformer=transformer)


_BUILDERS = {
    "sd": lambda size: _build_sd(size),
    "sdxl": lambda size: _build_sd(size, xl=True),
    "pixart": _build_pixart,
    "sd3": _build_sd3,
    "flux": _build_flux,
    "wan": _build_wan,
    "wan22": lambda size: _build_wan(size, experts=2),
    "wan_vace": lambda size: _build_wan(size, vace=True),
    "qwenimage": _build_qwenimage,
    "cogvideox": _build_cogvideox,
    "hunyuan_video": _build_hunyuan_video,
    "lumina2": _build_lumina2,
    "sana": _build_sana,
    "kolors": _build_kolors,
    "chroma": _build_chroma,
    "flux2": _build_flux2,
    "qwenimage21": _build_qwenimage21,
    "ltx_video": _build_ltx_video,
    "hunyuan_video15": _build_hunyuan_video15,
    "ltx2": _build_ltx2,
}


def make_pipeline(name: str, size: str = "micro", seed: int = 0, **options):
    """Build a tiny pipeline of the real class with deterministic random weights (CPU, fp32).
    ``options``: builder settings (``latent_channels`` for sd3: its inpaint pipeline needs 16)."""
    if name not in _BUILDERS:
        raise ValueError(f"pipeline: unknown name {name!r}; allowed: {', '.join(PIPELINES)}")
    if size not in SIZES:
        raise ValueError(f"size: unknown size {size!r}; allowed: {', '.join(SIZES)}")
    torch.manual_seed(seed)
    return _ready(_BUILDERS[name](size, **options))


def call_kwargs(name: str, size: str = "micro", steps: int = 4, seed: int = 0, **overrides):
    """Arguments for one deterministic call of a tiny pipeline (latent output: no VAE noise)."""
    kw = dict(CALL_DEFAULTS[(name, size)])
    kw.update(prompt="a red circle above a blue square", num_inference_steps=steps,
              generator=torch.Generator("cpu").manual_seed(seed), output_type="latent")
    if name in ("sd", "sdxl", "pixart", "sd3", "wan", "wan22", "wan_vace", "cogvideox", "kolors", "ltx_video"):
        kw["guidance_scale"] = 5.0
    if name == "flux":
        kw["guidance_scale"] = 1.0
        kw["max_sequence_length"] = 48
    if name in ("pixart", "sd3", "wan", "wan22", "wan_vace", "cogvideox", "hunyuan_video", "kolors", "chroma", "ltx_video"):
        kw["max_sequence_length"] = 48
    if name == "chroma":
        kw.update(guidance_scale=4.0, negative_prompt=" ")   # real CFG: a separate negative call
    if name == "flux2":     # klein base: real CFG against the empty prompt, a separate call
        kw.update(guidance_scale=4.0, max_sequence_length=48, text_encoder_out_layers=FLUX2_TEXT_LAYERS)
    if name == "pixart":
        kw.update(use_resolution_binning=False, clean_caption=False)
    if name == "lumina2":
        # CFG as a cond call then an uncond call; a short system prompt (the pipeline's own is ~170 bytes,
        # one token each with the byte tokenizer)
        kw.update(guidance_scale=4.0, max_sequence_length=64, system_prompt="You draw images.")
    if name == "sana":      # no resolution bins, no caption cleaning (bs4, ftfy), no long instruction preamble
        kw.update(guidance_scale=4.5, max_sequence_length=48, use_resolution_binning=False, clean_caption=False,
                  complex_human_instruction=None)
    if name in ("qwenimage", "hunyuan_video"):
        kw.update(negative_prompt=" ", true_cfg_scale=4.0)   # true CFG: a separate negative call
    if name == "hunyuan_video":
        kw["guidance_scale"] = 6.0                           # guidance-distilled: an embedding, not CFG
    if name == "qwenimage21":      # a modular pipeline driven with embeddings; output="latents" returns them
        for key in ("prompt", "output_type"):
            kw.pop(key)
        kw.update(_qwenimage21_embeds(size, seed), output="latents")
    if name == "ltx2":     # CFG only: no STG or modality-isolation calls (its defaults add both)
        kw.update(guidance_scale=4.0, stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0,
                  max_sequence_length=48)
    kw.update(overrides)
    return kw


def output_tensor(out) -> torch.Tensor:
    """The generated tensor of a pipeline call: ``frames`` (video), ``images``, or the tensor a
    modular pipeline returns for ``output="latents"``; audio+video pipelines (LTX-2): both latents,
    flattened and joined, so comparisons cover the audio too."""
    if isinstance(out, torch.Tensor):
        return out
    result = torch.as_tensor(out.frames if hasattr(out, "frames") else out.images)
    audio = getattr(out, "audio", None)
    if isinstance(audio, torch.Tensor):
        return torch.cat([result.flatten(), audio.flatten()])
    return result


def run(pipe, name: str, size: str = "micro", **kw) -> torch.Tensor:
    """Call the pipeline with :func:`call_kwargs` and return the output tensor."""
    return output_tensor(pipe(**call_kwargs(name, size, **kw)))


def run_counted(pipe, kwargs: dict, **acceleration) -> tuple[torch.Tensor, int]:
    """One generation under ``accelerate(pipe, "off", measure_macs=True, **acceleration)``: the
    output tensor and the denoiser MACs counted. The acceleration is removed afterwards."""
    from .api import accelerate

    accelerate(pipe, "off", measure_macs=True, **acceleration)
    try:
        return output_tensor(pipe(**kwargs)), pipe.acceleration.state.macs
    finally:
        pipe.acceleration.remove()


def surface(pipe) -> dict:
    """What acceleration may change on a pipeline, by identity: every module's own ``forward``,
    its diffusers hooks and HF Accelerate hook, its attention processor; the instance methods of
    the scheduler and the pipeline. Equal before ``accelerate()`` and after ``remove()`` means
    the pipeline was restored exactly (including what other libraries had installed)."""
    out: dict = {"pipeline": _own_callables(pipe), "acceleration": getattr(pipe, "acceleration", None) is not None}
    for cname, comp in pipe.components.items():
        if isinstance(comp, torch.nn.Module):
            for name, m in comp.named_modules():
                registry = getattr(m, "_diffusers_hook", None)
                out[f"{cname}.{name}"] = (vars(m).get("forward"), vars(m).get("_old_forward"),
                                          vars(m).get("_hf_hook"), getattr(m, "processor", None),
                                          None if registry is None else tuple(registry._hook_order))
        elif comp is not None and not isinstance(comp, (str, int, float, bool)):
            out[cname] = _own_callables(comp)
    return out


def _own_callables(obj) -> dict:
    return {k: v for k, v in vars(obj).items() if callable(v) and not isinstance(v, (torch.nn.Module, type))}
