"""Families added from the family table alone: Qwen-Image (true CFG as separate calls, joint
text-first attention, tokens packed 2x2) and Wan 2.2 (two experts taking turns). Tiny configs of
the real classes; `off` exactness and `remove()` are also covered by test_foundation's PIPELINES."""

import math

import pytest
import torch

from accelerate_diffusion import PRESETS, accelerate, family_of
from accelerate_diffusion.testing import call_kwargs, run, run_counted, surface

STEPS = 8          # presets leave fewer steps untouched (min_steps)


def _macs(pipe, name, **acceleration):
    return run_counted(pipe, call_kwargs(name, steps=STEPS), **acceleration)


@pytest.mark.parametrize("name", ["qwenimage", "cogvideox", "hunyuan_video", "wan_vace", "lumina2", "sana",
                                  "chroma", "flux2", "qwenimage21", "ltx_video", "hunyuan_video15", "ltx2"])
@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "off"])
def test_every_preset_runs_and_remove_is_exact(pipelines, name, preset):
    pipe = pipelines(name)
    reference = run(pipe, name, steps=12)        # quality keeps its first 7 steps full
    before = surface(pipe)
    accelerate(pipe, preset)
    out = run(pipe, name, steps=12)
    report = pipe.acceleration.report()
    assert torch.isfinite(out).all() and out.shape == reference.shape
    assert "block_cache" in {item["technique"] for item in report.applied} and not report.skipped
    assert report.generation["counters"]["components_reused"] > 0
    # the CFG layout the clock saw is the row's (CogVideoX: from the flag it gave encode_prompt)
    assert report.generation["cfg_layout"] == family_of(pipe.transformer).cfg
    pipe.acceleration.remove()
    assert surface(pipe) == before
    assert torch.equal(run(pipe, name, steps=12), reference)


def test_the_table_says_why_each_technique_does_not_apply():
    from accelerate_diffusion.families import FAMILIES, TECHNIQUES

    for family in FAMILIES:
        named = [t for t, _ in family.why_not]
        assert all(t in TECHNIQUES and t not in family.techniques for t in named), family.name
        if not family.kv_cache:        # the AR video rows (kv_cache only) do not list theirs yet
            assert sorted(named) == sorted(set(TECHNIQUES) - set(family.techniques)), family.name


# -- Qwen-Image ---------------------------------------------------------------------------------------
def test_qwenimage_row_matches_the_real_class(pipelines):
    pipe = pipelines("qwenimage")
    family = family_of(pipe.transformer)
    assert family.name == "qwenimage" and family.cfg == "separate"
    blocks = family.blocks(pipe.transformer)
    assert len(blocks) == pipe.transformer.config.num_layers
    for _, block in blocks:
        for component in family.block_groups[0].components:
            assert isinstance(getattr(block, component), torch.nn.Module)
    # the token grid is read from the call's img_shapes (packed tokens: no spatial axes to read)
    h = call_kwargs("qwenimage")["height"] // 16
    assert family.token_grid_of(pipe.transformer, (), {"img_shapes": [[(1, h, h)]]}) == (h, h)
    with pytest.raises(ValueError, match="2 images in one sequence"):
        family.token_grid_of(pipe.transformer, (), {"img_shapes": [[(1, h, h), (1, h, h)]]})


def test_qwenimage_block_cache_skips_work(pipelines):
    pipe = pipelines("qwenimage")
    reference, full = _macs(pipe, "qwenimage")
    out, cached = _macs(pipe, "qwenimage", block_cache={"schedule": "fora:2"})
    assert cached < 0.75 * full and not torch.equal(out, reference)
    # "full" plans no reuse: exactly the original, at the original MACs
    out, same = _macs(pipe, "qwenimage", block_cache={"schedule": "full"})
    assert torch.equal(out, reference) and same == full


def test_qwenimage_guidance_skips_the_separate_negative_call(pipelines):
    pipe = pipelines("qwenimage")
    accelerate(pipe, "off", guidance={"mode": "truncation", "cfg_fraction": 0.5})
    run(pipe, "qwenimage", steps=STEPS)
    generation = pipe.acceleration.report().generation
    stats = pipe.acceleration.stats()["guidance"]
    pipe.acceleration.remove()
    assert generation["cfg_layout"] == "separate"
    counters = generation["counters"]
    assert counters["guidance_nfe"] == STEPS + STEPS // 2           # cond every step, uncond in the first half
    assert counters["guidance_nfe_saved"] == STEPS // 2
    assert stats["status"] == "active (truncation, separate CFG)"
    # without a negative prompt the pipeline runs no CFG and guidance says so
    accelerate(pipe, "off", guidance={"mode": "truncation"})
    run(pipe, "qwenimage", steps=STEPS, negative_prompt=None)
    assert pipe.acceleration.stats()["guidance"]["status"].startswith("inactive")
    pipe.acceleration.remove()


# the side of the square image-token grid of each call: Qwen-Image 16 px a token; FLUX.2 reads (t, h, w, l) ids
# of one token per 2x2 latent patch
GRID_SIDE = {"qwenimage": lambda pipe: call_kwargs("qwenimage")["height"] // 16,
             "flux2": lambda pipe: call_kwargs("flux2")["height"] // pipe.vae_scale_factor // 2}


@pytest.mark.parametrize("name", sorted(GRID_SIDE))
def test_sparse_attention_on_the_image_token_grid(pipelines, name):
    pipe = pipelines(name)
    reference = run(pipe, name, steps=2)
    accelerate(pipe, "off", attention={"window": 1.0})           # a dense mask: same result
    assert torch.allclose(run(pipe, name, steps=2), reference, atol=1e-5)
    pipe.acceleration.remove()
    accelerate(pipe, "off", attention={"window": 0.5})
    out = run(pipe, name, steps=2)
    stats = pipe.acceleration.stats()["attention"]
    pipe.acceleration.remove()
    side = GRID_SIDE[name](pipe)
    assert stats["token grid"] == (side, side) and 0 < stats["mean attention density"] < 1
    assert torch.isfinite(out).all() and not torch.equal(out, reference)


def _edit_loop(pipe, steps=STEPS, tokens=4):
    """The Qwen-Image edit pipelines' denoising loop (pipeline_qwenimage_edit.py), driven by hand:
    the noise tokens and the reference image's tokens in one sequence, img_shapes listing both, true
    CFG as a separate call, only the noise tokens' prediction kept. (The edit pipeline itself resizes
    its reference image to 1024x1024: 4096 reference tokens, too many for a CPU test.)"""
    g = torch.Generator().manual_seed(0)
    n = tokens * tokens
    latents, reference = torch.randn(1, n, 64, generator=g), torch.randn(1, n, 64, generator=g)
    cond, cond_mask = pipe.encode_prompt("make the circle blue", device="cpu")
    neg, neg_mask = pipe.encode_prompt(" ", device="cpu")
    shapes = [[(1, tokens, tokens), (1, tokens, tokens)]]
    pipe.scheduler.set_timesteps(steps)
    pipe._num_timesteps = steps
    for t in pipe.scheduler.timesteps:
        x, timestep = torch.cat([latents, reference], dim=1), t.expand(1) / 1000
        preds = []
        for name, embeds, mask in (("cond", cond, cond_mask), ("uncond", neg, neg_mask)):
            with pipe.transformer.cache_context(name):
                out = pipe.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=embeds,
                                       encoder_hidden_states_mask=mask, img_shapes=shapes, return_dict=False)[0]
            preds.append(out[:, :n])
        latents = pipe.scheduler.step(preds[1] + 4.0 * (preds[0] - preds[1]), t, latents, return_dict=False)[0]
    return latents


def test_qwenimage_edit_call_pattern(pipelines):
    pipe = pipelines("qwenimage")
    with torch.no_grad():
        reference = _edit_loop(pipe)
        before = surface(pipe)
        accelerate(pipe, "off")
        assert torch.equal(_edit_loop(pipe), reference)
        accelerate(pipe, "fast")
        out = _edit_loop(pipe)
        counters = pipe.acceleration.report().generation["counters"]
        assert torch.isfinite(out).all() and not torch.equal(out, reference)
        assert counters["components_reused"] > 0 and counters["guidance_nfe_saved"] == STEPS // 2
        pipe.acceleration.remove()
        assert surface(pipe) == before and torch.equal(_edit_loop(pipe), reference)
        # sparse attention needs one token grid: two images in one sequence is refused, loudly
        accelerate(pipe, "off", attention={"window": 0.5})
        with pytest.raises(ValueError, match="2 images in one sequence"):
            _edit_loop(pipe, steps=1)
        pipe.acceleration.remove()


@pytest.mark.parametrize("name, technique, reason", [
    ("chroma", "attention", "padding mask"),
    ("flux2", "ras", "to_qkv_mlp_proj"),
    ("qwenimage21", "attention", "block-causal"),
    ("ltx_video", "deepcache", "UNet"),
    ("hunyuan_video15", "attention", "padding mask"),
])
def test_a_refusal_quotes_the_family_reason_and_changes_nothing(pipelines, name, technique, reason):
    pipe = pipelines(name)
    with pytest.raises(ValueError, match=f"{technique}: does not apply to the {name} family .*{reason}"):
        accelerate(pipe, "off", **{technique: True})
    assert not hasattr(pipe, "acceleration")


def test_qwenimage_says_why_a_technique_does_not_apply(pipelines):
    pipe = pipelines("qwenimage")
    with pytest.raises(ValueError, match="ras: does not apply to the qwenimage family .*double-stream"):
        accelerate(pipe, "off", ras=True)
    assert not hasattr(pipe, "acceleration")
    assert math.isfinite(float(run(pipe, "qwenimage", steps=1).abs().mean()))


# -- Wan 2.2: two experts taking turns ---------------------------------------------------------------
def _runs_per_step(pipe, attr):
    """Steps at which each block's self-attention of ``pipe.<attr>`` really ran (not reused)."""
    seen, handles = [], []
    state = pipe.acceleration.state
    for i, block in enumerate(getattr(pipe, attr).blocks):
        handles.append(block.attn1.to_q.register_forward_pre_hook(
            lambda mod, args, i=i: seen.append((state.step, i))))
    return seen, handles


def test_wan22_both_experts_are_found_and_counted(pipelines):
    pipe = pipelines("wan22")
    assert pipe.transformer_2 is not None and pipe.transformer_2 is not pipe.transformer
    accelerate(pipe, "off", measure_macs=True)
    run(pipe, "wan22", steps=STEPS)
    acc = pipe.acceleration
    starts, calls = dict(acc.state.expert_start), acc.state.counters["denoiser_calls"]
    acc.remove()
    assert [attr for attr, _ in acc.denoisers] == ["transformer", "transformer_2"]
    # the tiny pipeline's 8 flow-matching timesteps: 1000, 968, 926 at or above 0.875 * 1000
    pipe.scheduler.set_timesteps(STEPS)
    high = int((pipe.scheduler.timesteps >= 875).sum())
    assert high == 3 and starts == {0: 0, 1: high}
    assert calls == 2 * STEPS          # cond + uncond at every step, both experts counted


def test_wan22_fast_preset_runs_on_both_experts_and_remove_is_exact(pipelines):
    pipe = pipelines("wan22")
    reference = run(pipe, "wan22", steps=STEPS)
    before = surface(pipe)
    accelerate(pipe, "fast")
    out = run(pipe, "wan22", steps=STEPS)
    report = pipe.acceleration.report()
    targets = {item["technique"]: item["targets"] for item in report.applied}
    assert torch.isfinite(out).all() and not torch.equal(out, reference)
    assert targets["guidance"] == ["transformer", "transformer_2"]
    assert any(t.startswith("transformer_2.blocks.") for t in targets["block_cache"])
    # truncation at half the steps: the uncond calls of steps 4-7 (all the second expert's) are skipped
    assert report.generation["counters"]["guidance_nfe_saved"] == STEPS // 2
    pipe.acceleration.remove()
    assert surface(pipe) == before
    assert torch.equal(run(pipe, "wan22", steps=STEPS), reference)


def test_wan22_second_expert_starts_with_a_full_step_and_never_reuses_the_first(pipelines):
    pipe = pipelines("wan22")
    accelerate(pipe, "off", block_cache={"schedule": "fora:2"})      # even steps recompute
    first, h1 = _runs_per_step(pipe, "transformer")
    second, h2 = _runs_per_step(pipe, "transformer_2")
    try:
        out = run(pipe, "wan22", steps=STEPS, guidance_scale=1.0)
        counters = pipe.acceleration.report().generation["counters"]
    finally:
        for h in h1 + h2:
            h.remove()
        pipe.acceleration.remove()
    blocks = len(pipe.transformer.blocks)
    assert torch.isfinite(out).all()
    # expert 1 runs steps 0-2, expert 2 steps 3-7. Step 3 (odd: a reuse step of fora:2) is expert 2's
    # first: a full compute, as its cache is empty; it never gets expert 1's step-2 outputs
    assert sorted(first) == [(s, b) for s in (0, 2) for b in range(blocks)]
    assert sorted(second) == [(s, b) for s in (3, 4, 6) for b in range(blocks)]
    assert "components_cache_miss" not in counters                   # no reuse planned on an empty cache
    assert counters["components_reused"] == 3 * blocks * 3           # steps 1, 5, 7 x blocks x (attn1, attn2, ffn)


def test_wan22_block_cache_cuts_macs_on_both_experts(pipelines):
    pipe = pipelines("wan22")
    reference, full = _macs(pipe, "wan22")
    out, same = _macs(pipe, "wan22", block_cache={"schedule": "full"})
    assert torch.equal(out, reference) and same == full
    out, cached = _macs(pipe, "wan22", block_cache={"schedule": "fora:2"})
    assert cached < 0.8 * full and torch.isfinite(out).all()      # 3 of 8 steps reuse the blocks


# -- HunyuanVideo: guidance-distilled, true CFG as a separate call, Flux-like blocks ----------------
def test_hunyuan_video_caches_both_block_kinds_and_skips_true_cfg_calls(pipelines):
    pipe = pipelines("hunyuan_video")
    reference, full = _macs(pipe, "hunyuan_video")
    _, cached = _macs(pipe, "hunyuan_video", block_cache={"schedule": "fora:2"})
    assert cached < 0.75 * full
    accelerate(pipe, "fast")
    run(pipe, "hunyuan_video", steps=STEPS)
    report = pipe.acceleration.report()
    targets = {item["technique"]: item["targets"] for item in report.applied}["block_cache"]
    assert {t.split(".")[0] for t in targets} == {"transformer_blocks", "single_transformer_blocks"}
    assert report.generation["cfg_layout"] == "separate"
    assert report.generation["counters"]["guidance_nfe_saved"] == STEPS // 2
    # the distilled model's usual call: no negative prompt, guidance_scale is an embedding: no CFG to cut
    run(pipe, "hunyuan_video", steps=STEPS, negative_prompt=None, true_cfg_scale=1.0)
    assert pipe.acceleration.stats()["guidance"]["status"].startswith("inactive")
    pipe.acceleration.remove()
    with pytest.raises(ValueError, match="attention: does not apply to the hunyuan_video family .*padding mask"):
        accelerate(pipe, "off", attention=True)


# -- Wan VACE: control blocks beside the main ones --------------------------------------------------
def test_wan_vace_caches_and_sparsifies_both_block_groups(pipelines):
    pipe = pipelines("wan_vace")
    reference, full = _macs(pipe, "wan_vace")
    _, cached = _macs(pipe, "wan_vace", block_cache={"schedule": "fora:2"})
    assert cached < 0.8 * full
    accelerate(pipe, "off", block_cache={"schedule": "fora:2"}, attention={"window": 0.5})
    run(pipe, "wan_vace", steps=STEPS)
    targets = {item["technique"]: item["targets"] for item in pipe.acceleration.report().applied}
    counters = pipe.acceleration.report().generation["counters"]
    pipe.acceleration.remove()
    assert {t.split(".")[0] for t in targets["block_cache"]} == {"vace_blocks", "blocks"}
    assert {t.split(".")[0] for t in targets["attention"]} == {"vace_blocks", "blocks"}
    assert counters["attention_sparse_calls"] > 0
