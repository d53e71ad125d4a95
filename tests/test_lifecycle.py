"""The framework owns install and undo: hooks other libraries installed survive, a failure at
any point of any technique's apply leaves the pipeline (and its previous acceleration) as it
was, nested scopes restore the outer acceleration, per-technique entry points compose."""

import pytest
import torch
from accelerate.hooks import ModelHook as AccelerateHook
from accelerate.hooks import add_hook_to_module, remove_hook_from_module
from diffusers.hooks import HookRegistry
from diffusers.hooks import ModelHook as DiffusersHook

from accelerate_diffusion import (DeepCacheConfig, GuidanceConfig, accelerate, accelerated, apply_deepcache,
                                  apply_guidance)
from accelerate_diffusion.families import find_denoiser
from accelerate_diffusion.journal import Journal
from accelerate_diffusion.testing import PIPELINES, make_pipeline, run, surface
from accelerate_diffusion.testing_video import make_far_pipeline, make_skyreels_df_pipeline, run_far, run_skyreels

FAR_ROLL = dict(latent_frames=6, chunk=2)
DF_ROLL = dict(latent_frames=8, block=2, ar_step=1, steps=2)


def _video(name):
    if name == "anyflow_far":
        return make_far_pipeline("micro"), lambda p: run_far(p, "micro", **FAR_ROLL)
    return make_skyreels_df_pipeline("micro"), lambda p: run_skyreels(p, "micro", **DF_ROLL)


def _pipeline(name, pipelines=None):
    """A pipeline and its generate(); ``pipelines`` (the session cache) unless the test leaves
    other libraries' traces behind, then a fresh one."""
    if name in PIPELINES:
        return (pipelines(name) if pipelines else make_pipeline(name)), lambda p: run(p, name, steps=3)
    return _video(name)


class _CountAccelerate(AccelerateHook):
    """Stands in for HF Accelerate's offload hooks (enable_model_cpu_offload, device_map, cpu_offload)."""

    def __init__(self):
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


class _CountDiffusers(DiffusersHook):
    """A hook a user registered in diffusers' registry on the denoiser."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


@pytest.mark.parametrize("name", [*PIPELINES, "anyflow_far", "skyreels_v2"])
def test_hooks_installed_before_survive_accelerate_and_remove(name):
    pipe, generate = _pipeline(name)
    denoiser = find_denoiser(pipe)[1]
    theirs, user = _CountAccelerate(), _CountDiffusers()
    add_hook_to_module(denoiser, theirs)
    HookRegistry.check_if_exists_or_initialize(denoiser).register_hook(user, "user.count")
    reference = generate(pipe)
    calls = theirs.calls
    before = surface(pipe)
    accelerate(pipe, "fast")
    generate(pipe)
    assert theirs.calls > calls                      # they ran under acceleration too
    pipe.acceleration.remove()
    assert surface(pipe) == before
    theirs.calls = user.calls = 0
    assert torch.equal(generate(pipe), reference)
    assert theirs.calls == calls and user.calls == calls     # both still run, every call


@pytest.mark.parametrize("name", ["sd", "pixart", "flux"])
def test_offload_hook_added_after_accelerate_keeps_running_after_remove(name):
    pipe = make_pipeline(name)
    denoiser = find_denoiser(pipe)[1]
    reference = run(pipe, name, steps=3)
    accelerate(pipe, "fast")
    theirs = _CountAccelerate()
    add_hook_to_module(denoiser, theirs)          # e.g. enable_model_cpu_offload() after accelerate()
    pipe.acceleration.remove()
    assert torch.equal(run(pipe, name, steps=3), reference)
    assert theirs.calls == 3
    remove_hook_from_module(denoiser)             # and theirs comes off cleanly too
    assert torch.equal(run(pipe, name, steps=3), reference) and theirs.calls == 3


# -- fault injection ---------------------------------------------------------------------------
_CHANGES = ("register_hook", "set_attr", "wrap_method", "set_processor", "add_callback", "put", "record")


class _Faults:
    """Make the n-th top-level change an acceleration asks the journal for fail (None: count)."""

    def __init__(self, monkeypatch, fail_at=None):
        self.count, self.fail_at, self.depth = 0, fail_at, 0
        for name in _CHANGES:
            monkeypatch.setattr(Journal, name, self._wrap(getattr(Journal, name)))

    def _wrap(self, method):
        faults = self

        def wrapper(journal, *args, **kwargs):
            if faults.depth == 0:
                if faults.count == faults.fail_at:
                    faults.fail_at = None          # once: putting the previous acceleration back works
                    raise RuntimeError("injected failure")
                faults.count += 1
            faults.depth += 1
            try:
                return method(journal, *args, **kwargs)
            finally:
                faults.depth -= 1

        return wrapper


TECHNIQUE_CASES = [
    ("sd", {"deepcache": {"cache_interval": 2}, "guidance": {"mode": "truncation"}}),
    ("pixart", {"block_cache": {"schedule": "fora:2"}, "attention": {"window": 0.5, "backend": "reference"}}),
    ("sd3", {"ras": {"sample_ratio": 0.5, "start_step": 1}}),
    ("flux", {"ras": {"sample_ratio": 0.5, "start_step": 1}}),
    ("pixart", {"block_cache": {"mode": "dynamic"}}),
    ("anyflow_far", {"kv_cache": {"encode": "compressed", "cross_topk": 2}}),
    ("skyreels_v2", {"kv_cache": {"budget_frames": 2}}),
]


@pytest.mark.parametrize("name, overrides", TECHNIQUE_CASES, ids=[f"{n}-{'+'.join(o)}" for n, o in TECHNIQUE_CASES])
def test_a_failure_at_any_change_unwinds_and_keeps_the_previous_acceleration(pipelines, monkeypatch, name, overrides):
    pipe, generate = _pipeline(name, pipelines)
    untouched = surface(pipe)
    accelerate(pipe, "fast")                 # a previous acceleration that must survive
    previous = pipe.acceleration
    expected = generate(pipe)
    with monkeypatch.context() as m:
        counting = _Faults(m)
        accelerate(pipe, "off", **overrides)
        total = counting.count
    pipe.acceleration.remove()
    assert total > 3
    for k in range(total):
        accelerate(pipe, "fast")
        previous = pipe.acceleration
        with monkeypatch.context() as m:
            _Faults(m, fail_at=k)
            with pytest.raises(RuntimeError, match="injected failure"):
                accelerate(pipe, "off", **overrides)
        assert pipe.acceleration is previous and previous.active, k
        if k in (0, total // 2, total - 1):
            assert torch.equal(generate(pipe), expected), k
        previous.remove()
        assert surface(pipe) == untouched, k     # nothing of the failed attempt was left behind


def test_a_failed_call_keeps_the_previous_acceleration(pipelines):
    pipe = pipelines("pixart")
    accelerate(pipe, "fast")
    fast = pipe.acceleration
    expected = run(pipe, "pixart", steps=4)
    with pytest.raises(ValueError, match="missing.json"):
        accelerate(pipe, "max", block_cache={"schedule": "missing.json"})
    assert pipe.acceleration is fast and fast.active and fast.preset == "fast"
    assert torch.equal(run(pipe, "pixart", steps=4), expected)
    fast.remove()


def test_nested_accelerated_restores_the_outer_acceleration(pipelines):
    pipe = pipelines("sd")
    reference = run(pipe, "sd", steps=10)
    accelerate(pipe, "fast")
    fast = run(pipe, "sd", steps=10)
    with accelerated(pipe, "max"):
        assert pipe.acceleration.preset == "max"
        assert not torch.equal(run(pipe, "sd", steps=10), fast)
    assert pipe.acceleration.preset == "fast" and pipe.acceleration.active
    assert torch.equal(run(pipe, "sd", steps=10), fast)
    pipe.acceleration.remove()
    with accelerated(pipe, "max"):
        pass
    assert not hasattr(pipe, "acceleration")
    assert torch.equal(run(pipe, "sd", steps=10), reference)


def test_per_technique_entry_points_compose(pipelines):
    pipe = pipelines("sd")
    reference = run(pipe, "sd", steps=6)
    untouched = surface(pipe)
    apply_deepcache(pipe, DeepCacheConfig(cache_interval=3))
    apply_guidance(pipe, mode="truncation", cfg_fraction=0.5)
    assert [h.technique for h in pipe.acceleration.handles] == ["deepcache", "guidance"]
    both = run(pipe, "sd", steps=6)
    pipe.acceleration.remove()
    accelerate(pipe, "off", deepcache=DeepCacheConfig(cache_interval=3),
               guidance=GuidanceConfig(mode="truncation", cfg_fraction=0.5))
    assert torch.equal(run(pipe, "sd", steps=6), both)
    pipe.acceleration.remove()
    assert surface(pipe) == untouched and not torch.equal(both, reference)
    with pytest.raises(ValueError, match="deepcache: unknown field"):
        apply_deepcache(pipe, interval=3)


def test_two_pipelines_in_one_process_share_no_global_state():
    a, b = make_pipeline("pixart"), make_pipeline("pixart")
    accelerate(a, "fast")
    accelerate(b, "max")
    out_b = run(b, "pixart", steps=4)
    a.acceleration.remove()
    assert torch.equal(run(b, "pixart", steps=4), out_b)
    b.acceleration.remove()


def test_a_hook_overriding_run_must_say_it_is_eager():
    from accelerate_diffusion.patches import TechniqueHook

    with pytest.raises(TypeError, match="set eager = True"):
        class Silent(TechniqueHook):           # noqa: F841  (would never be called)
            def run(self, module, forward, args, kwargs):
                return forward(*args, **kwargs)

    class Eager(TechniqueHook):
        eager = True

        def run(self, module, forward, args, kwargs):
            return forward(*args, **kwargs)
