"""Block caching: exactness when nothing is reused, real skips when reuse is scheduled,
schedule files, resampling, validation, stale-cache safety and the dynamic mode."""


import os

import numpy as np
import pytest
import torch
from diffusers.hooks import ModelHook

from accelerate_diffusion import accelerate
from accelerate_diffusion.families import family_of, find_denoiser
from accelerate_diffusion.patches import block_cache
from accelerate_diffusion.schedules import (CacheSchedule, ScheduleLayout, component_blocks, fora, from_spec,
                                            measure_component_macs, tgate, with_full_ends)
from accelerate_diffusion.schedules import forecast
from accelerate_diffusion.schedules.cache_schedule import DATA_DIR
from accelerate_diffusion.testing import call_kwargs, run, surface

DITS = ["pixart", "sd3", "flux", "wan"]


def _layout(pipe):
    denoiser = find_denoiser(pipe)[1]
    return ScheduleLayout.of(family_of(denoiser), denoiser)


def _stats(pipe):
    return pipe.acceleration.report().applied[0]["stats"]


@pytest.mark.parametrize("name", DITS)
def test_all_true_schedule_is_bit_identical_and_remove_restores(pipelines, name):
    pipe = pipelines(name)
    reference = run(pipe, name, steps=3)
    untouched = surface(pipe)
    accelerate(pipe, "off", block_cache={"schedule": "full"})
    assert torch.equal(run(pipe, name, steps=3), reference)
    assert _stats(pipe)["components reused"] == 0
    pipe.acceleration.remove()
    assert surface(pipe) == untouched
    accelerate(pipe, "off", block_cache={"schedule": "fora:2"})
    cached = run(pipe, name, steps=3)
    assert _stats(pipe)["components reused"] > 0 and not torch.equal(cached, reference)
    pipe.acceleration.remove()
    assert surface(pipe) == untouched
    assert torch.equal(run(pipe, name, steps=3), reference)


def test_reused_component_is_skipped_and_its_cached_output_used(pipelines):
    pipe = pipelines("pixart")
    layout = _layout(pipe)
    sched = CacheSchedule.full(layout, 4, name="skip-ff-block1-step2")
    sched.recompute[2, 1, layout.components.index("ff")] = False
    ff = find_denoiser(pipe)[1].transformer_blocks[1].ff
    inner_calls, outputs = [], []
    h1 = ff.net[0].register_forward_pre_hook(lambda m, a: inner_calls.append(1))
    h2 = ff.register_forward_hook(lambda m, a, out: outputs.append(out))
    try:
        reference = run(pipe, "pixart", steps=4)
        assert len(inner_calls) == 4
        inner_calls.clear(), outputs.clear()
        accelerate(pipe, "off", block_cache={"schedule": sched})
        cached = run(pipe, "pixart", steps=4)
    finally:
        h1.remove(), h2.remove()
    assert len(inner_calls) == 3                      # step 2 did not run ff's layers
    assert len(outputs) == 4 and outputs[2] is outputs[1]  # it got step 1's output back
    assert not torch.equal(cached, reference)
    stats = _stats(pipe)
    assert stats["components reused"] == 1 and stats["components recomputed"] == 4 * 6 - 1
    pipe.acceleration.remove()


def _skip_ff_block1_step3(pipe):
    """A 5-step schedule that computes everything but block 1's ff at step 3; and that ff."""
    layout = _layout(pipe)
    sched = CacheSchedule.full(layout, 5, name="skip-ff-block1-step3")
    sched.recompute[3, 1, layout.components.index("ff")] = False
    return sched, find_denoiser(pipe)[1].transformer_blocks[1].ff


@pytest.mark.parametrize("order, expected", [
    (1, lambda o: 2 * o[2] - o[1]),                 # the line through steps 1 and 2, at step 3
    (2, lambda o: 3 * o[2] - 3 * o[1] + o[0]),      # the parabola through steps 0, 1, 2
])
def test_forecast_extrapolates_the_skipped_output(pipelines, order, expected):
    pipe = pipelines("pixart")
    sched, ff = _skip_ff_block1_step3(pipe)
    outputs = []
    handle = ff.register_forward_hook(lambda m, a, out: outputs.append(out))
    try:
        accelerate(pipe, "off", block_cache={"schedule": sched, "forecast": order})
        run(pipe, "pixart", steps=5)
    finally:
        handle.remove()
    torch.testing.assert_close(outputs[3], expected(outputs), rtol=1e-5, atol=1e-6)
    assert _stats(pipe)["forecast"].startswith(f"order {order}: 1 ")
    pipe.acceleration.remove()


def test_forecast_drift_check_recomputes_a_forecast_that_moves_too_far(pipelines):
    pipe = pipelines("pixart")
    sched, ff = _skip_ff_block1_step3(pipe)
    outputs = []
    handle = ff.register_forward_hook(lambda m, a, out: outputs.append(out))
    try:
        reference = run(pipe, "pixart", steps=5)
        o1, o2 = outputs[1], outputs[2]
        # order 1 at step 3 from steps 1, 2: the forecast moves step 2's output by o2 - o1
        drift = float((o2 - o1).abs().mean() / o2.abs().mean())
        results = {}
        for check in (0.0, drift * 1.1, drift * 0.9):
            outputs.clear()
            accelerate(pipe, "off", block_cache={"schedule": sched, "forecast": 1, "forecast_check": check})
            results[check] = (run(pipe, "pixart", steps=5), _stats(pipe)["forecast"])
            pipe.acceleration.remove()
    finally:
        handle.remove()
    off, loose, tight = results[0.0], results[drift * 1.1], results[drift * 0.9]
    assert torch.equal(loose[0], off[0])             # the check passed: the same forecast
    assert not torch.equal(off[0], reference)
    assert "refused" not in off[1] and loose[1].startswith("order 1: 1 ")
    assert torch.equal(tight[0], reference)          # refused: ff ran at step 3, nothing else was reused
    assert "0 reused outputs extrapolated; 1 refused by the drift check" in tight[1]
    with pytest.raises(ValueError, match=r"block_cache\.forecast_check"):
        accelerate(pipe, "off", block_cache={"forecast": 1, "forecast_check": -1})


def test_forecast_weights_are_exact_for_polynomials():
    steps, at = [0, 3, 4], 7                          # unevenly spaced full steps
    poly = np.poly1d([0.5, -2.0, 1.0])
    weights = forecast.lagrange_weights(steps, at)
    assert sum(w * poly(s) for w, s in zip(weights, steps)) == pytest.approx(poly(at))


def test_json_round_trip(pipelines, tmp_path):
    layout = _layout(pipelines("flux"))
    sched = with_full_ends(fora(layout, 6, n=3), first=1, last=1)
    sched.metrics = {"psnr": 30.5}
    path = tmp_path / "s.json"
    sched.save(path)
    loaded = CacheSchedule.load(path)
    assert loaded == sched and loaded.metrics == {"psnr": 30.5}
    data = sched.to_dict()
    assert list(data["schedule"]) == ["000", "001", "002", "003", "004", "005"]
    assert data["num_blocks"] == 2 and data["components"] == ["attn", "ff", "ff_context", "proj_mlp", "proj_out"]
    assert set(data["schedule"]["001"]["1"]) == {"attn", "proj_mlp", "proj_out"}   # single block's own
    assert CacheSchedule.from_bits(layout, 6, sched.to_bits(), name=sched.name) == sched


def test_other_step_counts_map_in_normalised_time_warn_and_report(pipelines):
    pipe = pipelines("sd3")
    layout = _layout(pipe)
    sched = fora(layout, 4, n=2)                      # F . F . : steps 1 and 3 reuse
    assert sched.resample(4) is sched                 # its own count: the same object
    up = sched.resample(7)
    # step 0's span [0, 1/4) overlaps new steps 0 and 1; the recompute at time 2/4 lands on the
    # nearest new step, 3.5 -> 4
    assert [bool(up.recompute[i].all()) for i in range(7)] == [True, True, False, False, True, False, False]
    assert not up.recompute[[2, 3, 5, 6]].any()
    assert up.metrics["resampled_from"] == 4
    accelerate(pipe, "off", block_cache={"schedule": sched.to_dict()})
    with pytest.warns(UserWarning, match="made for 4 steps; mapped to 7 in normalised time"):
        run(pipe, "sd3", steps=7)
    assert _stats(pipe)["resampled"] == "4 -> 7 steps (normalised time)"
    run(pipe, "sd3", steps=4)
    assert _stats(pipe)["resampled"] == "no"
    pipe.acceleration.remove()


def _pattern(column) -> str:
    return "".join("F" if x else "." for x in column)


@pytest.mark.parametrize("steps, first, last, middle", [
    # fora:3,first=3,last=1 at 25: steps 0-3 all full, then full every 3rd step (6, 9, ..., 21, at
    # times 0.24, 0.36, ..., 0.84), step 24 full.
    # 50 steps: [0, 4/25) -> steps 0-7; [24/25, 1) -> 48, 49; times x 50 -> 12, 18, ..., 42
    (50, 8, 2, [12, 18, 24, 30, 36, 42]),
    # 20 steps: [0, 0.16) -> 0-3 (step 3 starts at 0.15); [0.96, 1) -> 19; x 20: 4.8, 7.2, 9.6, 12, 14.4, 16.8
    (20, 4, 1, [5, 7, 10, 12, 14, 17]),
    # 28 steps: [0, 0.16) -> 0-4 (4.48); [0.96, 1) -> 26, 27 (26.88); x 28: 6.72, 10.08, 13.44, 16.8, 20.16, 23.52
    (28, 5, 2, [7, 10, 13, 17, 20, 24]),
])
def test_mapping_keeps_full_ends_and_each_recompute_at_its_time(pipelines, steps, first, last, middle):
    layout = _layout(pipelines("sd3"))
    sched = from_spec("fora:3,first=3,last=1", layout, 25)
    assert _pattern(sched.recompute[:, 0, 0]) == "FFFF..F..F..F..F..F..F..F"
    mapped = sched.resample(steps).recompute
    assert mapped.shape[0] == steps
    assert mapped[:first].all() and mapped[steps - last:].all()
    assert not mapped[first].all() and not mapped[steps - last - 1].all()
    for block in range(layout.num_blocks):
        for comp in range(len(layout.components)):
            column = mapped[:, block, comp]
            assert list(np.flatnonzero(column[first:steps - last]) + first) == middle


def test_mapping_can_keep_the_fraction_of_recomputes_instead(pipelines):
    layout = _layout(pipelines("sd3"))
    sched = from_spec("fora:3,first=3,last=1", layout, 25)
    # 6 recomputes in the 20 middle steps at 25 -> 6 * 40 / 20 = 12 in the 40 middle steps at 50,
    # evenly spread (a gap of 3-4 steps), where keep="time" leaves 6 (a gap of 6)
    mapped = sched.resample(50, keep="fraction").recompute[:, 0, 0]
    assert mapped[:8].all() and mapped[48:].all() and mapped[8:48].sum() == 12
    assert np.diff(np.flatnonzero(mapped)).max() <= 4
    with pytest.raises(ValueError, match="keep"):
        sched.resample(50, keep="nearest")


def test_mapping_a_searched_front_is_the_identity_at_its_count():
    from accelerate_diffusion.schedules import learned

    folder = os.path.join(DATA_DIR, "ecad-demo-dit-25steps")
    for name in ("front-06", "front-11", "front-15"):
        sched = CacheSchedule.load(os.path.join(folder, name + ".json"))
        assert sched.resample(25) is sched
        for steps in (20, 28, 50):
            mapped = sched.resample(steps)
            assert mapped.recompute[0].all() and mapped.num_steps == steps
            # the same number of recomputes in the middle: a larger share at 20 steps, half at 50
            if steps != 28:      # (at 28 the full ends' rounding up decides)
                assert (mapped.recompute_fraction() > sched.recompute_fraction()) == (steps < 25)
    assert learned.served_steps_range(25) == (20, 50)


def test_validation_errors(pipelines):
    layout = _layout(pipelines("pixart"))
    bad = np.ones((3, layout.num_blocks, 3), bool)
    bad[0, 0, 0] = False
    with pytest.raises(ValueError, match="step 0 must recompute everything"):
        CacheSchedule("x", layout, bad)
    data = fora(layout, 3).to_dict()
    with pytest.raises(ValueError, match="missing field 'num_blocks'"):
        CacheSchedule.from_dict({k: v for k, v in data.items() if k != "num_blocks"})
    data["schedule"]["001"]["0"]["ff"] = "yes"
    with pytest.raises(ValueError, match="step 001 block 0 ff: expected true/false"):
        CacheSchedule.from_dict(data)
    with pytest.raises(ValueError, match=r"block_cache\.mode: 'x' is not allowed"):
        block_cache.Config(mode="x")
    with pytest.raises(ValueError, match=r"block_cache\.threshold"):
        block_cache.Config(threshold=-1)
    with pytest.raises(ValueError, match="unknown heuristic 'foo'"):
        from_spec("foo:2", layout, 4)
    with pytest.raises(ValueError, match="unknown component.*allowed: attn1, attn2, ff"):
        from_spec("component:mlp", layout, 4)
    sd3_layout = _layout(pipelines("sd3"))
    with pytest.raises(ValueError, match="no cross-attention"):
        tgate(sd3_layout, 4)


def test_mismatched_schedule_is_a_clear_error(pipelines):
    pipe = pipelines("pixart")
    untouched = surface(pipe)
    layout = _layout(pipe)
    other = ScheduleLayout("pixart", layout.block_components * 2)
    with pytest.raises(ValueError, match="does not match this model: blocks: schedule 4, model 2"):
        accelerate(pipe, "off", block_cache={"schedule": fora(other, 4)})
    wan = fora(_layout(pipelines("wan")), 4)
    with pytest.raises(ValueError, match="model family: schedule 'wan', model 'pixart'"):
        accelerate(pipe, "off", block_cache={"schedule": wan})
    renamed = ScheduleLayout("pixart", (("attn1", "attn2", "mlp"),) * 2)
    with pytest.raises(ValueError, match=r"block 0 components: schedule \['attn1', 'attn2', 'mlp'\]"):
        accelerate(pipe, "off", block_cache={"schedule": fora(renamed, 4)})
    assert surface(pipe) == untouched


def test_no_stale_cache_across_sizes_and_steps(pipelines):
    pipe = pipelines("pixart")
    accelerate(pipe, "off", block_cache={"schedule": "fora:2"})
    run(pipe, "pixart", steps=4)
    second = run(pipe, "pixart", steps=3, height=48, width=48)
    third = run(pipe, "pixart", steps=3, height=48, width=48, num_images_per_prompt=2)
    pipe.acceleration.remove()
    accelerate(pipe, "off", block_cache={"schedule": "fora:2"})
    assert torch.equal(run(pipe, "pixart", steps=3, height=48, width=48), second)
    pipe.acceleration.remove()
    accelerate(pipe, "off", block_cache={"schedule": "fora:2"})
    assert torch.equal(run(pipe, "pixart", steps=3, height=48, width=48, num_images_per_prompt=2), third)
    pipe.acceleration.remove()


class _CondHalfOnly(ModelHook):
    """Stands in for guidance: from step 1 on, run the cond half of the batch only."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def new_forward(self, module, *args, **kwargs):
        if self.state.step == 0:
            return self.fn_ref.original_forward(*args, **kwargs)
        batch = args[0].shape[0] if args else kwargs["hidden_states"].shape[0]
        half = lambda v: v[batch // 2:] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == batch else v
        kwargs = {k: ({kk: half(vv) for kk, vv in v.items()} if isinstance(v, dict) else half(v))
                  for k, v in kwargs.items()}
        out = self.fn_ref.original_forward(*[half(a) for a in args], **kwargs)
        return (torch.cat([out[0], out[0]]),)


def test_batch_shrinking_to_cond_half_slices_the_cache(pipelines):
    from diffusers.hooks import HookRegistry

    pipe = pipelines("pixart")
    accelerate(pipe, "off", block_cache={"schedule": "fora:2"})
    denoiser = find_denoiser(pipe)[1]
    registry = HookRegistry.check_if_exists_or_initialize(denoiser)
    registry.register_hook(_CondHalfOnly(pipe.acceleration.state), "test.cond_half")
    try:
        run(pipe, "pixart", steps=4)
        stats = _stats(pipe)
    finally:
        registry.remove_hook("test.cond_half", recurse=False)
        pipe.acceleration.remove()
    # step 1 reuses the [uncond, cond] outputs of step 0 sliced to cond; step 3 those of step 2
    assert stats["components reused"] == 2 * 6 and "reuse planned but recomputed" not in str(stats)


@pytest.mark.parametrize("name", ["pixart", "wan"])
def test_dynamic_threshold_zero_is_exact(pipelines, name):
    pipe = pipelines(name)
    reference = run(pipe, name, steps=3)
    untouched = surface(pipe)
    accelerate(pipe, "off", block_cache={"mode": "dynamic", "threshold": 0.0})
    assert torch.equal(run(pipe, name, steps=3), reference)
    pipe.acceleration.remove()
    accelerate(pipe, "off", block_cache={"mode": "dynamic", "threshold": 100.0, "max_reuse": 1})
    assert not torch.equal(run(pipe, name, steps=3), reference)
    stats = _stats(pipe)
    assert stats["calls with blocks reused"] >= 1 and stats["components reused"] > 0
    pipe.acceleration.remove()
    assert surface(pipe) == untouched


def test_heuristics_and_macs(pipelines):
    pipe = pipelines("pixart")
    layout = _layout(pipe)
    s = component_blocks(layout, 10, "ff", k=1, window=0.6, every=2)
    reused = np.argwhere(~s.recompute)
    assert set(reused[:, 1]) == {0} and set(reused[:, 2]) == {2} and set(reused[:, 0]) == {3, 5, 7}
    t = from_spec("tgate:gate=4,last=1", layout, 8)
    assert t.recompute[:4].all() and not t.recompute[4:7, :, 1].any() and t.recompute[7].all()
    assert t.recompute[:, :, [0, 2]].all()
    assert from_spec("fora:3", layout, 9).macs_fraction() == pytest.approx(1 / 3)
    macs, total = measure_component_macs(pipe, call_kwargs("pixart"))
    assert (macs > 0).all() and total > macs.sum()
    ratio = from_spec("fora:2", layout, 4).macs_ratio(macs, total)
    assert 1 < ratio < 2


@pytest.mark.parametrize("preset", ["quality", "balanced", "fast", "max"])
def test_presets_apply_block_cache_to_dits(pipelines, preset):
    from accelerate_diffusion.api import build_plan
    from accelerate_diffusion.presets import get_preset

    for name in DITS:
        family = family_of(find_denoiser(pipelines(name))[1])
        assert "block_cache" in build_plan(family, find_denoiser(pipelines(name))[1], preset, {}), (name, preset)
        assert "block_cache" not in get_preset("off").for_family(family)
    pipe = pipelines("sd3")
    accelerate(pipe, preset, guidance=False, ras=False, attention=False)
    run(pipe, "sd3", steps=10)        # quality keeps the first 5 and last 2 steps full
    assert _stats(pipe)["components reused"] > 0
    pipe.acceleration.remove()
