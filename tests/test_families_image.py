"""Image families added from the family table alone: Chroma, Flux.2, Qwen-Image 2.1. Tiny configs of
the real classes; every preset and `remove()`: test_families; `off` exactness: test_foundation."""

import pytest
import torch

from accelerate_diffusion import accelerate, family_of
from accelerate_diffusion.testing import call_kwargs, run, run_counted

STEPS = 8          # presets leave fewer steps untouched (min_steps)
IMAGE_FAMILIES = ["chroma"]


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


def test_chroma_says_why_sparse_attention_does_not_apply(pipelines):
    pipe = pipelines("chroma")
    with pytest.raises(ValueError, match="attention: does not apply to the chroma family .*padding mask"):
        accelerate(pipe, "off", attention=True)
    assert not hasattr(pipe, "acceleration")
