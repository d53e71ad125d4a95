"""The "auto" preset: calibrates against a quality target, stores the result, reuses it."""

import pytest
import torch

from accelerate_diffusion import accelerate, auto_predict
from accelerate_diffusion.auto import choose
from accelerate_diffusion.families import FAMILIES, family_of

FAMILY = {family.name: family for family in FAMILIES}
from accelerate_diffusion.presets import AUTO_LADDERS
from accelerate_diffusion.testing import make_pipeline, run

CALL = dict(num_inference_steps=10, height=32, width=32, guidance_scale=5.0, max_sequence_length=48,
            use_resolution_binning=False, clean_caption=False)


@pytest.fixture(scope="module")
def pipe():
    return make_pipeline("pixart")


def auto(pipe, tmp_path, **target):
    return accelerate(pipe, "auto", calibration=CALL, calibration_prompts=["a red circle"], cache_dir=tmp_path,
                      progress=False, **target).acceleration


def denoiser_calls(pipe):
    calls = []
    handle = pipe.transformer.pos_embed.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls, handle


def test_unreachable_target_keeps_the_pipeline_exact_and_is_remembered(pipe, tmp_path):
    reference = run(pipe, "pixart", steps=10)
    acc = auto(pipe, tmp_path, target_psnr=1e6)
    cal = acc.calibration
    # baseline + one rung: fitted on it, the predictor expects every milder rung to miss as well
    # (bisection alone: baseline + 3 steps)
    assert cal["rung"] == -1 and not acc.plan and cal["generations_run"] == 2
    assert torch.equal(run(pipe, "pixart", steps=10), reference)
    assert "no rung met it" in str(acc.report())
    acc.remove()

    calls, handle = denoiser_calls(pipe)
    again = auto(pipe, tmp_path, target_psnr=1e6)           # a later call: from the stored file, no generation
    handle.remove()
    assert calls == [] and again.calibration["generations_run"] == 0 and again.calibration["rung"] == -1
    again.remove()


def test_loose_target_picks_the_last_rung_within_budget(pipe, tmp_path):
    acc = auto(pipe, tmp_path, target_psnr=0.0, budget=6)
    cal = acc.calibration
    ladder = AUTO_LADDERS["dit"]
    assert cal["rung"] == len(ladder) - 1 and cal["generations_run"] <= 6
    assert cal["verified"] is not None                       # checked on a held-out seed
    # the last rung: the max preset (block caching and CFG truncation) with a coarser schedule
    assert ladder[-1]["preset"] == "max" and set(acc.plan) == {"block_cache", "guidance"}
    assert acc.plan["block_cache"].schedule == ladder[-1]["block_cache"]["schedule"]
    assert acc.plan["guidance"].mode == "truncation"
    run(pipe, "pixart", steps=10)
    assert acc.stats()["block_cache"]["components reused"] > 0
    acc.remove()


def test_a_tight_budget_stops_early_and_keeps_what_it_knows(pipe, tmp_path):
    acc = auto(pipe, tmp_path, target_ssim=0.01, budget=2)   # baseline + one rung, no verification
    assert acc.calibration["generations_run"] == 2 and acc.calibration["rung"] == (len(AUTO_LADDERS["dit"]) - 1) // 2
    acc.remove()


def test_the_predictor_ranks_rungs_by_aggressiveness():
    # a known case: every block and the output change by 10 % a step, the guidance term is 30 %
    # of the prediction and changes by 20 % a step; each ladder rung reuses more than the one before
    from accelerate_diffusion.schedules import ScheduleLayout

    steps, blocks = 20, 4
    signals = {"blocks": [[0.1] * blocks] * steps, "output": [0.0] + [0.1] * (steps - 1),
               "guidance": [0.3] * steps, "guidance_change": [0.0] + [0.2] * (steps - 1)}
    layout = ScheduleLayout("sd3", (("attn", "ff", "ff_context"),) * blocks)
    for name, kwargs in (("sd3", dict(layout=layout)), ("unet", {})):
        family = FAMILY[name]
        errors = [auto_predict.predicted_error(auto_predict.rung_settings(rung, family), signals, guidance_scale=5.0,
                                               **kwargs) for rung in AUTO_LADDERS[family.kind]]
        assert all(a < b for a, b in zip(errors, errors[1:])), (name, errors)
        predicted = auto_predict.predicted_psnr(errors, {0: 40.0})
        assert predicted[0] == pytest.approx(40.0) and all(a > b for a, b in zip(predicted, predicted[1:]))
        # twice the error costs 20 log10(2) = 6.02 dB
        assert auto_predict.predicted_psnr([0.1, 0.2], {0: 30.0})[1] == pytest.approx(30.0 - 6.0206, abs=1e-3)
    assert auto_predict.predicted_error(AUTO_LADDERS["unet"][0], {**signals, "output": [0.0] * steps}) == 0.0
    # a preset rung runs the preset's settings, the rung's overrides on top
    settings = auto_predict.rung_settings({"preset": "max", "guidance": False}, FAMILY["sd3"])
    assert set(settings) == {"block_cache"} and settings["block_cache"]["schedule"] == "fora:4,first=3,last=1"


def test_the_predictor_spends_fewer_generations_than_bisection(pipe, tmp_path):
    from accelerate_diffusion import accelerated

    family, denoiser = family_of(pipe.transformer), pipe.transformer

    def calibrate(predict, folder):
        def trial(rung):        # as accelerate() runs a rung: overrides on its base preset
            return accelerated(pipe, rung.get("preset", "off"), **{k: v for k, v in rung.items() if k != "preset"})

        return choose(pipe, family, denoiser, trial,
                           target_psnr=0.0, budget=8, prompts=["a red circle"], call=CALL, cache=tmp_path / folder,
                           progress=False, predict=predict)

    bisection, predicted = calibrate(False, "bisection"), calibrate(True, "predicted")
    last = len(AUTO_LADDERS["dit"]) - 1
    assert bisection["rung"] == predicted["rung"] == last
    assert bisection["verified"] is not None and predicted["verified"] is not None
    # bisection: baseline + 3 steps + verification (2); predictor: baseline + the middle rung +
    # the rung predicted (the last) + verification (2)
    assert (bisection["generations_run"], predicted["generations_run"]) == (6, 5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(preset="auto"), "give exactly one quality target"),
    (dict(preset="auto", target_psnr=30, target_ssim=0.9), "give exactly one quality target"),
    (dict(preset="auto", target_ssim=2), "target_ssim must be a number in (0, 1]"),
    (dict(preset="auto", target_psnr=30, budget=1), "budget"),
    (dict(preset="fast", target_psnr=30), "target_psnr: only with preset 'auto'"),
])
def test_errors_name_the_field(pipe, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        accelerate(pipe, cache_dir=tmp_path, progress=False, **kwargs)
    assert getattr(pipe, "acceleration", None) is None or not pipe.acceleration.active
