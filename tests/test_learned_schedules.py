"""Learned schedules shipped per model (schedules/learned.py): the fingerprint, presets using a
model's picks, mapped to the step counts they serve and the heuristic fallback outside them, user choices winning, other
models keeping the heuristics. The shipped folder is built in a temporary directory from a
tiny SD3, so the test does not depend on which fronts ship with the package."""

import json

import numpy as np
import pytest
import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.families import family_of
from accelerate_diffusion.presets import PRESETS
from accelerate_diffusion.schedules import CacheSchedule, ScheduleLayout, learned
from accelerate_diffusion.schedules.learned import MODEL_FILE, fingerprint, folder_for, preset_schedule

STEPS = 8        # the presets leave generations of fewer than 8 steps untouched
PRESET = "fast"


@pytest.fixture
def shipped(pipelines, tmp_path, monkeypatch):
    """A front folder for the micro SD3 whose model.json gives ``PRESET`` a 4-step schedule."""
    pipe = pipelines("sd3")
    layout = ScheduleLayout.of(family_of(pipe.transformer), pipe.transformer)
    recompute = np.ones((STEPS, layout.num_blocks, len(layout.components)), bool)
    recompute[2] = False                                   # reuse everything at step 2
    CacheSchedule("front-00", layout, recompute).save(tmp_path / "front-00.json")
    (tmp_path / MODEL_FILE).write_text(json.dumps({
        "fingerprint": fingerprint(pipe.transformer),
        "presets": {PRESET: {"file": "front-00.json"}}}))
    monkeypatch.setattr(learned, "_index", lambda: {fingerprint(pipe.transformer): str(tmp_path)})
    return pipe


def _block_cache(pipe):
    return pipe.acceleration.plan["block_cache"]


def _stats(pipe):
    return next(i for i in pipe.acceleration.report().applied if i["technique"] == "block_cache")["stats"]


def test_fingerprint_survives_save_and_load(pipelines, tmp_path):
    transformer = pipelines("sd3").transformer
    transformer.save_pretrained(tmp_path)
    reloaded = type(transformer).from_pretrained(tmp_path)
    assert fingerprint(reloaded) == fingerprint(transformer)
    assert fingerprint(transformer) != fingerprint(pipelines("pixart").transformer)


def test_preset_uses_the_models_pick_maps_it_and_falls_back_outside_its_range(shipped):
    pipe = shipped
    heuristic = PRESETS[PRESET].settings["dit"]["block_cache"]["schedule"]
    accelerate(pipe, PRESET, guidance=False)
    try:
        config = _block_cache(pipe)
        assert isinstance(config.schedule, CacheSchedule) and config.fallback == heuristic
        assert tuple(config.mapped_steps) == (7, 16)       # 0.8x-2x the searched 8 steps
        assert config.schedule == preset_schedule(pipe.transformer, PRESET)
        pipe("a red circle", num_inference_steps=STEPS, output_type="latent", generator=torch.Generator().manual_seed(0))
        stats = _stats(pipe)
        assert stats["resampled"] == "no"
        assert pipe.acceleration.state.counters["components_reused"] > 0
        pipe("a red circle", num_inference_steps=10, output_type="latent", generator=torch.Generator().manual_seed(0))
        assert _stats(pipe)["resampled"] == "8 -> 10 steps (normalised time)"       # no fallback
        pipe("a red circle", num_inference_steps=20, output_type="latent", generator=torch.Generator().manual_seed(0))
        assert "fallback" in _stats(pipe)["resampled"] and heuristic in _stats(pipe)["resampled"]
    finally:
        pipe.acceleration.remove()
    accelerate(pipe, "balanced")                      # a preset with no pick keeps its heuristic
    try:
        assert _block_cache(pipe).schedule == PRESETS["balanced"].settings["dit"]["block_cache"]["schedule"]
    finally:
        pipe.acceleration.remove()


def test_user_choices_win_over_the_pick(shipped):
    pipe = shipped
    for overrides in ({"block_cache": {"schedule": "fora:2"}}, {"block_cache": {"mode": "dynamic"}}):
        accelerate(pipe, PRESET, **overrides)
        try:
            config = _block_cache(pipe)
            assert not isinstance(config.schedule, CacheSchedule)
            assert config.mode == "dynamic" or config.schedule == "fora:2"
        finally:
            pipe.acceleration.remove()
    accelerate(pipe, PRESET, block_cache={"max_reuse": 0})        # a field other than schedule/mode
    try:
        assert isinstance(_block_cache(pipe).schedule, CacheSchedule)
    finally:
        pipe.acceleration.remove()


def test_models_without_a_shipped_front_keep_the_heuristic(pipelines):
    pipe = pipelines("sd3")
    assert folder_for(pipe.transformer) is None
    accelerate(pipe, PRESET)
    try:
        assert _block_cache(pipe).schedule == PRESETS[PRESET].settings["dit"]["block_cache"]["schedule"]
    finally:
        pipe.acceleration.remove()


def test_fallback_is_checked(pipelines):
    pipe = pipelines("sd3")
    for bad in ({"schedule": "fora:2", "fallback": "fora:3"}, {"schedule": "fora:2", "fallback": 3},
                {"mapped_steps": (20, 10)}, {"mapped_steps": 25}):
        with pytest.raises(ValueError, match="fallback|mapped_steps"):
            accelerate(pipe, "off", block_cache=bad)
        if getattr(pipe, "acceleration", None) is not None:
            pipe.acceleration.remove()


def test_the_demo_dit_presets_use_its_shipped_picks():
    # The shipped demo-DiT front (scripts/ship_learned_schedules.py) must still match the demo
    # DiT's fingerprint: a config change would silently bring the heuristics back.
    import os

    from accelerate_diffusion import demo

    pipe = demo.load_pipeline("dit")
    folder = folder_for(pipe.transformer)
    assert folder is not None and os.path.basename(folder) == "ecad-demo-dit-25steps"
    with open(os.path.join(folder, MODEL_FILE)) as f:
        picks = json.load(f)["presets"]
    assert set(picks) == {"balanced", "fast", "max"}        # quality's heuristic is itself on the front
    for preset in ("quality", "balanced", "fast", "max"):
        accelerate(pipe, preset)
        try:
            schedule = _block_cache(pipe).schedule
            if preset in picks:
                assert isinstance(schedule, CacheSchedule)
                assert schedule.name == f"ecad-demo-dit-25steps/{picks[preset]['file'][:-5]}"
            else:
                assert schedule == PRESETS[preset].settings["dit"]["block_cache"]["schedule"]
        finally:
            pipe.acceleration.remove()
