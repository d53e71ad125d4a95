"""The base every technique plugs into: API, presets, families, clock, report, remove()."""


import pytest
import torch

from accelerate_diffusion import PRESETS, accelerate, accelerated, family_of
from accelerate_diffusion import patches
from accelerate_diffusion.config import check_choice, check_range
from accelerate_diffusion.families import find_denoiser
from accelerate_diffusion.testing import PIPELINES, call_kwargs, make_pipeline, run, surface

EXPECTED_FAMILY = {"sd": "unet", "sdxl": "unet", "pixart": "pixart", "sd3": "sd3",
                   "flux": "flux", "wan": "wan", "qwenimage": "qwenimage", "wan22": "wan",
                   "cogvideox": "cogvideox", "hunyuan_video": "hunyuan_video", "wan_vace": "wan_vace",
                   "lumina2": "lumina2", "sana": "sana", "kolors": "unet",
                   "chroma": "chroma", "flux2": "flux2", "qwenimage21": "qwenimage21",
                   "ltx_video": "ltx_video", "hunyuan_video15": "hunyuan_video15", "ltx2": "ltx2"}


@pytest.mark.parametrize("name", PIPELINES)
def test_off_is_bit_identical_and_remove_restores(pipelines, name):
    pipe = pipelines(name)
    reference = run(pipe, name, steps=3)
    before = surface(pipe)
    accelerate(pipe, "off")
    assert torch.equal(run(pipe, name, steps=3), reference)
    pipe.acceleration.remove()
    assert not hasattr(pipe, "acceleration")
    assert surface(pipe) == before
    assert torch.equal(run(pipe, name, steps=3), reference)


@pytest.mark.parametrize("name", PIPELINES)
def test_family_table_matches_real_classes(pipelines, name):
    pipe = pipelines(name)
    denoiser = find_denoiser(pipe)[1]
    family = family_of(denoiser)
    assert family.name == EXPECTED_FAMILY[name]
    for group in family.block_groups:
        blocks = getattr(denoiser, group.attr)
        assert len(blocks) > 0
        for component in group.components:
            assert isinstance(getattr(blocks[0], component), torch.nn.Module), (group.attr, component)
    if family.kind == "dit":
        assert len(family.blocks(denoiser)) == sum(len(getattr(denoiser, g.attr)) for g in family.block_groups)


def _record_clock(pipe):
    """Record (generation, step, num_steps, batch) at every denoiser call."""
    seen = []
    denoiser = find_denoiser(pipe)[1]
    state = pipe.acceleration.state
    handle = denoiser.register_forward_pre_hook(
        lambda mod, args: seen.append((state.generation, state.step, state.num_steps)))
    return seen, handle


@pytest.mark.parametrize("name", ["sd", "sd3"])
def test_clock_steps_across_generations(pipelines, name):
    pipe = pipelines(name)
    accelerate(pipe, "off")
    seen, hook = _record_clock(pipe)
    try:
        run(pipe, name, steps=3)
        run(pipe, name, steps=5, num_images_per_prompt=2, height=48, width=48)
        run(pipe, name, steps=2, guidance_scale=1.0)
    finally:
        hook.remove()
        pipe.acceleration.remove()
    assert seen == [(1, s, 3) for s in range(3)] + [(2, s, 5) for s in range(5)] + [(3, s, 2) for s in range(2)]


def test_clock_detects_cfg_layout_and_counts(pipelines):
    pipe = pipelines("sd")
    accelerate(pipe, "off")
    state = pipe.acceleration.state
    run(pipe, "sd", steps=4)
    assert state.cfg_layout == "batched" and state.counters["denoiser_calls"] == 4
    assert state.counters["steps"] == 4 and state.input_shape[0] == 2
    run(pipe, "sd", steps=2, guidance_scale=1.0)
    assert state.cfg_layout == "none" and state.counters["denoiser_calls"] == 2
    pipe.acceleration.remove()


def test_cfg_flag_for_pipelines_without_the_property(pipelines):
    pipe = pipelines("pixart")            # PixArt has no `do_classifier_free_guidance` property
    before = surface(pipe)
    accelerate(pipe, "off")
    state = pipe.acceleration.state
    run(pipe, "pixart", steps=2)
    assert state.cfg_flag is True and state.cfg_layout == "batched"
    run(pipe, "pixart", steps=2, guidance_scale=1.0)
    assert state.cfg_flag is False and state.cfg_layout == "none"
    pipe.acceleration.remove()
    assert surface(pipe) == before


def test_clock_img2img_counts_only_the_steps_run(pipelines):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**pipelines("sd").components)
    pipe.set_progress_bar_config(disable=True)
    accelerate(pipe, "off")
    seen, hook = _record_clock(pipe)
    image = torch.rand(1, 3, 32, 32)
    kw = call_kwargs("sd", steps=10)
    kw.pop("height"), kw.pop("width")
    pipe(image=image, strength=0.5, **kw)
    hook.remove()
    state = pipe.acceleration.state
    pipe.acceleration.remove()
    assert [s for _, s, _ in seen] == list(range(5))
    assert state.num_steps == 5 and state.counters["steps"] == 5


def test_scheduler_replaced_after_accelerate(pipelines):
    from diffusers import EulerDiscreteScheduler

    pipe = make_pipeline("sd")
    old = pipe.scheduler
    untouched = surface(pipe)["scheduler"]
    accelerate(pipe, "off")
    pipe.scheduler = EulerDiscreteScheduler.from_config(old.config)
    seen, hook = _record_clock(pipe)
    with pytest.warns(UserWarning, match="scheduler was replaced"):
        run(pipe, "sd", steps=3)
    run(pipe, "sd", steps=2)
    hook.remove()
    assert [s for _, s, _ in seen] == [0, 1, 2, 0, 1]
    pipe.acceleration.remove()
    assert surface(pipe)["scheduler"] == untouched             # the new scheduler is unwrapped
    pipe.scheduler = old
    assert surface(pipe)["scheduler"] == untouched             # and so is the old one


def test_two_instances_do_not_affect_each_other():
    a, b = make_pipeline("pixart"), make_pipeline("pixart")
    reference = run(b, "pixart", steps=3)
    untouched = surface(b)
    accelerate(a, "off", measure_macs=True)
    run(a, "pixart", steps=3)
    assert surface(b) == untouched
    assert torch.equal(run(b, "pixart", steps=3), reference)
    assert a.acceleration.state.counters["denoiser_calls"] == 3
    a.acceleration.remove()


def test_context_manager_and_reapply(pipelines):
    pipe = pipelines("sd3")
    reference = run(pipe, "sd3", steps=2)
    untouched = surface(pipe)
    with accelerated(pipe, "off") as p:
        assert p is pipe and pipe.acceleration.active
        assert torch.equal(run(pipe, "sd3", steps=2), reference)
    assert not hasattr(pipe, "acceleration")
    accelerate(pipe, "off")
    accelerate(pipe, "quality")       # replaces the first handle, no double patching
    assert pipe.acceleration.preset == "quality"
    pipe.acceleration.remove()
    assert surface(pipe) == untouched
    assert torch.equal(run(pipe, "sd3", steps=2), reference)


def test_report_after_generation(pipelines):
    pipe = pipelines("sd")
    accelerate(pipe, "off", measure_macs=True)
    text = str(pipe.acceleration.report())
    assert "no generation run yet" in text
    run(pipe, "sd", steps=3)
    report = pipe.acceleration.report()
    assert report.family == "unet" and report.preset == "off" and report.applied == []
    assert report.generation["counters"]["denoiser_calls"] == 3
    assert report.generation["macs"] > 0
    assert "denoiser MACs executed" in str(report)
    pipe.acceleration.remove()


def test_presets_listed_with_descriptions():
    assert list(PRESETS) == ["off", "quality", "balanced", "fast", "max"]
    assert all(p.description for p in PRESETS.values())


def test_bad_inputs_raise_clear_errors(pipelines):
    pipe = pipelines("sd")
    with pytest.raises(ValueError, match="preset.*'turbo'.*off, quality, balanced, fast, max"):
        accelerate(pipe, "turbo")
    with pytest.raises(ValueError, match="unknown override.*warp_drive"):
        accelerate(pipe, "off", warp_drive=True)
    with pytest.raises(TypeError, match="DiffusionPipeline"):
        accelerate(torch.nn.Linear(2, 2), "off")
    assert not hasattr(pipe, "acceleration")


def test_config_validators_name_the_field():
    with pytest.raises(ValueError, match=r"x\.threshold: 1.5 is out of range; allowed \[0, 1\]"):
        check_range("x", "threshold", 1.5, 0, 1)
    with pytest.raises(ValueError, match=r"x\.n: must be an integer"):
        check_range("x", "n", 2.5, 1, integer=True)
    with pytest.raises(ValueError, match=r"x\.mode: 'z' is not allowed; allowed: 'a', 'b'"):
        check_choice("x", "mode", "z", ["a", "b"])


# -- the plug-in contract, exercised with a small technique (conftest.scale_technique) -----------

def test_plugin_applies_reports_and_removes(pipelines, scale_technique):
    pipe = pipelines("sd")
    reference = run(pipe, "sd", steps=2)
    accelerate(pipe, "off", guidance={"factor": 0.5})
    changed = run(pipe, "sd", steps=2)
    assert not torch.equal(changed, reference)
    report = pipe.acceleration.report()
    assert report.applied[0]["technique"] == "guidance" and report.applied[0]["stats"] == {"calls": 2}
    pipe.acceleration.remove()
    assert torch.equal(run(pipe, "sd", steps=2), reference)


def test_plugin_bad_override_and_not_applicable(pipelines, scale_technique):
    pipe = pipelines("sd")
    with pytest.raises(ValueError, match=r"guidance: unknown field\(s\) speed; allowed: factor, refuse"):
        accelerate(pipe, "off", guidance={"speed": 2})
    with pytest.raises(ValueError, match=r"guidance\.factor: 11 is out of range"):
        accelerate(pipe, "off", guidance={"factor": 11})
    with pytest.raises(ValueError, match="override must be"):
        accelerate(pipe, "off", guidance=3)
    with pytest.warns(UserWarning, match="guidance not applied: refused for the test"):
        accelerate(pipe, "off", guidance=scale_technique.Config(refuse=True))
    report = pipe.acceleration.report()
    assert report.applied == [] and report.skipped[0]["reason"] == "refused for the test"
    pipe.acceleration.remove()


def test_unknown_denoiser_warns_and_lists_support(pipelines):
    from diffusers import UNet2DConditionModel

    class MyUNet(torch.nn.Module):
        pass

    pipe = make_pipeline("sd")
    unet = pipe.unet
    fake = MyUNet()
    fake.forward = unet.forward
    pipe.unet = fake
    with pytest.warns(UserWarning, match="(?s)MyUNet is not in the model-family table.*Supported denoisers"):
        accelerate(pipe, "fast")
    assert pipe.acceleration.family.name == "generic"
    pipe.acceleration.remove()
    assert isinstance(unet, UNet2DConditionModel)


def test_fast_preset_without_techniques_says_so(pipelines, monkeypatch):
    monkeypatch.setattr(patches, "available", lambda: {})
    pipe = pipelines("sd")
    with pytest.warns(UserWarning, match="no technique available"):
        accelerate(pipe, "fast")
    pipe.acceleration.remove()
