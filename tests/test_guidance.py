"""Adaptive guidance: exact when off, real work removed when on, every CFG layout."""

import json

import pytest
import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.patches import guidance
from accelerate_diffusion.schedules import linear_ag
from accelerate_diffusion.testing import run, surface

STEPS = 4
# a module at the denoiser's entry: its input shows which rows really run
ENTRY = {"sd": "conv_in", "pixart": "pos_embed", "sd3": "pos_embed", "wan": "patch_embedding",
         "flux": "x_embedder"}
FLUX_CFG = dict(true_cfg_scale=4.0, negative_prompt="blurry")


def _extra(name):
    return FLUX_CFG if name == "flux" else {}


def _rows_seen(pipe, name):
    """Record the batch size of every denoiser evaluation that really runs."""
    rows = []
    denoiser = pipe.unet if name == "sd" else pipe.transformer
    handle = getattr(denoiser, ENTRY[name]).register_forward_pre_hook(
        lambda m, args: rows.append(args[0].shape[0]))
    return rows, handle


def _stats(pipe):
    return pipe.acceleration.report().applied[0]["stats"]


@pytest.mark.parametrize("name", ["sd", "pixart", "sd3", "wan", "flux"])
def test_never_switch_is_exact_and_switch_runs_cond_only(pipelines, name):
    pipe = pipelines(name)
    reference = run(pipe, name, steps=STEPS, **_extra(name))
    untouched = surface(pipe)

    accelerate(pipe, "off", guidance={"threshold": 1.5})      # never switches
    assert torch.equal(run(pipe, name, steps=STEPS, **_extra(name)), reference)
    assert _stats(pipe)["switch_step_per_sample"] == [None]
    pipe.acceleration.remove()

    accelerate(pipe, "off", guidance={"threshold": -1.0})     # switches after step 0
    rows, handle = _rows_seen(pipe, name)
    changed = run(pipe, name, steps=STEPS, **_extra(name))
    handle.remove()
    # batched: [uncond, cond] then cond only; separate: cond + uncond calls, then cond only
    expected = [2] + [1] * (STEPS - 1) if name in ("sd", "pixart", "sd3") else [1, 1] + [1] * (STEPS - 1)
    assert rows == expected
    stats = _stats(pipe)
    assert stats["switch_step_per_sample"] == [1]
    assert stats["nfe"].startswith(f"{STEPS + 1} of {2 * STEPS} sample-evaluations")
    assert not torch.equal(changed, reference)
    pipe.acceleration.remove()

    assert torch.equal(run(pipe, name, steps=STEPS, **_extra(name)), reference)
    assert surface(pipe) == untouched


def test_after_switch_step_equals_guidance_one(pipelines):
    """AG from step 1 on == the original pipeline with guidance 1 (+1e-6) from step 1 on."""
    pipe = pipelines("sd")

    def guidance_one_after_step_0(p, i, t, kw):
        p._guidance_scale = 1.0 + 1e-6   # still "CFG" for the batch layout, cond in effect
        return {}

    expected = run(pipe, "sd", steps=STEPS, callback_on_step_end=guidance_one_after_step_0,
                   guidance_rescale=0.7)
    accelerate(pipe, "off", guidance={"threshold": -1.0})
    got = run(pipe, "sd", steps=STEPS, guidance_rescale=0.7)
    pipe.acceleration.remove()
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(run(pipe, "sd", steps=STEPS, guidance_rescale=0.7), expected, atol=1e-3)


def test_truncation_interval_and_per_sample(pipelines):
    pipe = pipelines("sd")
    accelerate(pipe, "off", guidance={"mode": "truncation", "cfg_fraction": 0.5})
    rows, handle = _rows_seen(pipe, "sd")
    run(pipe, "sd", steps=STEPS)
    assert rows == [2, 2, 1, 1]
    pipe.acceleration.remove()
    accelerate(pipe, "off", guidance={"mode": "interval", "interval": [0.25, 0.75]})
    rows.clear()
    run(pipe, "sd", steps=STEPS)
    assert rows == [1, 2, 2, 1]
    assert _stats(pipe)["guided_steps_per_sample"] == [2]
    pipe.acceleration.remove()

    # per sample: a threshold between the two samples' gammas switches one of them only
    accelerate(pipe, "off", guidance={"threshold": 1.5})
    reference = run(pipe, "sd", steps=STEPS, num_images_per_prompt=2)
    gammas = pipe.acceleration.stats()["guidance"]["gammas"][0]
    pipe.acceleration.remove()
    assert gammas[0] != gammas[1]
    accelerate(pipe, "off", guidance={"threshold": sum(gammas) / 2})
    rows.clear()
    out = run(pipe, "sd", steps=STEPS, num_images_per_prompt=2)
    high = 0 if gammas[0] > gammas[1] else 1
    assert rows[:2] == [4, 3]                     # step 1: one uncond row dropped
    switched = _stats(pipe)["switch_step_per_sample"]
    assert switched[high] == 1 and switched[1 - high] != 1
    pipe.acceleration.remove()
    assert not torch.allclose(out[high], reference[high], atol=1e-3)
    accelerate(pipe, "off", guidance={"threshold": sum(gammas) / 2, "per_sample": False})
    rows.clear()
    run(pipe, "sd", steps=STEPS, num_images_per_prompt=2)
    assert rows[:2] == [4, 4] and set(rows) <= {2, 4}   # batch rule: all samples, or none
    pipe.acceleration.remove()
    handle.remove()


def test_no_cfg_is_inactive_and_reported(pipelines):
    pipe = pipelines("sd")
    reference = run(pipe, "sd", steps=2, guidance_scale=1.0)
    accelerate(pipe, "off", guidance={"threshold": -1.0})
    assert torch.equal(run(pipe, "sd", steps=2, guidance_scale=1.0), reference)
    assert _stats(pipe)["status"].startswith("inactive: the pipeline ran without classifier-free")
    assert "inactive" in str(pipe.acceleration.report())
    pipe.acceleration.remove()
    flux = pipelines("flux")                      # true_cfg_scale 1: a single call per step
    accelerate(flux, "off", guidance={"threshold": -1.0})
    run(flux, "flux", steps=2)
    assert _stats(flux)["status"].startswith("inactive")
    flux.acceleration.remove()


def test_bad_config_values():
    with pytest.raises(ValueError, match=r"guidance\.mode: 'fast' is not allowed; allowed: 'adaptive'"):
        guidance.Config(mode="fast")
    with pytest.raises(ValueError, match=r"guidance\.threshold: 3 is out of range"):
        guidance.Config(threshold=3)
    with pytest.raises(ValueError, match=r"guidance\.cfg_fraction: 0 is out of range; allowed \(0"):
        guidance.Config(mode="truncation", cfg_fraction=0)
    with pytest.raises(ValueError, match=r"guidance\.interval: lo must be < hi"):
        guidance.Config(interval=(0.6, 0.2))
    with pytest.raises(ValueError, match=r"guidance\.interval: must be a pair"):
        guidance.Config(interval=0.5)
    with pytest.raises(ValueError, match=r"guidance\.coefficients: 'nope' is neither a file"):
        guidance.load_coefficients("nope")


def test_linear_ag_fit_and_use(pipelines, tmp_path):
    from accelerate_diffusion.testing import call_kwargs

    pipe = pipelines("sd")
    calls = [call_kwargs("sd", steps=STEPS, seed=s, prompt=p)
             for s, p in enumerate(["a red circle", "a blue square"])]
    path = tmp_path / "sd.json"
    data = linear_ag.fit_pipeline(pipe, calls, path, max_ratio=10.0)
    assert json.loads(path.read_text())["replace"] == data["replace"] == [1, 3]
    assert len(data["coefficients"]) == STEPS and data["scheduler"] == "DDIMScheduler"

    reference = run(pipe, "sd", steps=STEPS)
    accelerate(pipe, "off", guidance={"mode": "linear", "coefficients": str(path), "threshold": 1.5})
    rows, handle = _rows_seen(pipe, "sd")
    out = run(pipe, "sd", steps=STEPS)
    handle.remove()
    assert rows == [2, 1, 2, 1]
    stats = _stats(pipe)
    assert stats["linear"] == "2 uncond predictions estimated" and "2 saved" in stats["nfe"]
    assert not torch.equal(out, reference)
    with pytest.warns(UserWarning, match="fitted for 4 steps, this generation runs 3"):
        run(pipe, "sd", steps=3)
    pipe.acceleration.remove()

    other = pipelines("pixart")                  # no coefficients for this model: loud skip
    with pytest.warns(UserWarning, match="guidance not applied: no LinearAG coefficients"):
        accelerate(other, "off", guidance={"mode": "linear"})
    other.acceleration.remove()
    with pytest.warns(UserWarning, match="fitted for another model"):
        accelerate(other, "off", guidance={"mode": "linear", "coefficients": str(path)})
    other.acceleration.remove()


def test_shipped_coefficients_are_found_by_model(pipelines):
    pipe = pipelines("sd")                         # tiny-sd-micro-DDIMScheduler-20.json
    accelerate(pipe, "off", guidance={"mode": "linear"})
    with pytest.warns(UserWarning, match="fitted for 20 steps, this generation runs 2: AG only"):
        run(pipe, "sd", steps=2)
    assert "AG only" in _stats(pipe)["linear"]
    pipe.acceleration.remove()


def test_composes_with_deepcache(pipelines):
    """Guidance is the outer hook: DeepCache inside sees the halved batch after the switch."""
    pipe = pipelines("sd")
    reference = run(pipe, "sd", steps=STEPS)
    accelerate(pipe, "off", guidance={"threshold": -1.0}, deepcache={"cache_interval": 2})
    run(pipe, "sd", steps=STEPS)
    report = pipe.acceleration.report()
    assert [a["technique"] for a in report.applied] == ["deepcache", "guidance"]
    assert "3 saved" in report.applied[1]["stats"]["nfe"]
    pipe.acceleration.remove()
    assert torch.equal(run(pipe, "sd", steps=STEPS), reference)


def test_row_selection_and_output_types():
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    n, index = 4, torch.tensor([1, 3])
    args = {"x": torch.arange(4), "scalar_t": torch.tensor(5), "ids": torch.zeros(7, 3),
            "added": {"text_embeds": torch.arange(8).view(4, 2)}, "res": (torch.arange(4),)}
    picked = guidance._select(args, n, index)
    assert picked["x"].tolist() == [1, 3] and picked["scalar_t"].item() == 5
    assert picked["ids"].shape == (7, 3) and picked["added"]["text_embeds"].tolist() == [[2, 3], [6, 7]]
    assert picked["res"][0].tolist() == [1, 3]
    new = torch.ones(2)
    assert guidance._with_preds((torch.zeros(2), "extra"), [new]) == (new, "extra")
    out = guidance._with_preds(Transformer2DModelOutput(sample=torch.zeros(2)), [new])
    assert isinstance(out, Transformer2DModelOutput) and out.sample is new


@pytest.mark.parametrize("name", ["sd", "wan"])      # batched [uncond, cond] and separate calls
def test_cfg_cache_evaluates_uncond_every_interval(pipelines, name):
    pipe = pipelines(name)
    reference = run(pipe, name, steps=STEPS)
    accelerate(pipe, "off", guidance={"mode": "cache", "cache_interval": 1})
    assert torch.equal(run(pipe, name, steps=STEPS), reference)
    pipe.acceleration.remove()

    accelerate(pipe, "off", guidance={"mode": "cache", "cache_interval": 2})
    rows, handle = _rows_seen(pipe, name)
    cached = run(pipe, name, steps=STEPS)
    handle.remove()
    assert rows == ([2, 1, 2, 1] if name == "sd" else [1, 1, 1, 1, 1, 1])   # uncond at steps 0 and 2
    stats = _stats(pipe)
    assert stats["nfe"].startswith("6 of 8 sample-evaluations")
    assert stats["cache"].endswith("2 uncond predictions = cond + the last evaluated (uncond - cond)")
    pipe.acceleration.remove()
    accelerate(pipe, "off", guidance={"mode": "truncation", "cfg_fraction": 0.5})
    truncated = run(pipe, name, steps=STEPS)      # also 6 of 8, but cond-only steps at the end
    pipe.acceleration.remove()
    assert not torch.equal(cached, reference) and not torch.equal(cached, truncated)
