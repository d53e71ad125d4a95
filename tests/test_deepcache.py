"""DeepCache: exactness when off, clean removal, real skipping, ControlNet, shape changes."""

import pytest
import torch

from accelerate_diffusion.api import accelerate
from accelerate_diffusion.patches import deepcache
from accelerate_diffusion.testing import call_kwargs, run, surface


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_every_step_full_is_bit_identical_and_remove_restores(pipelines, name):
    pipe = pipelines(name)
    reference = run(pipe, name, steps=5)
    untouched = surface(pipe)
    accelerate(pipe, "off", deepcache={"cache_interval": 1, "cache_branch": 1})
    assert torch.equal(run(pipe, name, steps=5), reference)
    pipe.acceleration.remove()
    accelerate(pipe, "off", deepcache={"cache_interval": 3})
    assert not torch.equal(run(pipe, name, steps=5), reference)
    pipe.acceleration.remove()
    assert torch.equal(run(pipe, name, steps=5), reference)
    assert surface(pipe) == untouched


def _count_calls(modules):
    counts = {name: 0 for name in modules}
    handles = []
    for name, module in modules.items():
        def hook(*_, name=name):
            counts[name] += 1
        handles.append(module.register_forward_hook(hook))
    return counts, handles


def test_cached_steps_skip_the_deep_part(pipelines):
    pipe = pipelines("sd")
    unet = pipe.unet
    # micro SD: skips 0=conv_in, 1=down0.resnet0, 2=down0.downsampler, 3=down1.layer0 (+mid)
    counts, handles = _count_calls({
        "mid": unet.mid_block.resnets[0], "deep_up": unet.up_blocks[0].resnets[0],
        "deep_down": unet.down_blocks[1].resnets[0], "cut_up": unet.up_blocks[1].resnets[1],
        "conv_in": unet.conv_in, "shallow_down": unet.down_blocks[0].resnets[0]})
    try:
        accelerate(pipe, "off", deepcache={"cache_interval": 3, "cache_branch": 1})
        run(pipe, "sd", steps=7)
        stats = pipe.acceleration.report().applied[0]["stats"]
    finally:
        for h in handles:
            h.remove()
        pipe.acceleration.remove()
    schedule = deepcache.full_step_indices(deepcache.Config(cache_interval=3), 7)
    assert schedule == [0, 3, 6] and stats["full_step_indices"] == schedule
    assert stats["full_steps"] == 3 and stats["cached_steps"] == 4
    assert counts["mid"] == counts["deep_up"] == counts["deep_down"] == 3
    assert counts["conv_in"] == counts["cut_up"] == counts["shallow_down"] == 7


def test_forecast_extrapolates_the_deep_feature(pipelines):
    pipe = pipelines("sd")
    cut = next(m for _, m, is_cut in deepcache._deep_modules(pipe.unet, deepcache._layout(pipe.unet), 1) if is_cut)
    features = []
    handle = cut.register_forward_hook(lambda m, a, out: features.append(out))
    try:
        accelerate(pipe, "off", deepcache={"cache_interval": 2, "cache_branch": 1})
        reused = run(pipe, "sd", steps=5)            # full steps 0, 2, 4; cached 1, 3
        pipe.acceleration.remove()
        plain = list(features)
        features.clear()
        accelerate(pipe, "off", deepcache={"cache_interval": 2, "cache_branch": 1, "forecast": 1})
        forecast = run(pipe, "sd", steps=5)
        stats = pipe.acceleration.report().applied[0]["stats"]
        pipe.acceleration.remove()
    finally:
        handle.remove()
    f0, f2 = features[0], features[2]
    assert torch.equal(plain[1], plain[0]) and torch.equal(features[1], f0)   # step 1: one full step so far
    torch.testing.assert_close(features[3], f2 + (f2 - f0) / 2)               # the line through steps 0, 2 at 3
    assert stats["forecast"].startswith("1 cached calls") and not torch.equal(forecast, reused)
    with pytest.raises(ValueError, match=r"deepcache\.forecast: .*\[0, 2\]"):
        accelerate(pipe, "off", deepcache={"forecast": 3})


def test_whole_body_branch_runs_only_the_ends_and_forecasts_quadratically(pipelines):
    pipe = pipelines("sd")
    unet = pipe.unet
    counts, handles = _count_calls({"conv_in": unet.conv_in, "conv_out": unet.conv_out,
                                    "shallow_down": unet.down_blocks[0].resnets[0], "mid": unet.mid_block.resnets[0],
                                    "last_up": unet.up_blocks[-1].resnets[-1]})
    features, outputs = [], []
    handles += [unet.up_blocks[-1].register_forward_hook(lambda m, a, out: features.append(out)),
                unet.register_forward_hook(lambda m, a, out: outputs.append(out[0]))]
    try:
        accelerate(pipe, "off", deepcache={"cache_interval": 2, "cache_branch": -1})
        run(pipe, "sd", steps=4)                      # full steps 0, 2; cached 1, 3
        assert counts == {"conv_in": 4, "conv_out": 4, "shallow_down": 2, "mid": 2, "last_up": 2}
        assert torch.equal(outputs[1], outputs[0]) and torch.equal(outputs[3], outputs[2])
        pipe.acceleration.remove()
        features.clear()
        accelerate(pipe, "off", deepcache={"cache_interval": 2, "cache_branch": -1, "forecast": 2})
        run(pipe, "sd", steps=6)                      # full steps 0, 2, 4; cached 1, 3, 5
    finally:
        for h in handles:
            h.remove()
        pipe.acceleration.remove()
    f0, f2, f4 = features[0], features[2], features[4]
    torch.testing.assert_close(features[3], 1.5 * f2 - 0.5 * f0)                  # step 3: the line through 0, 2
    torch.testing.assert_close(features[5], 0.375 * f0 - 1.25 * f2 + 1.875 * f4)   # step 5: the parabola through 0, 2, 4
    with pytest.raises(ValueError, match=r"deepcache\.cache_branch: .*\[-1, "):
        accelerate(pipe, "off", deepcache={"cache_branch": 99})


def test_schedules():
    cfg = deepcache.Config
    assert deepcache.full_step_indices(cfg(cache_interval=5, always_full_end=2), 12) == [0, 5, 10, 11]
    assert deepcache.full_step_indices(cfg(full_steps=[4, 2]), 6) == [0, 2, 4]
    paper = deepcache.full_step_indices(cfg(cache_interval=5, schedule="nonuniform"), 50)
    assert len(paper) == 10 and paper[0] == 0 and len(set(paper)) == 10
    gaps = [b - a for a, b in zip(paper, paper[1:])]
    near = [g for a, g in zip(paper, gaps) if 8 <= a <= 20]
    assert max(near) < max(gaps)   # denser around the centre: the default 0.3 is step 15 of 50, DeepCache's


def test_nonuniform_runs_its_schedule(pipelines):
    pipe = pipelines("sd")
    accelerate(pipe, "off", deepcache={"cache_interval": 3, "schedule": "nonuniform", "center": 0.4})
    run(pipe, "sd", steps=10)
    stats = pipe.acceleration.report().applied[0]["stats"]
    pipe.acceleration.remove()
    expected = deepcache.full_step_indices(
        deepcache.Config(cache_interval=3, schedule="nonuniform", center=0.4), 10)
    assert stats["full_step_indices"] == expected and len(expected) == 4
    # the centre is a fraction of the steps: 0.4 of 10 is step 4, as an absolute centre 4 was
    assert deepcache.nonuniform_indices(10, 4, 0.4, 1.4) == [0, 2, 4, 6]


def test_bad_config_names_the_field(pipelines):
    pipe = pipelines("sd")
    untouched = surface(pipe)
    for bad, field in [({"cache_interval": 0}, "cache_interval"), ({"schedule": "x"}, "schedule"),
                       ({"power": 1.0}, "power"), ({"full_steps": [-1]}, "full_steps"),
                       ({"cache_branch": -2}, "cache_branch"), ({"center": 1.5}, "center"),
                       ({"always_full_end": -2}, "always_full_end")]:
        with pytest.raises(ValueError, match=rf"deepcache\.{field}"):
            accelerate(pipe, "off", deepcache=bad)
    with pytest.raises(ValueError, match=r"deepcache\.cache_branch: 4 is out of range for this UNet; "
                                         r"allowed \[-1, 3\]"):
        accelerate(pipe, "off", deepcache={"cache_branch": 4})
    assert surface(pipe) == untouched


def test_batch_and_resolution_change_between_calls(pipelines):
    pipe = pipelines("sd")
    accelerate(pipe, "off", deepcache={"cache_interval": 3, "cache_branch": 2})
    first = run(pipe, "sd", steps=4)
    other = run(pipe, "sd", steps=4, height=48, width=40, num_images_per_prompt=2)
    stats = pipe.acceleration.report().applied[0]["stats"]
    pipe.acceleration.remove()
    assert first.shape[0] == 1 and other.shape == (2, 4, 24, 20) and torch.isfinite(other).all()
    assert stats["full_step_indices"] == [0, 3] and stats["forced_full_calls"] == 0


class _CondOnly:
    """A stand-in for the guidance technique: from step 2 on, run only the cond half."""

    def __init__(self, state, halve: bool):
        self.state, self.halve = state, halve

    def __call__(self, module, args, kwargs, original):
        if self.state.step < 2:
            return original(*args, **kwargs)
        if self.halve:
            sample, t = args[0], args[1]
            b = sample.shape[0] // 2
            kw = dict(kwargs, encoder_hidden_states=kwargs["encoder_hidden_states"][b:])
            out = original(sample[b:], t, **kw)[0]
        else:
            out = original(*args, **kwargs)[0]
            out = out[out.shape[0] // 2:]
        return (torch.cat([out, out]),)


def test_halved_cfg_batch_slices_the_cache(pipelines):
    from diffusers.hooks import HookRegistry, ModelHook

    class Hook(ModelHook):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def new_forward(self, module, *args, **kwargs):
            return self.fn(module, args, kwargs, self.fn_ref.original_forward)

    pipe = pipelines("sd")
    untouched = surface(pipe)
    outs, stats = [], []
    for halve in (True, False):
        accelerate(pipe, "off", deepcache={"cache_interval": 3, "cache_branch": 1})
        registry = HookRegistry.check_if_exists_or_initialize(pipe.unet)
        registry.register_hook(Hook(_CondOnly(pipe.acceleration.state, halve)), "test.cond_only")
        outs.append(run(pipe, "sd", steps=6))
        stats.append(pipe.acceleration.report().applied[0]["stats"])
        registry.remove_hook("test.cond_only", recurse=False)
        pipe.acceleration.remove()
    # steps 2, 4, 5 are cached: with the halved batch they must use the cond half of the cache
    assert stats[0]["forced_full_calls"] == 0 and stats[0]["cached_steps"] == 4
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    assert surface(pipe) == untouched


@pytest.fixture(scope="module")
def controlnet_pipe(pipelines):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    base = pipelines("sd")
    torch.manual_seed(1)
    controlnet = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(4, 8))
    with torch.no_grad():   # the zero convs would make the residuals zero: give them weights
        for conv in list(controlnet.controlnet_down_blocks) + [controlnet.controlnet_mid_block]:
            conv.weight.normal_(0, 0.3)
    controlnet.eval().requires_grad_(False)
    pipe = StableDiffusionControlNetPipeline(
        **{k: v for k, v in base.components.items() if k != "image_encoder"},
        controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _control_kwargs(steps=6):
    kw = call_kwargs("sd", steps=steps)
    kw["image"] = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    return kw


def test_controlnet_residuals_are_applied_on_cached_steps(controlnet_pipe):
    pipe = controlnet_pipe
    reference = pipe(**_control_kwargs()).images
    untouched = surface(pipe)
    accelerate(pipe, "off", deepcache={"cache_interval": 1})
    assert torch.equal(pipe(**_control_kwargs()).images, reference)
    pipe.acceleration.remove()

    accelerate(pipe, "off", deepcache={"cache_interval": 3})
    applied = pipe(**_control_kwargs()).images
    state = pipe.acceleration.state

    def drop_on_cached_steps(module, args, kwargs):   # what the original DeepCache code does
        if state.step % 3:
            for key in ("down_block_additional_residuals", "mid_block_additional_residual"):
                kwargs[key] = None
        return args, kwargs

    handle = pipe.unet.register_forward_pre_hook(drop_on_cached_steps, with_kwargs=True)
    dropped = pipe(**_control_kwargs()).images
    handle.remove()
    pipe.acceleration.remove()
    assert not torch.equal(applied, dropped)
    assert torch.equal(pipe(**_control_kwargs()).images, reference)
    assert surface(pipe) == untouched


@pytest.mark.parametrize("multi", [False, True])
def test_whole_body_skips_the_controlnet_on_cached_steps_without_changing_the_output(controlnet_pipe, multi):
    from diffusers import StableDiffusionControlNetPipeline

    pipe = controlnet_pipe
    single = pipe.controlnet
    if multi:    # two ControlNets: MultiControlNetModel sums their residuals into lists
        pipe = StableDiffusionControlNetPipeline(**{**pipe.components, "controlnet": [single, single]})
        pipe.set_progress_bar_config(disable=True)

    def kwargs():
        kw = _control_kwargs(steps=7)
        return {**kw, "image": [kw["image"]] * 2} if multi else kw
    untouched = surface(pipe)
    runs = {"n": 0}
    handle = single.conv_in.register_forward_hook(lambda *_: runs.__setitem__("n", runs["n"] + 1))
    outs = {}
    try:
        for skip in (False, True):
            runs["n"] = 0
            accelerate(pipe, "off", deepcache={"cache_interval": 3, "cache_branch": -1, "forecast": 1,
                                               "skip_control": skip})
            outs[skip] = pipe(**kwargs()).images      # full steps 0, 3, 6
            stats = pipe.acceleration.report().applied[0]["stats"]
            pipe.acceleration.remove()
            assert runs["n"] == (3 if skip else 7) * (2 if multi else 1)
            assert stats.get("control_calls_skipped", 0) == (4 if skip else 0)
            assert "full_calls_without_control" not in stats
    finally:
        handle.remove()
    assert torch.equal(outs[True], outs[False])          # the skipped residuals were never used
    assert surface(pipe) == untouched
    with pytest.raises(ValueError, match=r"deepcache\.skip_control"):
        accelerate(pipe, "off", deepcache={"skip_control": "yes"})


def test_composes_with_guidance_truncation(pipelines):
    """Guidance (outer hook) runs only the cond half late in sampling: the cache is sliced."""
    pipe = pipelines("sd")
    untouched = surface(pipe)
    accelerate(pipe, "off", guidance={"mode": "truncation", "cfg_fraction": 0.5},
               deepcache={"cache_interval": 3, "cache_branch": 1})
    out = run(pipe, "sd", steps=6, num_images_per_prompt=2)
    report = pipe.acceleration.report()
    pipe.acceleration.remove()
    stats = next(a["stats"] for a in report.applied if a["technique"] == "deepcache")
    assert report.generation["counters"]["guidance_nfe_saved"] > 0 and torch.isfinite(out).all()
    assert stats["full_step_indices"] == [0, 3] and stats["forced_full_calls"] == 0
    assert surface(pipe) == untouched


def test_unet_presets_forecast_the_whole_body_with_full_cfg_and_save_more_in_order(pipelines):
    pipe = pipelines("sd")
    macs = {}
    for preset in ("off", "quality", "balanced", "fast", "max"):
        accelerate(pipe, preset, measure_macs=True)
        try:
            run(pipe, "sd", steps=16)                  # at 8-12 steps some presets share a schedule
            acc = pipe.acceleration
            macs[preset] = acc.state.macs
            if preset != "off":
                stats = acc.report().applied[0]["stats"]
                assert "guidance" not in acc.plan                  # every step runs both CFG halves
                assert stats["forecast"].endswith("extrapolated deep feature") and stats["cached_steps"] > 0
                assert stats["schedule"].endswith("branch -1")
        finally:
            pipe.acceleration.remove()
    order = [macs[p] for p in ("off", "quality", "balanced", "fast", "max")]
    assert all(a > b for a, b in zip(order, order[1:])), macs
