"""The "auto" preset: calibrates against a quality target, stores the result, reuses it."""

import pytest
import torch

from accelerate_diffusion import accelerate
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
    assert cal["rung"] == -1 and not acc.plan and cal["generations_run"] == 4   # baseline + 3 bisection steps
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
    assert set(acc.plan) == set(ladder[-1])
    assert acc.plan["block_cache"].schedule == ladder[-1]["block_cache"]["schedule"]
    run(pipe, "pixart", steps=10)
    assert acc.stats()["block_cache"]["components reused"] > 0
    acc.remove()


def test_a_tight_budget_stops_early_and_keeps_what_it_knows(pipe, tmp_path):
    acc = auto(pipe, tmp_path, target_ssim=0.01, budget=2)   # baseline + one rung, no verification
    assert acc.calibration["generations_run"] == 2 and acc.calibration["rung"] == (len(AUTO_LADDERS["dit"]) - 1) // 2
    acc.remove()


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
