"""Works the way people run diffusers: the usage matrix (eval/compat.py) on every family under
`fast` and `max`, pipelines sharing components, PixArt's CFG flag, and concurrent threads."""

import copy
import threading

import pytest
import torch

from accelerate_diffusion import ConcurrentUseError, accelerate
from accelerate_diffusion.eval import compat
from accelerate_diffusion.testing import call_kwargs, make_pipeline, run


@pytest.mark.parametrize("preset", compat.PRESETS)
@pytest.mark.parametrize("row", compat.ROWS)
def test_every_usage_works_or_is_refused_loudly(row, preset):
    failures = []
    for usage in compat.USAGES:
        outcome = compat.check(row, usage, preset)
        if outcome.status == "FAILS":
            failures.append(f"{usage} / {preset}: {outcome.detail}")
        elif outcome.status == "works" and usage != "pipeline sharing the components":
            assert outcome.ran, f"{usage} / {preset}: accelerated but nothing was saved or reported"
    assert failures == []


def test_few_step_runs_are_left_untouched_and_the_report_says_so():
    pipe = make_pipeline("sd")
    reference = run(pipe, "sd", steps=4)
    accelerate(pipe, "max")
    assert torch.equal(run(pipe, "sd", steps=4), reference)
    text = str(pipe.acceleration.report())
    assert "deepcache sat this generation out: 4 steps < min_steps 8" in text
    run(pipe, "sd", steps=10)
    assert pipe.acceleration.report().generation["counters"]["deepcache_cached"] > 0
    pipe.acceleration.remove()


@pytest.mark.parametrize("name", ["sd", "pixart"])
def test_a_pipeline_sharing_the_denoiser_runs_the_original_and_is_not_counted(name):
    a = make_pipeline(name)
    b = type(a)(**{**a.components, "scheduler": copy.deepcopy(a.scheduler)})
    b.set_progress_bar_config(disable=True)
    reference_b = run(b, name, steps=10)
    accelerate(a, "fast")
    fast_a = run(a, name, steps=10)
    calls = a.acceleration.report().generation["counters"]["denoiser_calls"]
    assert torch.equal(run(b, name, steps=10), reference_b)            # exactly the original
    assert a.acceleration.report().generation["counters"]["denoiser_calls"] == calls   # not a's calls
    accelerate(b, "fast")                                               # both accelerated
    assert torch.equal(run(b, name, steps=10), fast_a) and torch.equal(run(a, name, steps=10), fast_a)
    a.acceleration.remove()
    assert torch.equal(run(b, name, steps=10), fast_a)                  # b keeps its own
    b.acceleration.remove()
    assert torch.equal(run(b, name, steps=10), reference_b)


def test_from_pipe_sharing_the_scheduler_too():
    from diffusers import AutoPipelineForImage2Image

    a = make_pipeline("sd")
    accelerate(a, "fast")
    b = AutoPipelineForImage2Image.from_pipe(a)           # shares a's (wrapped) scheduler
    b.set_progress_bar_config(disable=True)
    kw = {k: v for k, v in call_kwargs("sd", steps=12).items() if k not in ("height", "width")}
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = b(**kw, image=image, strength=0.75).images
    a.acceleration.remove()
    kw["generator"] = torch.Generator().manual_seed(0)
    assert torch.equal(b(**kw, image=image, strength=0.75).images, out)


def test_second_pipeline_from_components_both_at_off():
    """What diffusers' own pipeline tests do (test_encode_prompt_works_in_isolation)."""
    a = make_pipeline("sdxl")
    reference = run(a, "sdxl", steps=3)
    accelerate(a, "off")
    b = type(a)(**a.components)
    b.set_progress_bar_config(disable=True)
    accelerate(b, "off")
    assert torch.equal(run(b, "sdxl", steps=3), reference) and torch.equal(run(a, "sdxl", steps=3), reference)
    a.acceleration.remove()
    b.acceleration.remove()


def test_pixart_cfg_comes_from_the_pipeline_not_from_the_latents():
    """Two prompts, one seed, guidance 1: the batch is two samples, not [uncond, cond]."""
    pipe = make_pipeline("pixart")
    pair = lambda: pipe(**call_kwargs("pixart", steps=10, guidance_scale=1.0,  # noqa: E731
                                      prompt=["a red circle above a blue square", "a green star"])).images
    reference = pair()            # one generator: both samples start from the same latents' rows
    accelerate(pipe, "off", guidance={"mode": "adaptive", "threshold": -1.0})     # would switch at once
    out = pair()
    status = pipe.acceleration.report().applied[0]["stats"]["status"]
    pipe.acceleration.remove()
    assert torch.equal(out, reference) and "without classifier-free guidance" in status


def test_a_second_thread_entering_a_running_pipeline_is_refused():
    pipe = make_pipeline("sd")
    accelerate(pipe, "fast")
    inside, release, errors = threading.Event(), threading.Event(), []

    def slow_step(p, i, t, kw):
        inside.set()
        release.wait(10)
        return {}

    def first():
        run(pipe, "sd", steps=10, callback_on_step_end=slow_step)

    worker = threading.Thread(target=first)
    worker.start()
    assert inside.wait(10)
    try:
        run(pipe, "sd", steps=10)
    except ConcurrentUseError as exc:
        errors.append(str(exc))
    finally:
        release.set()
        worker.join()
    assert errors and "one pipeline per worker, or a lock" in errors[0]
    reference = run(pipe, "sd", steps=10)          # the first generation's state was not disturbed
    pipe.acceleration.remove()
    accelerate(pipe, "fast")
    assert torch.equal(run(pipe, "sd", steps=10), reference)
    pipe.acceleration.remove()
