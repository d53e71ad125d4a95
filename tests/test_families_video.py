"""Video families added from the family table alone: LTX-Video (batched CFG, tokens packed by the
pipeline, the grid given as the call's latent sizes), HunyuanVideo 1.5 and LTX-2. Tiny configs of the
real classes; `off` exactness and `remove()` on the whole pipeline are also covered by test_foundation's
PIPELINES."""

import pytest
import torch

from accelerate_diffusion import accelerate, family_of
from accelerate_diffusion.testing import call_kwargs, run, run_counted

STEPS = 8          # presets leave fewer steps untouched (min_steps)


def _macs(pipe, name, **acceleration):
    return run_counted(pipe, call_kwargs(name, steps=STEPS), **acceleration)


# -- LTX-Video: batched CFG, packed tokens, self-attention / cross-attention / ff ----------------------
@pytest.mark.parametrize("name", ["cogvideox", "ltx_video"])
def test_batched_cfg_video_block_cache_and_guidance_cut_macs(pipelines, name):
    pipe = pipelines(name)
    reference, full = _macs(pipe, name)
    out, same = _macs(pipe, name, block_cache={"schedule": "full"})
    assert torch.equal(out, reference) and same == full
    _, cached = _macs(pipe, name, block_cache={"schedule": "fora:2"})
    _, halved = _macs(pipe, name, guidance={"mode": "truncation", "cfg_fraction": 0.5})
    assert cached < 0.75 * full
    assert halved == pytest.approx(0.75 * full, rel=0.02)        # half the steps run the cond half only


@pytest.mark.parametrize("name", ["cogvideox", "ltx_video"])
def test_sparse_attention_on_the_video_token_grid(pipelines, name):
    pipe = pipelines(name)
    kw = call_kwargs(name)
    # CogVideoX: (B, F, C, H, W) latents, VAE 4x in time and 8x in space, patch 2; LTX-Video: packed tokens,
    # the grid from the call's latent sizes, the tiny VAE 4x in time and 16x in space, patch 1
    grid = ((kw["num_frames"] - 1) // 4 + 1, kw["height"] // 16, kw["width"] // 16)
    reference = run(pipe, name, steps=2)
    accelerate(pipe, "off", attention={"window": 1.0})           # a dense mask: same result
    assert torch.allclose(run(pipe, name, steps=2), reference, atol=1e-5)
    assert pipe.acceleration.stats()["attention"]["token grid"] == grid
    pipe.acceleration.remove()
    accelerate(pipe, "off", attention={"window": 0.5})
    out = run(pipe, name, steps=2)
    stats = pipe.acceleration.stats()["attention"]
    pipe.acceleration.remove()
    assert 0 < stats["mean attention density"] < 1 and torch.isfinite(out).all()


def test_ltx_video_token_grid_needs_the_latent_sizes(pipelines):
    pipe = pipelines("ltx_video")
    family = family_of(pipe.transformer)
    assert family.token_grid_of(pipe.transformer, (torch.zeros(1, 12, 8),),
                                {"num_frames": 3, "height": 2, "width": 2}) == (3, 2, 2)
    # the condition pipeline passes video_coords instead: no grid to read, refused loudly
    with pytest.raises(ValueError, match="without num_frames, height and width"):
        family.token_grid_of(pipe.transformer, (torch.zeros(1, 12, 8),), {"video_coords": torch.zeros(1, 3, 12)})


def test_ltx_video_says_why_a_technique_does_not_apply(pipelines):
    pipe = pipelines("ltx_video")
    with pytest.raises(ValueError, match="deepcache: does not apply to the ltx_video family .*UNet"):
        accelerate(pipe, "off", deepcache=True)
    assert not hasattr(pipe, "acceleration")


# -- HunyuanVideo 1.5: the guider's CFG as separate calls, dual-stream blocks, masked joint attention ----
def test_hunyuan_video15_block_cache_and_guidance_cut_macs(pipelines):
    pipe = pipelines("hunyuan_video15")
    reference, full = _macs(pipe, "hunyuan_video15")
    out, same = _macs(pipe, "hunyuan_video15", block_cache={"schedule": "full"})
    assert torch.equal(out, reference) and same == full
    accelerate(pipe, "off", measure_macs=True, block_cache={"schedule": "fora:2"})
    run(pipe, "hunyuan_video15", steps=STEPS)
    reused, cached = pipe.acceleration.report().generation["counters"]["components_reused"], pipe.acceleration.state.macs
    pipe.acceleration.remove()
    # fora:2 recomputes the even steps and reuses the odd ones: 4 steps x 2 calls (cond, uncond) x 2 blocks
    # x 3 components.
    # The cut is small at micro size: diffusers' ByT5 projection (2048 wide whatever the model) and the
    # token refiner outweigh two 32-wide blocks
    assert reused == 4 * 2 * 2 * 3 and cached < full
    accelerate(pipe, "off", measure_macs=True, guidance={"mode": "truncation", "cfg_fraction": 0.5})
    run(pipe, "hunyuan_video15", steps=STEPS)
    generation, halved = pipe.acceleration.report().generation, pipe.acceleration.state.macs
    pipe.acceleration.remove()
    assert generation["cfg_layout"] == "separate"                       # the guider: cond, then uncond
    assert generation["counters"]["guidance_nfe_saved"] == STEPS // 2
    assert halved == pytest.approx(0.75 * full, rel=0.02)


def test_hunyuan_video15_says_why_sparse_attention_does_not_apply(pipelines):
    pipe = pipelines("hunyuan_video15")
    with pytest.raises(ValueError, match="attention: does not apply to the hunyuan_video15 family .*padding mask"):
        accelerate(pipe, "off", attention=True)
    assert not hasattr(pipe, "acceleration")
