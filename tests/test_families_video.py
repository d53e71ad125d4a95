"""Video families added from the family table alone: LTX-Video (batched CFG, tokens packed by the
pipeline, the grid given as the call's latent sizes), HunyuanVideo 1.5 (the guider's separate CFG calls)
and LTX-2 (audio + video: two predictions per call). Tiny pipelines of the real classes; `off` exactness
and `remove()` are also covered by test_foundation's PIPELINES (LTX-2's audio included: `run` joins both
outputs), every preset by test_families."""

import pytest
import torch

from accelerate_diffusion import accelerate, family_of
from accelerate_diffusion.testing import call_kwargs, run, run_counted

STEPS = 8          # presets leave fewer steps untouched (min_steps)


def _macs(pipe, name, **acceleration):
    return run_counted(pipe, call_kwargs(name, steps=STEPS), **acceleration)


# -- LTX-Video: batched CFG, packed tokens, self-attention / cross-attention / ff ----------------------
@pytest.mark.parametrize("name", ["cogvideox", "ltx_video", "ltx2"])
def test_batched_cfg_video_block_cache_and_guidance_cut_macs(pipelines, name):
    pipe = pipelines(name)
    reference, full = _macs(pipe, name)
    out, same = _macs(pipe, name, block_cache={"schedule": "full"})
    assert torch.equal(out, reference) and same == full
    _, cached = _macs(pipe, name, block_cache={"schedule": "fora:2"})
    _, halved = _macs(pipe, name, guidance={"mode": "truncation", "cfg_fraction": 0.5})
    assert cached < 0.75 * full
    assert halved == pytest.approx(0.75 * full, rel=0.02)        # half the steps run the cond half only


@pytest.mark.parametrize("name", ["cogvideox", "ltx_video", "ltx2"])
def test_sparse_attention_on_the_video_token_grid(pipelines, name):
    pipe = pipelines(name)
    kw = call_kwargs(name)
    # CogVideoX: (B, F, C, H, W) latents, VAE 4x in time and 8x in space, patch 2; LTX-Video and LTX-2: packed
    # tokens, the grid from the call's latent sizes, the tiny VAEs 4x in time and 16x in space, patch 1
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


# -- LTX-2: audio + video, two predictions per call, extra STG / modality-isolation calls ----------------
def test_ltx2_guidance_fills_the_video_and_the_audio_prediction(pipelines):
    pipe = pipelines("ltx2")
    outputs = []
    accelerate(pipe, "off", guidance={"mode": "truncation", "cfg_fraction": 0.5})
    # a torch forward hook sees what the pipeline gets back, after guidance (the outermost diffusers hook)
    handle = pipe.transformer.register_forward_hook(lambda m, args, out: outputs.append([t.clone() for t in out]))
    try:
        run(pipe, "ltx2", steps=STEPS)
    finally:
        handle.remove()
        pipe.acceleration.remove()
    assert len(outputs) == STEPS
    for step, (video, audio) in enumerate(outputs):
        assert video.shape[0] == audio.shape[0] == 2                      # [uncond, cond] rows of both
        copies = torch.equal(video[0], video[1]) and torch.equal(audio[0], audio[1])
        assert copies == (step >= STEPS // 2), step                       # cond copies once CFG is cut


def test_ltx2_default_call_extra_guidance_calls_run_untouched(pipelines):
    pipe = pipelines("ltx2")
    kw = call_kwargs("ltx2", steps=STEPS)
    # its default guidance: CFG, then an STG call and a modality-isolation call every step (batch 1 each)
    kw.update(stg_scale=1.0, audio_stg_scale=1.0, modality_scale=3.0, audio_modality_scale=3.0,
              spatio_temporal_guidance_blocks=[1])
    accelerate(pipe, "fast")
    out = pipe(**kw)
    counters = pipe.acceleration.report().generation["counters"]
    pipe.acceleration.remove()
    assert torch.isfinite(out.frames).all() and torch.isfinite(out.audio).all()
    assert counters["denoiser_calls"] == 3 * STEPS
    assert counters["guidance_nfe_saved"] == STEPS // 2                  # only the CFG batch's uncond rows
    assert counters["components_reused"] > 0


def test_ltx2_says_why_a_technique_does_not_apply(pipelines):
    pipe = pipelines("ltx2")
    with pytest.raises(ValueError, match="ras: does not apply to the ltx2 family .*RAS layout"):
        accelerate(pipe, "off", ras=True)
    accelerate(pipe, "off", guidance={"mode": "linear"})
    skipped = pipe.acceleration.report().skipped
    pipe.acceleration.remove()
    assert [item["technique"] for item in skipped] == ["guidance"]
    assert "fitted on one prediction" in skipped[0]["reason"]
