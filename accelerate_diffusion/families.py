"""Model knowledge as data: one row per supported denoiser class.

Support is decided by the denoiser's class (and config), so a tiny random-weight
``PixArtTransformer2DModel`` exercises the same code path as the real checkpoint.
Adding a family is a new row here, plus at most a small adapter in a patch module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Every technique the library knows, outermost first: guidance decides which half of the
# CFG batch runs, RAS which tokens, caching which blocks, attention how the blocks attend.
# The API applies them innermost first, so each wraps the ones after it.
TECHNIQUES = ("guidance", "ras", "deepcache", "block_cache", "attention", "kv_cache")


@dataclass(frozen=True)
class BlockGroup:
    """A ``ModuleList`` of blocks in the denoiser and the cacheable sub-modules of each block."""

    attr: str                     # attribute path on the denoiser, e.g. "transformer_blocks"
    components: tuple[str, ...]   # sub-module names, e.g. ("attn1", "attn2", "ff")


@dataclass(frozen=True)
class Family:
    name: str
    classes: tuple[str, ...]              # denoiser class names (matched along the MRO)
    kind: str                             # "unet" | "dit"
    denoiser_attr: str                    # pipeline attribute holding the denoiser
    block_groups: tuple[BlockGroup, ...] = ()
    grid: str = "2d"                      # "2d" image tokens or "3d" video tokens
    patch_size: tuple[int, ...] = ()      # token patch on the latent grid (t, h, w) or (h, w)
    text_tokens: str = "cross"            # "cross" (cross-attention) | "joint" (concatenated)
    pos_embed: str = "none"               # "absolute" | "rope" | "none" (UNet)
    techniques: tuple[str, ...] = field(default=("guidance",))
    notes: str = ""

    def blocks(self, denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """All blocks of the denoiser as (qualified name, module), in execution order."""
        out = []
        for group in self.block_groups:
            for i, block in enumerate(getattr(denoiser, group.attr)):
                out.append((f"{group.attr}.{i}", block))
        return out


FAMILIES: tuple[Family, ...] = (
    Family(
        name="unet", classes=("UNet2DConditionModel",), kind="unet", denoiser_attr="unet",
        techniques=("guidance", "deepcache"),
        notes="SD 1.x/2.x, SDXL and their img2img/inpaint/ControlNet variants",
    ),
    Family(
        name="pixart", classes=("PixArtTransformer2DModel",), kind="dit", denoiser_attr="transformer",
        block_groups=(BlockGroup("transformer_blocks", ("attn1", "attn2", "ff")),),
        patch_size=(2, 2), text_tokens="cross", pos_embed="absolute",
        techniques=("guidance", "block_cache", "attention"),
        notes="PixArt-alpha / PixArt-sigma",
    ),
    Family(
        name="sd3", classes=("SD3Transformer2DModel",), kind="dit", denoiser_attr="transformer",
        block_groups=(BlockGroup("transformer_blocks", ("attn", "ff", "ff_context")),),
        patch_size=(2, 2), text_tokens="joint", pos_embed="absolute",
        techniques=("guidance", "ras", "block_cache", "attention"),
        notes="SD3 / SD3.5 (MMDiT)",
    ),
    Family(
        name="flux", classes=("FluxTransformer2DModel",), kind="dit", denoiser_attr="transformer",
        block_groups=(BlockGroup("transformer_blocks", ("attn", "ff", "ff_context")),
                      BlockGroup("single_transformer_blocks", ("attn", "proj_mlp", "proj_out"))),
        patch_size=(2, 2), text_tokens="joint", pos_embed="rope",
        techniques=("guidance", "ras", "block_cache", "attention"),
        notes="FLUX.1 (latents packed 2x2 by the pipeline: one token per 2x2 latent patch)",
    ),
    Family(
        name="wan", classes=("WanTransformer3DModel",), kind="dit", denoiser_attr="transformer",
        block_groups=(BlockGroup("blocks", ("attn1", "attn2", "ffn")),),
        grid="3d", patch_size=(1, 2, 2), text_tokens="cross", pos_embed="rope",
        techniques=("guidance", "block_cache", "attention"),
        notes="Wan 2.x text-to-video",
    ),
    Family(
        name="anyflow_far", classes=("AnyFlowFARTransformer3DModel",), kind="dit",
        denoiser_attr="transformer",
        block_groups=(BlockGroup("blocks", ("attn1", "attn2", "ffn")),),
        grid="3d", patch_size=(1, 2, 2), text_tokens="cross", pos_embed="rope",
        techniques=("kv_cache",),
        notes="AnyFlow-FAR chunk-wise autoregressive video (causal Wan 2.1 with a KV cache)",
    ),
    Family(
        name="skyreels_v2", classes=("SkyReelsV2Transformer3DModel",), kind="dit",
        denoiser_attr="transformer",
        block_groups=(BlockGroup("blocks", ("attn1", "attn2", "ffn")),),
        grid="3d", patch_size=(1, 2, 2), text_tokens="cross", pos_embed="rope",
        techniques=("kv_cache",),
        notes="SkyReels-V2 diffusion forcing (block-causal Wan-style video; finished frames re-run each step)",
    ),
)


def family_of(denoiser: torch.nn.Module) -> Family | None:
    """The family row for this denoiser, matching its class or any base class by name."""
    names = [cls.__name__ for cls in type(denoiser).__mro__]
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


def supported_summary() -> str:
    rows = [f"  {f.name:8s} {', '.join(f.classes)}: {', '.join(f.techniques)}" for f in FAMILIES]
    return "Supported denoisers and their techniques:\n" + "\n".join(rows)
