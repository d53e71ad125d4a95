"""Image families of the family table beyond the first ones: Lumina 2 (region-adaptive sampling through
its joint blocks, CFG as separate calls), SANA (linear attention), Kolors (the unet row: SDXL's UNet layout
with ChatGLM text, driven through its own tokenizer class over a SentencePiece model trained in memory). Tiny configs of the real classes; `off` exactness and
`remove()` are also covered by test_foundation's PIPELINES, every preset by test_families."""

import pytest
import torch

from accelerate_diffusion import PRESETS, accelerate, family_of
from accelerate_diffusion.testing import call_kwargs, run, run_counted, surface

STEPS = 8          # presets leave fewer steps untouched (min_steps)
SPARSE = {"sample_ratio": 0.25, "start_step": 2, "error_reset_steps": ()}


def _macs(pipe, name, steps=STEPS, call=None, **acceleration):
    return run_counted(pipe, call_kwargs(name, steps=steps, **(call or {})), **acceleration)


# -- Lumina 2: RAS through the joint blocks, CFG as a cond call then an uncond call -------------------
LUMINA_GRID = dict(height=128, width=128)          # 8 x 8 image tokens next to the prompt's


def test_lumina2_ras_off_setting_is_exact_and_remove_restores(pipelines):
    pipe = pipelines("lumina2")
    reference = run(pipe, "lumina2", steps=STEPS)
    before = surface(pipe)
    accelerate(pipe, "off", ras={"sample_ratio": 1.0})           # every step dense
    assert torch.equal(run(pipe, "lumina2", steps=STEPS), reference)
    pipe.acceleration.remove()
    accelerate(pipe, "off", ras=SPARSE)
    out = run(pipe, "lumina2", steps=STEPS)
    stats = pipe.acceleration.report().applied[0]["stats"]
    pipe.acceleration.remove()
    assert stats["sparse steps"] == STEPS - 2 and stats["dense steps"] == 2
    assert torch.isfinite(out).all() and not torch.equal(out, reference)
    assert surface(pipe) == before and torch.equal(run(pipe, "lumina2", steps=STEPS), reference)


def test_lumina2_ras_sparse_path_with_every_token_active_matches_dense(pipelines):
    """Gather at the first joint block, full-length K/V, the queries' RoPE rows and the scatter at
    norm_out are exact when nothing is cached."""
    pipe = pipelines("lumina2")
    reference = run(pipe, "lumina2", steps=6, **LUMINA_GRID)
    accelerate(pipe, "off", ras={"sample_ratio": 0.999, "start_step": 1, "error_reset_steps": ()})
    out = run(pipe, "lumina2", steps=6, **LUMINA_GRID)
    counters = pipe.acceleration.state.counters
    pipe.acceleration.remove()
    assert counters["ras_sparse_calls"] == 2 * 5                  # cond and uncond calls of steps 1-5
    assert torch.equal(out, reference)


def test_lumina2_ras_runs_the_joint_blocks_on_active_tokens_and_cuts_macs(pipelines):
    pipe = pipelines("lumina2")
    seen, refined = [], []
    block = pipe.transformer.layers[0]        # its queries: after RAS's gather on the block's input
    h1 = block.attn.to_q.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    h2 = pipe.transformer.noise_refiner[0].register_forward_pre_hook(lambda m, args: refined.append(args[0].shape[1]))
    try:
        _, full = _macs(pipe, "lumina2", call=LUMINA_GRID)
        seen.clear(), refined.clear()
        out, sparse = _macs(pipe, "lumina2", call=LUMINA_GRID, ras=SPARSE)
    finally:
        h1.remove(), h2.remove()
    n = 8 * 8
    assert refined == [n] * (2 * STEPS)                           # the noise refiner runs every token
    # per call the joint sequence is the prompt's tokens then the image tokens: 16 active of 64 at sparse steps
    dense_lengths, sparse_lengths = seen[:4], seen[4:]
    assert len(sparse_lengths) == 2 * (STEPS - 2)
    assert all(d - s == n - 16 for d, s in zip(dense_lengths * 3, sparse_lengths))
    assert torch.isfinite(out).all() and sparse < 0.8 * full


def test_lumina2_ras_runs_dense_when_rows_have_different_text_lengths(pipelines):
    pipe = pipelines("lumina2")
    accelerate(pipe, "off", ras=SPARSE)
    out = run(pipe, "lumina2", steps=STEPS, prompt=["a red circle", "a red circle above a blue square"],
              negative_prompt=["", ""])
    counters = pipe.acceleration.state.counters
    pipe.acceleration.remove()
    # the cond call (two prompt lengths) runs dense every step; the uncond call (same lengths) goes sparse
    assert counters["ras_sparse_calls"] == STEPS - 2 and counters["ras_dense_calls"] == STEPS + 2
    assert torch.isfinite(out).all()


def test_lumina2_refusals_name_their_reason(pipelines):
    pipe = pipelines("lumina2")
    with pytest.raises(ValueError, match="attention: does not apply to the lumina2 family .*fixed text prefix"):
        accelerate(pipe, "off", attention=True)
    with pytest.raises(ValueError, match="deepcache: does not apply to the lumina2 family .*UNet"):
        accelerate(pipe, "off", deepcache=True)
    with pytest.warns(UserWarning, match="ras not applied: .*block-level hooks"):
        accelerate(pipe, "off", ras=SPARSE, block_cache={"schedule": "fora:2"})
    assert [s["technique"] for s in pipe.acceleration.report().skipped] == ["ras"]
    pipe.acceleration.remove()


# -- Lumina 2 and SANA: block caching and CFG truncation ---------------------------------------------
# Lumina 2 runs CFG as a cond call then an uncond call, SANA batches it (truncating CFG at half the steps
# then leaves 0.75 of the MACs)
@pytest.mark.parametrize("name, layout, share", [("lumina2", "separate", None), ("sana", "batched", 0.75)])
def test_block_cache_and_guidance_cut_macs(pipelines, name, layout, share):
    pipe = pipelines(name)
    reference, full = _macs(pipe, name)
    out, same = _macs(pipe, name, block_cache={"schedule": "full"})
    assert torch.equal(out, reference) and same == full
    out, cached = _macs(pipe, name, block_cache={"schedule": "fora:2"})
    assert cached < 0.8 * full and torch.isfinite(out).all()
    accelerate(pipe, "off", measure_macs=True, guidance={"mode": "truncation", "cfg_fraction": 0.5})
    run(pipe, name, steps=STEPS)
    generation = pipe.acceleration.report().generation
    pipe.acceleration.remove()
    assert generation["cfg_layout"] == layout and generation["counters"]["guidance_nfe_saved"] == STEPS // 2
    if share is None:
        assert generation["macs"] < full
    else:
        assert generation["macs"] == pytest.approx(share * full, rel=0.05)   # half the steps run the cond half only


# -- SANA: linear self-attention, batched CFG --------------------------------------------------------
def test_sana_refusals_name_their_reason(pipelines):
    pipe = pipelines("sana")
    assert type(pipe.transformer.transformer_blocks[0].attn1.processor).__name__ == "SanaLinearAttnProcessor2_0"
    with pytest.raises(ValueError, match="attention: does not apply to the sana family .*linear attention"):
        accelerate(pipe, "off", attention=True)
    with pytest.raises(ValueError, match="ras: does not apply to the sana family .*depthwise conv"):
        accelerate(pipe, "off", ras=True)
    assert not hasattr(pipe, "acceleration")


# -- Kolors: the unet row (SDXL's UNet layout, ChatGLM text projected inside the UNet) ----------------
def test_kolors_is_the_unet_row_and_deepcache_finds_its_branch_points(pipelines):
    from accelerate_diffusion.patches import deepcache

    pipe = pipelines("kolors")
    assert family_of(pipe.unet).name == "unet"
    assert pipe.unet.config.encoder_hid_dim_type == "text_proj"          # ChatGLM width -> cross-attention width
    layout = deepcache._layout(pipe.unet)
    # conv_in, then per down block one skip per layer plus the first block's downsampler: 1 + 1 + 1 + 1
    assert layout.num_skips == 4 and layout.max_branch == 3 and len(layout.up) == 4


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "off"])
def test_kolors_every_preset_runs_and_remove_is_exact(pipelines, preset):
    pipe = pipelines("kolors")
    reference = run(pipe, "kolors", steps=12)
    before = surface(pipe)
    accelerate(pipe, preset)
    out = run(pipe, "kolors", steps=12)
    report = pipe.acceleration.report()
    pipe.acceleration.remove()
    assert torch.isfinite(out).all() and not report.skipped
    assert "deepcache" in {item["technique"] for item in report.applied}
    assert report.generation["cfg_layout"] == "batched"
    assert surface(pipe) == before and torch.equal(run(pipe, "kolors", steps=12), reference)


def test_kolors_deepcache_and_guidance_cut_macs(pipelines):
    pipe = pipelines("kolors")
    reference, full = _macs(pipe, "kolors")
    _, cached = _macs(pipe, "kolors", deepcache={"cache_interval": 2, "cache_branch": 0, "min_steps": 1})
    _, halved = _macs(pipe, "kolors", guidance={"mode": "truncation", "cfg_fraction": 0.5})
    assert cached < 0.8 * full
    assert halved == pytest.approx(0.75 * full, rel=0.02)        # half the steps run the cond half only
    with pytest.raises(ValueError, match="block_cache: does not apply to the unet family"):
        accelerate(pipe, "off", block_cache=True)
