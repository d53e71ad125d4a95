"""Image families added from the family table alone: Chroma, Flux.2, Qwen-Image 2.1. Tiny configs of
the real classes; every preset and `remove()`: test_families; `off` exactness: test_foundation."""

import contextlib

import pytest
import torch

from accelerate_diffusion import accelerate, family_of
from accelerate_diffusion.testing import call_kwargs, run, run_counted

STEPS = 8          # presets leave fewer steps untouched (min_steps)
IMAGE_FAMILIES = ["chroma", "flux2", "qwenimage21"]


def _macs(pipe, name, **acceleration):
    return run_counted(pipe, call_kwargs(name, steps=STEPS), **acceleration)


@pytest.mark.parametrize("name", IMAGE_FAMILIES)
def test_block_cache_and_guidance_cut_macs(pipelines, name):
    pipe = pipelines(name)
    reference, full = _macs(pipe, name)
    out, same = _macs(pipe, name, block_cache={"schedule": "full"})      # no reuse planned: the original
    assert torch.equal(out, reference) and same == full
    out, cached = _macs(pipe, name, block_cache={"schedule": "fora:2"})
    assert cached < 0.8 * full and torch.isfinite(out).all() and not torch.equal(out, reference)
    # true CFG as a separate call: truncation at half the steps skips half the negative calls
    out, halved = _macs(pipe, name, guidance={"mode": "truncation", "cfg_fraction": 0.5})
    assert halved == pytest.approx(0.75 * full, rel=0.02) and torch.isfinite(out).all()


# -- Chroma -------------------------------------------------------------------------------------------
def test_chroma_row_matches_the_real_class(pipelines):
    pipe = pipelines("chroma")
    family = family_of(pipe.transformer)
    assert family.name == "chroma" and family.cfg == "separate"
    blocks = family.blocks(pipe.transformer)
    config = pipe.transformer.config
    assert len(blocks) == config.num_layers + config.num_single_layers
    # the token grid is read from the call's img_ids: one token per 2x2 latent patch
    accelerate(pipe, "off", ras=True)
    run(pipe, "chroma", steps=2)
    grid = pipe.acceleration.stats()["ras"]["grid"]
    pipe.acceleration.remove()
    side = call_kwargs("chroma")["height"] // pipe.vae_scale_factor // 2     # latent pixels, packed 2x2
    assert grid == (side, side)


def test_chroma_guidance_follows_its_separate_negative_call(pipelines):
    pipe = pipelines("chroma")
    accelerate(pipe, "off", guidance={"mode": "truncation", "cfg_fraction": 0.5})
    run(pipe, "chroma", steps=STEPS)
    counters = pipe.acceleration.report().generation["counters"]
    assert counters["guidance_nfe"] == STEPS + STEPS // 2 and counters["guidance_nfe_saved"] == STEPS // 2
    # guidance_scale 1: the pipeline runs no CFG and guidance says so
    run(pipe, "chroma", steps=STEPS, guidance_scale=1.0)
    assert pipe.acceleration.stats()["guidance"]["status"].startswith("inactive")
    pipe.acceleration.remove()


# -- Flux.2 (klein: real CFG as a separate call; single-stream "parallel" blocks) ---------------------
def test_flux2_row_matches_the_real_class(pipelines):
    pipe = pipelines("flux2")
    family = family_of(pipe.transformer)
    assert family.name == "flux2" and family.cfg == "separate"
    config = pipe.transformer.config
    assert len(family.blocks(pipe.transformer)) == config.num_layers + config.num_single_layers
    single = pipe.transformer.single_transformer_blocks[0]
    # the single block's attn holds the fused QKV + MLP-in projection: all its work but the norm
    assert hasattr(single.attn, "to_qkv_mlp_proj") and set(dict(single.named_children())) == {"norm", "attn"}


def test_flux2_edit_call_with_a_reference_image_has_no_single_grid(pipelines):
    """An edit call puts the reference image's tokens (ids with t = 10) after the noise tokens."""
    pipe = pipelines("flux2")
    side, channels = 4, pipe.transformer.config.in_channels
    ids = pipe._prepare_latent_ids(torch.zeros(1, channels, side, side))
    reference_ids = ids.clone()
    reference_ids[..., 0] = 10
    text = torch.zeros(1, 8, pipe.transformer.config.joint_attention_dim)
    call = dict(hidden_states=torch.randn(1, 2 * side * side, channels), encoder_hidden_states=text,
                timestep=torch.ones(1), img_ids=torch.cat([ids, reference_ids], dim=1),
                txt_ids=pipe._prepare_text_ids(text), return_dict=False)
    accelerate(pipe, "off", block_cache={"schedule": "fora:2"})   # caching needs no grid: it runs
    pipe.transformer(**call)
    pipe.acceleration.remove()
    accelerate(pipe, "off", attention={"window": 0.5})
    with pytest.raises(ValueError, match="2 images in one sequence"):
        pipe.transformer(**call)
    pipe.acceleration.remove()


# -- Qwen-Image 2.1 (its modular pipeline's denoising part, driven with prompt embeddings) -------------
def test_qwenimage21_row_matches_the_real_class(pipelines):
    pipe = pipelines("qwenimage21")
    family = family_of(pipe.transformer)
    assert family.name == "qwenimage21" and family.cfg == "separate"
    blocks = family.blocks(pipe.transformer)
    assert len(blocks) == pipe.transformer.config.num_layers
    # single-stream blocks: one attention and one feed-forward, no text-stream modules (unlike Qwen-Image)
    assert all(not hasattr(block, "txt_mlp") for _, block in blocks)


def test_qwenimage21_block_cache_with_and_without_the_models_prefix_kv_cache(pipelines):
    """With use_kv_cache (the default), the first step runs text + image tokens and later steps the
    image tokens only: a reuse planned on the first step's outputs is a cache miss, recomputed."""
    pipe = pipelines("qwenimage21")
    for kv_cache in (True, False):
        reference, full = run_counted(pipe, call_kwargs("qwenimage21", steps=STEPS, use_kv_cache=kv_cache))
        accelerate(pipe, "off", measure_macs=True, block_cache={"schedule": "fora:2,first=1"})
        out = run(pipe, "qwenimage21", steps=STEPS, use_kv_cache=kv_cache)
        generation = pipe.acceleration.report().generation
        pipe.acceleration.remove()
        counters = generation["counters"]
        assert torch.isfinite(out).all() and out.shape == reference.shape and generation["macs"] < 0.8 * full
        assert counters["components_reused"] > 0
        assert ("components_cache_miss" in counters) == kv_cache


def test_qwenimage21_guidance_follows_its_guider(pipelines):
    from diffusers import ClassifierFreeGuidance

    pipe = pipelines("qwenimage21")
    accelerate(pipe, "off", guidance={"mode": "truncation", "cfg_fraction": 0.5})
    ran, current = [], []      # the guider's context name of every call the model really ran
    original = pipe.transformer.cache_context

    @contextlib.contextmanager
    def recording(name, **kwargs):
        current[:] = [name]
        with original(name, **kwargs):
            yield

    pipe.transformer.cache_context = recording
    handle = pipe.transformer.img_in.register_forward_pre_hook(lambda *_: ran.append(current[0]))
    try:
        run(pipe, "qwenimage21", steps=STEPS)
    finally:
        handle.remove()
        del pipe.transformer.cache_context
    counters = pipe.acceleration.report().generation["counters"]
    assert counters["guidance_nfe_saved"] == STEPS // 2
    # the skipped calls are the guider's unconditional ones, told by its context name
    assert ran == ["pred_cond", "pred_uncond"] * (STEPS // 2) + ["pred_cond"] * (STEPS // 2)
    guider = pipe.guider
    pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=1.0))    # no CFG: nothing to cut
    try:
        run(pipe, "qwenimage21", steps=STEPS)
        assert pipe.acceleration.stats()["guidance"]["status"].startswith("inactive")
    finally:
        pipe.update_components(guider=guider)
        pipe.acceleration.remove()


