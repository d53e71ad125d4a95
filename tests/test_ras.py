"""Region-adaptive sampling: exactness, token counts, starvation, shapes, refusals."""

import pytest
import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.patches import ras
from accelerate_diffusion.testing import run, surface

STEPS = 8
SPARSE = {"sample_ratio": 0.5, "start_step": 2, "error_reset_steps": ()}


@pytest.mark.parametrize("name", ["sd3", "flux", "chroma"])
def test_ratio_one_identical_and_remove_restores(pipelines, name):
    pipe = pipelines(name)
    reference = run(pipe, name, steps=STEPS)
    untouched = surface(pipe)
    accelerate(pipe, "off", ras={"sample_ratio": 1.0})
    assert torch.equal(run(pipe, name, steps=STEPS), reference)
    pipe.acceleration.remove()
    accelerate(pipe, "off", ras=SPARSE)
    changed = run(pipe, name, steps=STEPS)
    stats = pipe.acceleration.report().applied[0]["stats"]
    assert stats["sparse steps"] == STEPS - 2 and stats["dense steps"] == 2
    assert not torch.equal(changed, reference)
    pipe.acceleration.remove()
    assert torch.equal(run(pipe, name, steps=STEPS), reference)
    assert surface(pipe) == untouched


@pytest.mark.parametrize("name", ["sd3", "flux", "chroma"])
def test_sparse_path_with_every_token_active_matches_dense(pipelines, name):
    """Gather, full-length K/V, RoPE slicing and scatter are exact when nothing is cached."""
    pipe = pipelines(name)
    reference = run(pipe, name, steps=6)
    accelerate(pipe, "off", ras={"sample_ratio": 0.999, "start_step": 1, "error_reset_steps": ()})
    out = run(pipe, name, steps=6)
    counters = pipe.acceleration.state.counters
    per_step = counters["denoiser_calls"] // 6                # Chroma's true CFG: two calls a step
    assert counters["ras_sparse_calls"] == 5 * per_step and per_step == (2 if name == "chroma" else 1)
    pipe.acceleration.remove()
    assert torch.equal(out, reference)


@pytest.mark.parametrize("name", ["sd3", "flux", "chroma"])
def test_blocks_see_active_tokens_only(pipelines, name):
    pipe = pipelines(name)
    seen = []
    block = pipe.transformer.transformer_blocks[0]
    handle = block.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["hidden_states"].shape[1]), with_kwargs=True)
    try:
        accelerate(pipe, "off", ras={**SPARSE, "sample_ratio": 0.25})
        run(pipe, name, steps=STEPS)
        pipe.acceleration.remove()
    finally:
        handle.remove()
    n, calls = seen[0], len(seen) // STEPS                  # calls per step: 2 with Chroma's true CFG
    assert seen[:2 * calls] == [n] * 2 * calls and seen[2 * calls:] == [round(0.25 * n)] * (STEPS - 2) * calls


def test_cached_tokens_reuse_last_output_and_attend_full_context(pipelines):
    pipe = pipelines("sd3")
    outputs, keys = [], []
    out_h = pipe.transformer.register_forward_hook(lambda m, a, o: outputs.append(o[0].clone()))
    accelerate(pipe, "off", ras={**SPARSE, "sample_ratio": 0.25})
    attn = pipe.transformer.transformer_blocks[0].attn
    key_h = attn.register_forward_pre_hook(lambda m, args, kwargs: keys.append(
        m.to_k(kwargs["hidden_states"]).shape[1]), with_kwargs=True)
    try:
        run(pipe, "sd3", steps=4)
        idx = pipe.acceleration.stats()["ras"]["history"][3]                      # active tokens of step 3, sample 0
    finally:
        pipe.acceleration.remove()
        out_h.remove()
        key_h.remove()
    n = keys[0]
    assert keys[2:] == [n, n]                          # sparse steps still see every key
    p = pipe.transformer.config.patch_size
    tok = lambda x: x.unfold(-2, p, p).unfold(-2, p, p).reshape(*x.shape[:2], -1, p * p)  # noqa: E731
    prev, cur = tok(outputs[2]), tok(outputs[3])      # [rows, C, N, p*p]
    cached = torch.ones(prev.shape[2], dtype=torch.bool)
    cached[idx[0]] = False
    assert torch.equal(cur[:, :, cached], prev[:, :, cached])
    assert not torch.equal(cur[:, :, ~cached], prev[:, :, ~cached])


def _max_staleness(history, n):
    stale, worst = torch.zeros(n), 0
    for idx in history:
        active = torch.ones(n, dtype=torch.bool)
        if idx is not None:
            active = torch.zeros(n, dtype=torch.bool)
            active[idx[0]] = True
        stale = torch.where(active, 0, stale + 1)
        worst = max(worst, int(stale.max()))
    return worst


def test_starvation_brings_skipped_tokens_back(pipelines):
    pipe = pipelines("sd3")
    worst = {}
    for scale in (0.0, 2.0):
        accelerate(pipe, "off", ras={"sample_ratio": 0.25, "start_step": 1, "error_reset_steps": (),
                                     "starvation_scale": scale})
        run(pipe, "sd3", steps=16)
        details = pipe.acceleration.stats()["ras"]
        n = details["grid"][0] * details["grid"][1]
        worst[scale] = _max_staleness(details["history"], n)
        pipe.acceleration.remove()
    assert worst[2.0] < worst[0.0]
    assert worst[2.0] <= 6          # with 1/4 active, a starved token is back within a few steps


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_batch_two_and_non_square(pipelines, name):
    pipe = pipelines(name)
    accelerate(pipe, "off", ras=SPARSE)
    out = run(pipe, name, steps=5, height=32, width=48, num_images_per_prompt=2)
    stats = pipe.acceleration.report().applied[0]["stats"]
    assert stats["sparse steps"] == 3 and torch.isfinite(out).all()
    details = pipe.acceleration.stats()["ras"]
    assert details["grid"] == (8, 12) and details["history"][-1].shape == (2, 48)   # per sample
    out = run(pipe, name, steps=5, height=48, width=32)                            # size change
    assert pipe.acceleration.stats()["ras"]["grid"] == (12, 8) and torch.isfinite(out).all()
    pipe.acceleration.remove()


def test_batch_change_mid_generation_runs_dense(pipelines):
    """Adaptive guidance may drop the uncond half: that call runs dense and re-seeds."""
    pipe = pipelines("sd3")
    accelerate(pipe, "off", ras=SPARSE)
    transformer = pipe.transformer
    original = transformer.forward

    def halve_late(*args, **kwargs):
        if pipe.acceleration.state.step >= 4:
            hs = kwargs["hidden_states"]
            half = hs.shape[0] // 2
            sub = {k: (v[half:] if isinstance(v, torch.Tensor) and v.shape[:1] == hs.shape[:1] else v)
                   for k, v in kwargs.items()}
            out = original(*args, **sub)[0]
            return (torch.cat([out, out]),)
        return original(*args, **kwargs)

    transformer.forward = halve_late
    try:
        out = run(pipe, "sd3", steps=STEPS)
        counters = pipe.acceleration.state.counters
    finally:
        transformer.forward = original       # the hooked forward, removed by remove()
        pipe.acceleration.remove()
    assert torch.isfinite(out).all()
    # steps 0,1 dense, 2,3 sparse, 4 dense (batch changed), 5..7 sparse
    assert counters["ras_dense_calls"] == 3 and counters["ras_sparse_calls"] == 5


def test_unsupported_scheduler_and_bad_config(pipelines):
    from diffusers import FlowMatchHeunDiscreteScheduler

    pipe = pipelines("sd3")
    original = pipe.scheduler
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(original.config)
    try:
        with pytest.warns(UserWarning, match="ras not applied: ras needs a flow-matching Euler"):
            accelerate(pipe, "off", ras=True)
        assert pipe.acceleration.report().skipped[0]["technique"] == "ras"
        pipe.acceleration.remove()
    finally:
        pipe.scheduler = original
    with pytest.raises(ValueError, match=r"ras\.sample_ratio: 0 is out of range"):
        accelerate(pipe, "off", ras={"sample_ratio": 0})
    with pytest.raises(ValueError, match=r"ras\.metric: 'mean' is not allowed; allowed: 'std', 'l2'"):
        accelerate(pipe, "off", ras={"metric": "mean"})
    with pytest.raises(ValueError, match="ras: does not apply to the pixart family"):
        accelerate(pipelines("pixart"), "off", ras=True)


def test_per_step_ratio_schedule_and_l2_metric(pipelines):
    pipe = pipelines("flux")
    seen = []
    block = pipe.transformer.transformer_blocks[0]
    handle = block.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["hidden_states"].shape[1]), with_kwargs=True)
    try:
        accelerate(pipe, "off", ras={"sample_ratio": (1.0, 1.0, 0.75, 0.5), "start_step": 0,
                                     "error_reset_steps": (), "metric": "l2"})
        run(pipe, "flux", steps=5)
        pipe.acceleration.remove()
    finally:
        handle.remove()
    n = seen[0]
    assert seen == [n, n, round(0.75 * n), round(0.5 * n), round(0.5 * n)]


def test_config_plan_and_scores():
    cfg = ras.Config(error_reset_steps=[0.4, 0.75, 9], sample_ratio=[1.0, 0.5])
    assert cfg.reset_steps(20) == {8, 15, 9} and cfg.ratio_at(7) == 0.5
    assert [cfg.is_dense(s, 20) for s in (0, 3, 4, 8, 9, 10)] == [True, True, False, True, True, False]
    diff = torch.zeros(1, 4, 4, 6)
    diff[0, :, 2:4, 0:2] = torch.arange(4.0)[:, None, None]     # token (1, 0) of a 2x3 grid moves
    assert ras.token_scores(diff, 2, "std").argmax().item() == 3
    packed = torch.zeros(1, 6, 16)
    packed[0, 4] = torch.arange(16.0)
    assert ras.token_scores(packed, 2, "l2").argmax().item() == 4
