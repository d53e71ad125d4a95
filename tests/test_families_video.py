"""Video families added from the family table alone: LTX-Video (batched CFG, tokens packed by the
pipeline, the grid given as the call's latent sizes), HunyuanVideo 1.5 and LTX-2. Tiny configs of the
real classes; `off` exactness and `remove()` on the whole pipeline are also covered by test_foundation's
PIPELINES."""

import pytest
import torch

from accelerate_diffusion import PRESETS, accelerate, family_of
from accelerate_diffusion.testing import call_kwargs, run, run_counted, surface

STEPS = 8          # presets leave fewer steps untouched (min_steps)


def _macs(pipe, name, **acceleration):
    return run_counted(pipe, call_kwargs(name, steps=STEPS), **acceleration)


# -- LTX-Video: batched CFG, packed tokens, self-attention / cross-attention / ff ----------------------
@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "off"])
def test_ltx_video_every_preset_runs_and_remove_is_exact(pipelines, preset):
    pipe = pipelines("ltx_video")
    reference = run(pipe, "ltx_video", steps=12)        # quality keeps its first 7 steps full
    before = surface(pipe)
    accelerate(pipe, "off")
    assert torch.equal(run(pipe, "ltx_video", steps=12), reference)
    accelerate(pipe, preset)
    out = run(pipe, "ltx_video", steps=12)
    report = pipe.acceleration.report()
    assert torch.isfinite(out).all() and out.shape == reference.shape and not torch.equal(out, reference)
    assert "block_cache" in {item["technique"] for item in report.applied} and not report.skipped
    assert report.generation["counters"]["components_reused"] > 0
    assert report.generation["cfg_layout"] == "batched"
    pipe.acceleration.remove()
    assert surface(pipe) == before
    assert torch.equal(run(pipe, "ltx_video", steps=12), reference)


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
