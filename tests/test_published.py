"""The published architectures (``published.py``) on the meta device: every technique finds its
targets on the real layout, and the presets' schedules resolve at the published step counts.

Expected counts are written from the models' published configs and architectures (block
counts, which SD3 block has no ``ff_context``, SD3.5 medium's 13 dual-attention blocks, the
UNets' skip connections), never computed by the code under test. Meta tensors hold no
storage, so even Wan 14B builds in seconds.
"""

import math

import pytest
import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.api import build_plan
from accelerate_diffusion.families import family_of
from accelerate_diffusion.macs import MacCounter
from accelerate_diffusion.meta import build_denoiser, meta_call_kwargs, meta_pipeline
from accelerate_diffusion.patches import deepcache
from accelerate_diffusion.presets import PRESETS
from accelerate_diffusion.published import PUBLISHED, get_published
from accelerate_diffusion.schedules.cache_schedule import ScheduleLayout
from accelerate_diffusion.schedules.heuristics import resolve_schedule

# model -> (family, blocks per block group, image self-attention modules, block-cache targets)
EXPECTED = {
    "sd15": ("unet", {}, 0, 0),
    "sd21": ("unet", {}, 0, 0),
    "sdxl": ("unet", {}, 0, 0),
    "pixart_alpha_512": ("pixart", {"transformer_blocks": 28}, 28, 28 * 3),
    "pixart_alpha_1024": ("pixart", {"transformer_blocks": 28}, 28, 28 * 3),
    "pixart_sigma": ("pixart", {"transformer_blocks": 28}, 28, 28 * 3),
    # SD3's last block is context_pre_only: no ff_context
    "sd3_medium": ("sd3", {"transformer_blocks": 24}, 24, 24 * 3 - 1),
    "sd35_medium": ("sd3", {"transformer_blocks": 24}, 24 + 13, 24 * 3 - 1),   # attn2 in blocks 0-12
    "sd35_large": ("sd3", {"transformer_blocks": 38}, 38, 38 * 3 - 1),
    "flux_dev": ("flux", {"transformer_blocks": 19, "single_transformer_blocks": 38}, 57, 57 * 3),
    "flux_schnell": ("flux", {"transformer_blocks": 19, "single_transformer_blocks": 38}, 57, 57 * 3),
    "wan21_1_3b": ("wan", {"blocks": 30}, 30, 30 * 3),
    "wan21_14b": ("wan", {"blocks": 40}, 40, 40 * 3),
    "wan22_a14b": ("wan", {"blocks": 40}, 40, 40 * 3),     # per expert: two Wan 2.1 14B transformers
    # Lumina 2: 26 joint blocks (attn, feed_forward); its 2 + 2 refiners are not in the table's blocks
    "lumina2": ("lumina2", {"layers": 26}, 26, 26 * 2),
    "sana_1600m": ("sana", {"transformer_blocks": 20}, 20, 20 * 3),
    "kolors": ("unet", {}, 0, 0),
    "chroma1_hd": ("chroma", {"transformer_blocks": 19, "single_transformer_blocks": 38}, 57, 57 * 3),
    # FLUX.2's single blocks: one fused attn (QKV + MLP in, attention + MLP out) per block
    "flux2_dev": ("flux2", {"transformer_blocks": 8, "single_transformer_blocks": 48}, 56, 8 * 3 + 48),
    "qwenimage": ("qwenimage", {"transformer_blocks": 60}, 60, 60 * 3),
    "cogvideox_5b": ("cogvideox", {"transformer_blocks": 42}, 42, 42 * 2),
    "hunyuan_video": ("hunyuan_video", {"transformer_blocks": 20, "single_transformer_blocks": 40}, 60, 60 * 3),
    "ltx_video_2b": ("ltx_video", {"transformer_blocks": 28}, 28, 28 * 3),
}
# text width the denoiser reads its embeddings with, per config key
TEXT_WIDTH = {"unet": "cross_attention_dim", "pixart": "caption_channels", "sd3": "joint_attention_dim",
              "flux": "joint_attention_dim", "wan": "text_dim", "lumina2": "cap_feat_dim", "sana": "caption_channels",
              "chroma": "joint_attention_dim", "flux2": "joint_attention_dim", "qwenimage": "joint_attention_dim",
              "cogvideox": "text_embed_dim", "hunyuan_video": "text_embed_dim", "ltx_video": "caption_channels"}

_built: dict = {}


def denoiser(name):
    if name not in _built:
        _built[name] = build_denoiser(name)
    return _built[name]


def test_every_published_model_is_covered():
    assert set(EXPECTED) == set(PUBLISHED)
    with pytest.raises(ValueError, match="model: unknown published model 'sd4'; allowed: sd15"):
        get_published("sd4")


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_builds_on_meta_with_its_family_and_blocks(name):
    model = denoiser(name)
    family_name, groups, attentions, _ = EXPECTED[name]
    assert all(p.device.type == "meta" for p in model.parameters())
    family = family_of(model)
    assert family.name == family_name
    for attr, n in groups.items():
        assert len(getattr(model, attr)) == n
    assert len(family.blocks(model)) == sum(groups.values())
    assert len(family.self_attentions(model)) == attentions


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_text_embeddings_match_the_denoiser(name):
    spec = get_published(name)
    config = denoiser(name).config
    family = EXPECTED[name][0]
    # Kolors: the UNet projects ChatGLM's states to its cross-attention width itself (encoder_hid_dim)
    assert spec.embeds["prompt_embeds"][1] == (config.get("encoder_hid_dim") or config[TEXT_WIDTH[family]])
    if "pooled_prompt_embeds" in spec.embeds:
        pooled = spec.embeds["pooled_prompt_embeds"][0]
        if family == "unet":   # SDXL: pooled text + 6 micro-conditions of addition_time_embed_dim
            assert pooled + 6 * config.addition_time_embed_dim == config.projection_class_embeddings_input_dim
        else:
            assert pooled == config.pooled_projection_dim


def test_wan_480p_token_grid():
    """81 frames at 832x480: 21 latent frames of 60 x 104, patch (1, 2, 2): 32,760 tokens."""
    model = denoiser("wan21_14b")
    latent = torch.empty(1, 16, 21, 60, 104, device="meta")
    assert family_of(model).token_grid_of(model, (latent,), {}) == (21, 30, 52)
    assert math.prod(family_of(model).token_grid_of(model, (latent,), {})) == 32760


@pytest.mark.parametrize("name, args, kwargs, grid", [
    # 49 frames at 720x480: 13 latent frames of 60 x 90, (B, F, C, H, W), patch 2
    ("cogvideox_5b", (torch.empty(1, 13, 16, 60, 90, device="meta"),), {}, (13, 30, 45)),
    # 161 frames at 704x512: 21 latent frames of 16 x 22 (VAE 8x in time, 32x in space), packed, patch 1
    ("ltx_video_2b", (torch.empty(1, 7392, 128, device="meta"),), {"num_frames": 21, "height": 16, "width": 22},
     (21, 16, 22)),
])
def test_video_token_grids_at_the_published_sizes(name, args, kwargs, grid):
    model = denoiser(name)
    assert family_of(model).token_grid_of(model, args, kwargs) == grid


# -- DeepCache on the real UNets --------------------------------------------------------------
# skip tensors: conv_in + every down resnet(+attention) layer and downsampler
SKIPS = {"sd15": 1 + 3 * 3 + 2, "sd21": 1 + 3 * 3 + 2, "sdxl": 1 + 2 * 3 + 2, "kolors": 1 + 2 * 3 + 2}


@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl", "kolors"])
def test_deepcache_branch_points_on_real_unets(name):
    layout = deepcache._layout(denoiser(name))
    assert layout.num_skips == SKIPS[name]
    assert layout.max_branch == SKIPS[name] - 1          # the mid block exists: every skip is a branch
    assert len(layout.up) == SKIPS[name]                 # each up layer consumes one skip


def test_deepcache_deep_modules_on_sd15():
    """Branch 0 caches everything but the last up layer; branch 2 (``quality``) keeps the first
    down block's two layers and the up layers that consume their skips."""
    unet = denoiser("sd15")
    layout = deepcache._layout(unet)
    deep0 = deepcache._deep_modules(unet, layout, 0)
    names0 = [n for n, _, _ in deep0]
    assert names0 == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "down_blocks.3", "mid_block",
                      "up_blocks.0", "up_blocks.1", "up_blocks.2",
                      "up_blocks.3.resnets.0", "up_blocks.3.attentions.0",
                      "up_blocks.3.resnets.1", "up_blocks.3.attentions.1"]
    assert [n for n, _, cut in deep0 if cut] == ["up_blocks.3.attentions.1"]
    deep2 = deepcache._deep_modules(unet, layout, 2)
    assert [n for n, _, _ in deep2] == ["down_blocks.0.downsamplers.0", "down_blocks.1", "down_blocks.2",
                                        "down_blocks.3", "mid_block", "up_blocks.0", "up_blocks.1",
                                        "up_blocks.2"]
    assert [n for n, _, cut in deep2 if cut] == ["up_blocks.2"]


def test_deepcache_deep_modules_on_kolors():
    """Kolors' UNet is SDXL's layout: three down blocks (the first without attention, two resnets and a
    downsampler each but the last), the mid block, three up blocks of three layers. Branch 0 caches all
    but the last up layer; branch 2 keeps down_blocks.0's two resnets and the up layers fed their skips."""
    unet = denoiser("kolors")
    layout = deepcache._layout(unet)
    deep0 = deepcache._deep_modules(unet, layout, 0)
    assert [n for n, _, _ in deep0] == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block",
                                        "up_blocks.0", "up_blocks.1", "up_blocks.2.resnets.0",
                                        "up_blocks.2.resnets.1"]
    assert [n for n, _, cut in deep0 if cut] == ["up_blocks.2.resnets.1"]
    deep2 = deepcache._deep_modules(unet, layout, 2)
    assert [n for n, _, _ in deep2] == ["down_blocks.0.downsamplers.0", "down_blocks.1", "down_blocks.2",
                                        "mid_block", "up_blocks.0", "up_blocks.1"]
    assert [n for n, _, cut in deep2 if cut] == ["up_blocks.1"]


# -- every preset on the real layout ----------------------------------------------------------
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_plans_and_schedules_resolve_at_published_steps(name, preset):
    spec = get_published(name)
    model = denoiser(name)
    family = family_of(model)
    plan = build_plan(family, model, preset, {})
    expected = set(PRESETS[preset].for_family(family)) & set(family.techniques)
    assert set(plan) == expected
    if "block_cache" in plan:
        layout = ScheduleLayout.of(family, model)
        sched = resolve_schedule(plan["block_cache"].schedule, layout, spec.steps)
        assert sched.recompute.shape == (spec.steps, sum(EXPECTED[name][1].values()), len(layout.components))
        first = int(str(plan["block_cache"].schedule).split("first=")[1].split(",")[0])
        assert sched.recompute[:first].all() and sched.recompute[-1].all()   # warm-up and last step full
        if spec.steps >= plan["block_cache"].min_steps:                       # FLUX.1-schnell's 4 steps: untouched
            assert not sched.recompute.all()                                  # and something is reused
    if "deepcache" in plan:
        config = plan["deepcache"]
        full = deepcache.full_step_indices(config, spec.steps)
        assert full[0] == 0 and full == sorted(set(full)) and full[-1] < spec.steps
        assert math.ceil(spec.steps / config.cache_interval) <= len(full) < spec.steps
        assert set(range(config.always_full_start)) <= set(full)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_techniques_find_their_targets_on_the_real_layout(name):
    """``max`` (and RAS, attention on the DiTs that support them) applied to the meta pipeline:
    nothing skipped, each technique on the modules the architecture has."""
    pipe = meta_pipeline(name)
    family = family_of(pipe.unet if hasattr(pipe, "unet") else pipe.transformer)
    overrides = {}
    if "attention" in family.techniques:
        overrides["attention"] = {"window": 0.5}
    accelerate(pipe, "max", **overrides)
    experts = 2 if get_published(name).boundary_ratio is not None else 1     # Wan 2.2 A14B: each expert patched
    try:
        acc = pipe.acceleration
        assert acc.skipped == []
        targets = {h.technique: h.targets for h in acc.handles}
        _, _, attentions, cached = EXPECTED[name]
        if "block_cache" in targets:
            assert len(targets["block_cache"]) == experts * cached
        if "attention" in targets:
            assert len(targets["attention"]) == experts * attentions
        if family.kind == "unet":
            assert targets["deepcache"][0] == "down_blocks.0"     # max: branch 0, the whole down path
    finally:
        pipe.acceleration.remove()
    if family.ras is not None:
        accelerate(pipe, "off", ras=True)
        try:
            assert pipe.acceleration.skipped == []
            ras_targets = pipe.acceleration.handles[0].targets
            assert len(ras_targets) == 2 + attentions              # embed, each attention's K/V, output
        finally:
            pipe.acceleration.remove()


# -- a generation on meta counts what the pipeline runs ----------------------------------------
@pytest.mark.slow
def test_meta_generation_counts_every_denoiser_call():
    """PixArt-α 512, CFG batched: `off` at 3 steps runs 3 calls of batch 2, each counted as one
    direct call of the denoiser on the same shapes; `max` at 8 steps (its min_steps) runs 8 calls
    with about half the MACs of 8 full ones."""
    name = "pixart_alpha_512"
    pipe = meta_pipeline(name)
    counted = {}
    for preset, steps in (("off", 3), ("max", 8)):
        accelerate(pipe, preset, measure_macs=True)
        try:
            pipe(**meta_call_kwargs(name, steps=steps))
            counted[preset] = (pipe.acceleration.state.macs, pipe.acceleration.state.counters["denoiser_calls"],
                               sorted(h.technique for h in pipe.acceleration.handles))
        finally:
            pipe.acceleration.remove()
    with MacCounter() as one:
        pipe.transformer(torch.zeros(2, 4, 64, 64, device="meta"), timestep=torch.zeros(2, device="meta"),
                         encoder_hidden_states=torch.zeros(2, 120, 4096, device="meta"),
                         encoder_attention_mask=torch.ones(2, 120, device="meta"),
                         added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)
    assert counted["off"][:2] == (3 * one.macs, 3)
    assert counted["max"][1:] == (8, ["block_cache", "guidance"])
    assert counted["max"][0] < 0.55 * 8 * one.macs     # half the steps without CFG, blocks reused


# -- Wan 2.2 A14B: two experts switched at the boundary ------------------------------------------
def test_wan22_meta_pipeline_holds_both_experts_and_the_boundary():
    """Two distinct 14B experts on meta (40 blocks each) and boundary_ratio 0.875; every technique of
    ``max`` is installed on both (the second expert's targets are named ``transformer_2.*``)."""
    pipe = meta_pipeline("wan22_a14b")
    assert pipe.config.boundary_ratio == 0.875
    assert pipe.transformer is not pipe.transformer_2
    for expert in (pipe.transformer, pipe.transformer_2):
        assert family_of(expert).name == "wan" and len(expert.blocks) == 40
        assert all(p.device.type == "meta" for p in expert.parameters())
    assert meta_call_kwargs("wan22_a14b")["guidance_scale_2"] == 3.0
    accelerate(pipe, "max", attention={"window": 0.5})
    try:
        for h in pipe.acceleration.handles:
            if h.technique in ("block_cache", "attention"):
                second = [t for t in h.targets if t.startswith("transformer_2.")]
                assert len(second) == len(h.targets) // 2 > 0
    finally:
        pipe.acceleration.remove()


@pytest.mark.slow
def test_wan22_generation_calls_each_expert_on_its_side_of_the_boundary():
    """8 steps of UniPC with flow_shift 3: sigma_k = 0.999 k / 8 shifted to 3 s / (1 + 2 s) gives the
    timesteps 999.7, 954.2, 899.6, 833.0, 749.6, ... (x 1000): 3 of them at or above 875. With CFG
    as two calls per step the high-noise expert runs 6 calls and the low-noise one 10, and `off`
    counts 16 calls of one expert's MACs."""
    name = "wan22_a14b"
    pipe = meta_pipeline(name)
    calls = {"transformer": 0, "transformer_2": 0}
    hooks = [getattr(pipe, attr).register_forward_pre_hook(lambda m, a, attr=attr: calls.__setitem__(attr, calls[attr] + 1))
             for attr in calls]
    size = dict(height=64, width=64, num_frames=5)       # latents 2 x 8 x 8: the split does not depend on size
    accelerate(pipe, "off", measure_macs=True)
    try:
        pipe(**meta_call_kwargs(name, steps=8, **size))
        macs, counted = pipe.acceleration.state.macs, pipe.acceleration.state.counters["denoiser_calls"]
    finally:
        pipe.acceleration.remove()
        for h in hooks:
            h.remove()
    assert calls == {"transformer": 6, "transformer_2": 10}
    assert counted == 16
    with MacCounter() as one:
        pipe.transformer(torch.zeros(1, 16, 2, 8, 8, device="meta"), timestep=torch.zeros(1, device="meta"),
                         encoder_hidden_states=torch.zeros(1, 512, 4096, device="meta"), return_dict=False)
    assert macs == 16 * one.macs
