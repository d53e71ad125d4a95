"""Model knowledge as data: one row per supported denoiser class.

Support is decided by the denoiser's class (and config), so a tiny random-weight
``PixArtTransformer2DModel`` exercises the same code path as the real checkpoint. A
technique asks the row what it needs (which modules are blocks, which are image
self-attention and where their text tokens sit, how to read a call's token grid, where RAS
plugs in, how the pipelines run classifier-free guidance, which kv-cache adapter applies);
it never branches on a family name. Adding a family is a row here plus a tiny-config test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# Every technique the library knows, outermost first: guidance decides which half of the
# CFG batch runs, RAS which tokens, caching which blocks, attention how the blocks attend.
# The API applies them innermost first, so each wraps the ones after it.
TECHNIQUES = ("guidance", "ras", "deepcache", "block_cache", "attention", "kv_cache")


@dataclass(frozen=True)
class SelfAttention:
    """An image/video self-attention module of a block, and where joint text tokens sit in its
    sequence: ``"none"`` (image tokens only), ``"prefix"`` (text first) or ``"suffix"``."""

    attr: str
    text: str = "none"


@dataclass(frozen=True)
class BlockGroup:
    """A ``ModuleList`` of blocks in the denoiser and the cacheable sub-modules of each block."""

    attr: str                                      # attribute path on the denoiser, e.g. "transformer_blocks"
    components: tuple[str, ...]                    # sub-module names, e.g. ("attn1", "attn2", "ff")
    self_attention: tuple[SelfAttention, ...] = ()  # modules sparse attention and RAS work on


@dataclass(frozen=True)
class RasLayout:
    """Where region-adaptive sampling plugs into a transformer."""

    embed: str                        # module whose output is the image tokens, position-embedded
    processors: tuple[str, ...]       # attention processors whose image K/V come from to_k/to_v
    output: str = "proj_out"          # module whose output is the per-token prediction (leading rows: text)
    query_rope: str = ""              # "flux" | "lumina2": RoPE is applied inside the processor (RAS rotates
                                      # active rows)
    # where the active tokens are taken: "output" of ``embed`` (image tokens only) or its "input" (the
    # joint sequence of a block, text first and image tokens last: Lumina 2's refiners run every token)
    gather: str = "output"
    # call argument holding the text padding mask: a call whose rows have different text lengths runs
    # dense (the model packs each row's image tokens right after its own text, at different offsets)
    text_mask: str = ""


@dataclass(frozen=True)
class Family:
    name: str
    classes: tuple[str, ...]              # denoiser class names (matched along the MRO)
    kind: str                             # "unet" | "dit"
    denoiser_attr: str                    # pipeline attribute holding the denoiser
    experts: tuple[str, ...] = ()         # further pipeline attributes whose denoisers (same class) take turns with it
    block_groups: tuple[BlockGroup, ...] = ()
    grid: str = "2d"                      # "2d" image tokens or "3d" video tokens
    patch_size: tuple[int, ...] = ()      # token patch on the latent grid (t, h, w) or (h, w)
    # how a call's token grid is read: "latent" (input / config patch) | "ids" (Flux img_ids) |
    # "img_shapes" (Qwen-Image's per-sample (frames, h, w) in tokens) | "frames_first" ((B, F, C, H, W)
    # latents over the config's patch_size_t and patch_size: CogVideoX) | "sizes" (the call's num_frames,
    # height and width keywords, latent sizes of packed tokens, over patch_size_t and patch_size: LTX)
    token_grid: str = "latent"
    text_tokens: str = "cross"            # "cross" (cross-attention) | "joint" (concatenated)
    pos_embed: str = "none"               # "absolute" | "rope" | "none" (UNet)
    cfg: str = "batched"                  # how its pipelines run CFG: "batched" ([uncond, cond] in one call) | "separate"
    ras: RasLayout | None = None
    outputs: int = 1                      # prediction tensors a call returns, batched alike (LTX-2: video, audio)
    kv_cache: str = ""                    # kv-cache adapter: "far" | "skyreels"
    # pipeline attributes of models its pipelines call before the denoiser on every step, whose
    # outputs are only residuals added inside the denoiser (ControlNets)
    residual_models: tuple[str, ...] = ()
    techniques: tuple[str, ...] = field(default=("guidance",))
    why_not: tuple[tuple[str, str], ...] = ()   # (technique, why it does not apply to this family)
    notes: str = ""

    def reason_not(self, technique: str) -> str:
        """Why ``technique`` is not among this family's techniques ("" if the row does not say)."""
        return dict(self.why_not).get(technique, "")

    def blocks(self, denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """All blocks of the denoiser as (qualified name, module), in execution order."""
        out = []
        for group in self.block_groups:
            for i, block in enumerate(getattr(denoiser, group.attr)):
                out.append((f"{group.attr}.{i}", block))
        return out

    def self_attentions(self, denoiser) -> list[tuple[int, str, torch.nn.Module, str]]:
        """(block index, qualified name, module, text side) of every image self-attention."""
        out, index = [], 0
        for group in self.block_groups:
            for i, block in enumerate(getattr(denoiser, group.attr)):
                for spec in group.self_attention:
                    module = getattr(block, spec.attr, None)
                    if isinstance(module, torch.nn.Module):
                        out.append((index, f"{group.attr}.{i}.{spec.attr}", module, spec.text))
                index += 1
        return out

    def patch(self, denoiser) -> tuple[int, ...]:
        """Latent pixels per token along each grid axis: the config's ``patch_size`` (it varies
        by checkpoint) for latent grids, the row's for packed tokens."""
        if self.token_grid == "latent":
            value = getattr(getattr(denoiser, "config", None), "patch_size", None)
            if value is not None:
                if isinstance(value, (tuple, list)):
                    return tuple(value)
                if self.grid == "3d":     # an int patch_size is spatial; time has its own (HunyuanVideo)
                    return (int(getattr(denoiser.config, "patch_size_t", None) or 1), int(value), int(value))
                return (int(value),) * 2
        return tuple(self.patch_size)

    def token_grid_of(self, denoiser, args, kwargs) -> tuple[int, ...]:
        """The token grid of one denoiser call, read from its input (never guessed from lengths)."""
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        if self.token_grid == "img_shapes":
            shapes = kwargs.get("img_shapes")
            if not shapes:
                raise ValueError(f"{type(denoiser).__name__} was called without img_shapes: the token grid is unknown")
            first = shapes[0]
            first = [first] if isinstance(first[0], int) else list(first)
            if len(first) != 1:
                raise ValueError(f"{type(denoiser).__name__} was called with {len(first)} images in one sequence "
                                 f"(an edit pipeline's reference images): its tokens form no single grid")
            frames, h, w = (int(v) for v in first[0])
            return (h, w) if self.grid == "2d" and frames == 1 else (frames, h, w)
        if self.token_grid == "frames_first":
            config = denoiser.config
            pt, p = getattr(config, "patch_size_t", None) or 1, config.patch_size
            return (x.shape[1] // pt, x.shape[-2] // p, x.shape[-1] // p)
        if self.token_grid == "sizes":
            sizes = [kwargs.get(k) for k in ("num_frames", "height", "width")]
            if any(v is None for v in sizes):
                raise ValueError(f"{type(denoiser).__name__} was called without num_frames, height and width "
                                 f"(given positions instead: a conditioning pipeline's video_coords?): the token "
                                 f"grid is unknown")
            config = denoiser.config
            pt, p = getattr(config, "patch_size_t", None) or 1, config.patch_size
            return (int(sizes[0]) // pt, int(sizes[1]) // p, int(sizes[2]) // p)
        if self.token_grid == "ids":
            ids = kwargs.get("img_ids")
            if ids is None:
                raise ValueError(f"{type(denoiser).__name__} was called without img_ids: the token grid is unknown")
            ids = ids.reshape(-1, ids.shape[-1])[: x.shape[1]]
            if ids.shape[-1] == 4 and bool((ids[:, 0] != ids[0, 0]).any()):    # Flux.2's (t, h, w, l) ids
                images = len(torch.unique(ids[:, 0]))
                raise ValueError(f"{type(denoiser).__name__} was called with {images} images in one sequence "
                                 f"(reference images of an edit call): its tokens form no single grid")
            return (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
        patch = self.patch(denoiser)
        spatial = tuple(x.shape[-len(patch):])
        return tuple(s // p for s, p in zip(spatial, patch))

    def tokens_of(self, denoiser, args, kwargs) -> int:
        return math.prod(self.token_grid_of(denoiser, args, kwargs))


# why_not entries shared by rows: DeepCache is for UNets; RAS and kv_cache by the video DiTs' reasons
_DIT_NOT_DEEPCACHE = ("deepcache", "DeepCache caches a UNet's skip branches; this is a DiT (block_cache applies)")
_VIDEO_DIT_NOT = (("ras", "no RAS layout: RAS patches SD3's and Flux's image-token processors"), _DIT_NOT_DEEPCACHE,
                  ("kv_cache", "no autoregressive rollout: every step attends over the whole clip"))
# HunyuanVideo and 1.5: their processors give every joint attention the text padding mask
_MASKED_NOT_ATTENTION = ("attention", "every call gives its joint attention a text padding mask; sparse attention "
                                      "replaces plain (unmasked) self-attention only")

# Flux's dual-stream blocks (joint attn over [text, image], ff, ff_context), then its single-stream blocks
_FLUX_BLOCKS = (BlockGroup("transformer_blocks", ("attn", "ff", "ff_context"), (SelfAttention("attn", "prefix"),)),
                BlockGroup("single_transformer_blocks", ("attn", "proj_mlp", "proj_out"),
                           (SelfAttention("attn", "prefix"),)))
_WAN_BLOCKS = (BlockGroup("blocks", ("attn1", "attn2", "ffn"), (SelfAttention("attn1"),)),)

FAMILIES: tuple[Family, ...] = (
    Family(
        name="unet", classes=("UNet2DConditionModel",), kind="unet", denoiser_attr="unet", residual_models=("controlnet",),
        techniques=("guidance", "deepcache"),
        why_not=(("block_cache", "a UNet has no list of transformer blocks here: DeepCache caches its skip branches"),
                 ("ras", "RAS selects a DiT's image tokens; a UNet works on feature maps at several resolutions"),
                 ("attention", "the sparse masks are for one DiT token grid; a UNet attends at several resolutions"),
                 ("kv_cache", "no autoregressive rollout")),
        notes="SD 1.x/2.x, SDXL and their img2img/inpaint/ControlNet variants; Kolors (SDXL's UNet layout, its "
              "ChatGLM text projected inside the UNet: encoder_hid_dim_type 'text_proj')",
    ),
    Family(
        name="pixart", classes=("PixArtTransformer2DModel",), kind="dit", denoiser_attr="transformer",
        block_groups=(BlockGroup("transformer_blocks", ("attn1", "attn2", "ff"), (SelfAttention("attn1"),)),),
        patch_size=(2, 2), text_tokens="cross", pos_embed="absolute",
        techniques=("guidance", "block_cache", "attention"),
        why_not=(("ras", "no RAS layout: RAS patches SD3's and Flux's joint-attention processors"),
                 _DIT_NOT_DEEPCACHE, ("kv_cache", "no autoregressive rollout")),
        notes="PixArt-alpha / PixArt-sigma",
    ),
    Family(
        name="sd3", classes=("SD3Transformer2DModel",), kind="dit", denoiser_attr="transformer",
        # attn: image tokens first, text appended; attn2: SD3.5's second, image-only attention
        block_groups=(BlockGroup("transformer_blocks", ("attn", "ff", "ff_context"),
                                 (SelfAttention("attn", "suffix"), SelfAttention("attn2"))),),
        patch_size=(2, 2), text_tokens="joint", pos_embed="absolute",
        ras=RasLayout(embed="pos_embed", processors=("JointAttnProcessor2_0", "AttnProcessor2_0")),
        techniques=("guidance", "ras", "block_cache", "attention"),
        why_not=(_DIT_NOT_DEEPCACHE, ("kv_cache", "no autoregressive rollout")),
        notes="SD3 / SD3.5 (MMDiT)",
    ),
    Family(
        name="flux", classes=("FluxTransformer2DModel",), kind="dit", denoiser_attr="transformer",
        block_groups=_FLUX_BLOCKS,
        patch_size=(2, 2), token_grid="ids", text_tokens="joint", pos_embed="rope", cfg="separate",
        ras=RasLayout(embed="x_embedder", processors=("FluxAttnProcessor",), query_rope="flux"),
        techniques=("guidance", "ras", "block_cache", "attention"),
        why_not=(_DIT_NOT_DEEPCACHE, ("kv_cache", "no autoregressive rollout")),
        notes="FLUX.1 (latents packed 2x2 by the pipeline: one token per 2x2 latent patch; true CFG "
              "runs a separate negative call)",
    ),
    Family(
        name="qwenimage", classes=("QwenImageTransformer2DModel",), kind="dit", denoiser_attr="transformer",
        # attn: one joint attention over [text, image] returning both streams; img_mlp / txt_mlp: the
        # image and text streams' feed-forwards. Each block's adaLN gates and residuals stay live.
        block_groups=(BlockGroup("transformer_blocks", ("attn", "img_mlp", "txt_mlp"),
                                 (SelfAttention("attn", "prefix"),)),),
        patch_size=(2, 2), token_grid="img_shapes", text_tokens="joint", pos_embed="rope", cfg="separate",
        techniques=("guidance", "block_cache", "attention"),
        why_not=(("ras", "its RAS layout is not written: RAS patches SD3's and Flux's attention processors, "
                         "and Qwen's double-stream processor rotates queries with its own complex RoPE"),
                 _DIT_NOT_DEEPCACHE,
                 ("kv_cache", "no autoregressive rollout: every step attends over the whole image")),
        notes="Qwen-Image text-to-image, img2img, inpaint and edit (latents packed 2x2 by the pipeline: one "
              "token per 2x2 latent patch; true CFG, true_cfg_scale > 1 with a negative prompt, runs a separate "
              "negative call). Sparse attention needs one token grid: not the edit pipelines' several images",
    ),
    # -- image families added together: Lumina 2 (RAS), SANA (linear attention) ---------------------
    Family(
        name="lumina2", classes=("Lumina2Transformer2DModel",), kind="dit", denoiser_attr="transformer",
        # layers: the joint blocks over [text, image] (each row's image tokens right after its own text,
        # rows padded at the end and masked when their text lengths differ). The noise refiner (image
        # tokens) and context refiner (text) before them are neither cached nor sparsified.
        block_groups=(BlockGroup("layers", ("attn", "feed_forward"), (SelfAttention("attn", "prefix"),)),),
        patch_size=(2, 2), text_tokens="joint", pos_embed="rope", cfg="separate",
        ras=RasLayout(embed="layers.0", gather="input", processors=("Lumina2AttnProcessor2_0",),
                      output="norm_out", query_rope="lumina2", text_mask="encoder_attention_mask"),
        techniques=("guidance", "ras", "block_cache"),
        why_not=(("attention", "the text before the image tokens is each row's own prompt length (rows padded and "
                               "masked when they differ): the sparse masks need one fixed text prefix and plain "
                               "(unmasked) self-attention"),
                 _DIT_NOT_DEEPCACHE, ("kv_cache", "no autoregressive rollout")),
        notes="Lumina-Image 2.0 (Gemma text encoder; CFG as a cond call then an uncond call). RAS sparsifies the "
              "joint blocks; the refiners run every token",
    ),
    Family(
        name="sana", classes=("SanaTransformer2DModel",), kind="dit", denoiser_attr="transformer",
        # attn1: linear self-attention over the image tokens; attn2: cross-attention to the text; ff: a
        # GLU feed-forward with a 3x3 depthwise conv over the (h, w) token grid. No position embedding
        # unless the config sets interpolation_scale (then sincos, added at the patch embedding).
        block_groups=(BlockGroup("transformer_blocks", ("attn1", "attn2", "ff"), (SelfAttention("attn1"),)),),
        text_tokens="cross", pos_embed="none", cfg="batched",
        techniques=("guidance", "block_cache"),
        why_not=(("attention", "its self-attention is linear attention (SanaLinearAttnProcessor2_0, a ReLU kernel): "
                               "there is no softmax attention map for a sparse mask to cut"),
                 ("ras", "no RAS layout: every block's feed-forward runs a 3x3 depthwise conv over the whole (h, w) "
                         "token grid, so no block can run on a subset of the tokens"),
                 _DIT_NOT_DEEPCACHE, ("kv_cache", "no autoregressive rollout")),
        notes="SANA 600M / 1600M (Gemma 2 text encoder, DC-AE 32x latents: 1024 px is 32 x 32 tokens; batched CFG)",
    ),
    # -- image families added together: Chroma, Flux.2, Qwen-Image 2.1 -------------------------------
    Family(
        name="chroma", classes=("ChromaTransformer2DModel",), kind="dit", denoiser_attr="transformer",
        # Flux's blocks and FluxAttention; the adaLN modulation comes from one approximator MLP run once
        # per call on the timestep (not per block), so the blocks are cached exactly as Flux's
        block_groups=_FLUX_BLOCKS,
        patch_size=(2, 2), token_grid="ids", text_tokens="joint", pos_embed="rope", cfg="separate",
        # Flux's layout: RAS's sparse processor keeps the padding mask's rows of the active queries
        ras=RasLayout(embed="x_embedder", processors=("FluxAttnProcessor",), query_rope="flux"),
        techniques=("guidance", "ras", "block_cache"),
        why_not=(("attention", "every call gives its attention the T5 padding mask; sparse attention replaces "
                               "plain (unmasked) self-attention only"),
                 _DIT_NOT_DEEPCACHE, ("kv_cache", "no autoregressive rollout")),
        notes="Chroma (Flux-like, its own modulation approximator; real CFG: guidance_scale > 1 runs a separate "
              "negative call; latents packed 2x2 by the pipeline)",
    ),
    Family(
        name="flux2", classes=("Flux2Transformer2DModel",), kind="dit", denoiser_attr="transformer",
        # dual-stream blocks (joint attn over [text, image], ff, ff_context), then single-stream blocks
        # whose attn is a "parallel" block: one fused projection for Q/K/V and the MLP input, one for both
        # outputs, so attn is the whole block's work. Modulation is computed once per call, outside the blocks.
        block_groups=(BlockGroup("transformer_blocks", ("attn", "ff", "ff_context"), (SelfAttention("attn", "prefix"),)),
                      BlockGroup("single_transformer_blocks", ("attn",), (SelfAttention("attn", "prefix"),))),
        patch_size=(2, 2), token_grid="ids", text_tokens="joint", pos_embed="rope", cfg="separate",
        techniques=("guidance", "block_cache", "attention"),
        why_not=(("ras", "no RAS layout: Flux.2's single-stream blocks fuse the Q/K/V projections with the MLP "
                         "input (to_qkv_mlp_proj), and RAS keeps full-length keys/values from separate to_k/to_v"),
                 _DIT_NOT_DEEPCACHE, ("kv_cache", "no autoregressive rollout")),
        notes="FLUX.2 [dev] (guidance-distilled: guidance_scale is an embedding, one call per step) and FLUX.2 "
              "[klein] (base: real CFG, guidance_scale > 1 runs a separate negative call; latents packed 2x2). "
              "Sparse attention needs one token grid: not an edit call's reference images",
    ),
    Family(
        name="qwenimage21", classes=("QwenImage21Transformer2DModel",), kind="dit", denoiser_attr="transformer",
        # single-stream blocks over one joint sequence (text with condition images in place, the target image
        # appended): attn, then img_mlp, each under a gate sliced from one shared modulation
        block_groups=(BlockGroup("transformer_blocks", ("attn", "img_mlp"), (SelfAttention("attn", "prefix"),)),),
        token_grid="img_shapes", text_tokens="joint", pos_embed="rope", cfg="separate",
        techniques=("guidance", "block_cache"),
        why_not=(("attention", "block-causal attention (causal text, each image block bidirectional) run as masked "
                               "segments; sparse attention replaces plain (unmasked) self-attention only"),
                 ("ras", "no RAS layout: its single-stream processor attends block-causally with Qwen's complex RoPE"),
                 _DIT_NOT_DEEPCACHE,
                 ("kv_cache", "no autoregressive rollout (the model's own prefix KV cache of text and condition "
                              "images is diffusers' use_kv_cache, left as it is)")),
        notes="Qwen-Image 2.1 (QwenImage21ModularPipeline: its guider runs CFG as separate cond/uncond calls; "
              "with use_kv_cache, steps after the first run the target image's tokens only)",
    ),
    Family(
        name="wan", classes=("WanTransformer3DModel",), kind="dit", denoiser_attr="transformer",
        # Wan 2.2 A14B: `transformer` denoises the high-noise steps (t >= boundary_ratio * 1000),
        # `transformer_2` the rest; each expert gets its own hooks and caches.
        experts=("transformer_2",),
        block_groups=_WAN_BLOCKS, grid="3d", patch_size=(1, 2, 2), text_tokens="cross", pos_embed="rope",
        cfg="separate", techniques=("guidance", "block_cache", "attention"),
        why_not=(("ras", "no RAS layout: Wan's video tokens and cross-attention text are not wired into RAS"),
                 _DIT_NOT_DEEPCACHE,
                 ("kv_cache", "no autoregressive rollout (AnyFlow-FAR and SkyReels-V2 have their own rows)")),
        notes="Wan 2.1 and Wan 2.2 text-to-video (2.2 A14B: two experts switched at the pipeline's boundary_ratio)",
    ),
    Family(
        name="wan_vace", classes=("WanVACETransformer3DModel",), kind="dit", denoiser_attr="transformer",
        experts=("transformer_2",),
        # the control blocks run first (on the control video's tokens), then the main blocks; both attend
        # over one (frames, h, w) token grid
        block_groups=(BlockGroup("vace_blocks", ("attn1", "attn2", "ffn"), (SelfAttention("attn1"),)), *_WAN_BLOCKS),
        grid="3d", patch_size=(1, 2, 2), text_tokens="cross", pos_embed="rope", cfg="separate",
        techniques=("guidance", "block_cache", "attention"),
        why_not=(("ras", "no RAS layout: Wan's video tokens and cross-attention text are not wired into RAS"),
                 _DIT_NOT_DEEPCACHE, ("kv_cache", "no autoregressive rollout: every step attends over the whole clip")),
        notes="Wan VACE (2.1, and 2.2 with two experts): control and reference video conditioning",
    ),
    Family(
        name="cogvideox", classes=("CogVideoXTransformer3DModel",), kind="dit", denoiser_attr="transformer",
        # attn1: one joint attention over [text, video] returning both streams; ff: one feed-forward over
        # the joint sequence. Each block's LayerNormZero gates and residuals stay live.
        block_groups=(BlockGroup("transformer_blocks", ("attn1", "ff"), (SelfAttention("attn1", "prefix"),)),),
        grid="3d", token_grid="frames_first", text_tokens="joint", pos_embed="absolute",   # 2B sincos, 5B RoPE
        cfg="batched", techniques=("guidance", "block_cache", "attention"),
        why_not=_VIDEO_DIT_NOT,
        notes="CogVideoX text-to-video (batched CFG; the pipeline's CFG flag is the one it gives encode_prompt)",
    ),
    Family(
        name="hunyuan_video", classes=("HunyuanVideoTransformer3DModel",), kind="dit", denoiser_attr="transformer",
        # Flux-like: dual-stream blocks (joint attn, ff, ff_context), then single-stream blocks; video first,
        # text appended in every joint attention.
        block_groups=(BlockGroup("transformer_blocks", ("attn", "ff", "ff_context"), (SelfAttention("attn", "suffix"),)),
                      BlockGroup("single_transformer_blocks", ("attn", "proj_mlp", "proj_out"),
                                 (SelfAttention("attn", "suffix"),))),
        grid="3d", text_tokens="joint", pos_embed="rope", cfg="separate",
        techniques=("guidance", "block_cache"),
        why_not=(_MASKED_NOT_ATTENTION, *_VIDEO_DIT_NOT),
        notes="HunyuanVideo text-to-video (guidance-distilled: guidance_scale is an embedding, not CFG; true CFG, "
              "true_cfg_scale > 1 with a negative prompt, runs a separate negative call)",
    ),
    Family(
        name="hunyuan_video15", classes=("HunyuanVideo15Transformer3DModel",), kind="dit",
        denoiser_attr="transformer",
        # dual-stream blocks only: one joint attention over [video, text] (video first; the text is the
        # image-embedding, ByT5 and Qwen tokens), then the video and text feed-forwards
        block_groups=(BlockGroup("transformer_blocks", ("attn", "ff", "ff_context"),
                                 (SelfAttention("attn", "suffix"),)),),
        grid="3d", text_tokens="joint", pos_embed="rope", cfg="separate",
        techniques=("guidance", "block_cache"),
        why_not=(_MASKED_NOT_ATTENTION, *_VIDEO_DIT_NOT),
        notes="HunyuanVideo 1.5 text-to-video (CFG by the pipeline's guider: the cond and uncond calls run "
              "separately; its image-to-video pipeline calls the denoiser the same way, not tested here)",
    ),
    Family(
        name="ltx_video", classes=("LTXVideoTransformer3DModel",), kind="dit", denoiser_attr="transformer",
        # attn1: video self-attention (RoPE inside the processor, no mask); attn2: cross-attention to the
        # text; ff. Each block's adaLN (scale_shift_table + timestep) gates and residuals stay live.
        block_groups=(BlockGroup("transformer_blocks", ("attn1", "attn2", "ff"), (SelfAttention("attn1"),)),),
        grid="3d", token_grid="sizes", text_tokens="cross", pos_embed="rope", cfg="batched",
        techniques=("guidance", "block_cache", "attention"),
        why_not=_VIDEO_DIT_NOT,
        notes="LTX-Video 0.9.x text-to-video (tokens packed by the pipeline; the grid is the call's latent "
              "num_frames/height/width; batched CFG). The condition pipeline passes video_coords instead: no "
              "single token grid there for sparse attention",
    ),
    Family(
        name="ltx2", classes=("LTX2VideoTransformer3DModel",), kind="dit", denoiser_attr="transformer",
        # audio + video: each block runs video and audio self-attention, their text cross-attentions, the
        # audio-to-video and video-to-audio cross-attentions, then the two feed-forwards; every one is a
        # cacheable component (the block's adaLN gates and residuals stay live). Sparse attention: the video
        # self-attention only (the audio tokens are a 1D sequence).
        block_groups=(BlockGroup("transformer_blocks",
                                 ("attn1", "audio_attn1", "attn2", "audio_attn2", "audio_to_video_attn",
                                  "video_to_audio_attn", "ff", "audio_ff"), (SelfAttention("attn1"),)),),
        grid="3d", token_grid="sizes", text_tokens="cross", pos_embed="rope", cfg="batched", outputs=2,
        techniques=("guidance", "block_cache", "attention"),
        why_not=_VIDEO_DIT_NOT,
        notes="LTX-2 audio+video (batched CFG over both predictions; the STG and modality-isolation calls of "
              "a step run untouched by guidance). The IC-LoRA pipeline masks the video self-attention: sparse "
              "attention refuses it at the call",
    ),
    Family(
        name="anyflow_far", classes=("AnyFlowFARTransformer3DModel",), kind="dit",
        denoiser_attr="transformer", block_groups=_WAN_BLOCKS, grid="3d", patch_size=(1, 2, 2),
        text_tokens="cross", pos_embed="rope", cfg="separate", kv_cache="far", techniques=("kv_cache",),
        notes="AnyFlow-FAR chunk-wise autoregressive video (causal Wan 2.1 with a KV cache)",
    ),
    Family(
        name="skyreels_v2", classes=("SkyReelsV2Transformer3DModel",), kind="dit",
        denoiser_attr="transformer", block_groups=_WAN_BLOCKS, grid="3d", patch_size=(1, 2, 2),
        text_tokens="cross", pos_embed="rope", cfg="separate", kv_cache="skyreels", techniques=("kv_cache",),
        notes="SkyReels-V2 diffusion forcing (block-causal Wan-style video; finished frames re-run each step)",
    ),
)


def unwrap(module):
    """The module under a ``torch.compile`` wrapper (``OptimizedModule._orig_mod``)."""
    return getattr(module, "_orig_mod", module)


def family_of(denoiser: torch.nn.Module) -> Family | None:
    """The family row for this denoiser, matching its class or any base class by name."""
    names = [cls.__name__ for cls in type(unwrap(denoiser)).__mro__]
    for name in names:
        for fam in FAMILIES:
            if name in fam.classes:
                return fam
    return None


def find_denoiser(pipe) -> tuple[str, torch.nn.Module] | None:
    """The pipeline's denoiser as (attribute name, module): ``unet`` or ``transformer``."""
    for attr in ("unet", "transformer"):
        module = getattr(pipe, attr, None)
        if isinstance(module, torch.nn.Module):
            return attr, module
    return None


def find_denoisers(pipe, family: Family, attr: str, module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The denoiser and the family's further experts this pipeline holds (Wan 2.2's
    ``transformer_2``), as (attribute name, module), in the order they take turns."""
    found = [(attr, module)]
    for name in family.experts:
        other = getattr(pipe, name, None)
        if isinstance(other, torch.nn.Module) and all(other is not m for _, m in found):
            found.append((name, other))
    return found


def supported_summary() -> str:
    rows = [f"  {f.name:11s} {', '.join(f.classes)}: {', '.join(f.techniques)}" for f in FAMILIES]
    return "Supported denoisers and their techniques:\n" + "\n".join(rows)
