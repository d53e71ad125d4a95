"""Learned schedules shipped per model: the fingerprint, the presets' use of them on the demo
DiT, user choices winning over them, other models keeping the heuristics."""

import json
import os

import pytest
import torch

from accelerate_diffusion import accelerate, demo
from accelerate_diffusion.presets import PRESETS
from accelerate_diffusion.schedules import CacheSchedule
from accelerate_diffusion.schedules.cache_schedule import DATA_DIR
from accelerate_diffusion.schedules.learned import MODEL_FILE, fingerprint, folder_for, preset_schedule

pytestmark = pytest.mark.skipif(not demo.is_available("dit"), reason="demo DiT weights not present")


@pytest.fixture(scope="module")
def dit():
    return demo.load_pipeline("dit")


def _schedule_in_use(pipe):
    return pipe.acceleration.plan["block_cache"].schedule


def test_fingerprint_survives_save_and_load(pipelines, tmp_path):
    transformer = pipelines("sd3").transformer
    transformer.save_pretrained(tmp_path)
    reloaded = type(transformer).from_pretrained(tmp_path)
    assert fingerprint(reloaded) == fingerprint(transformer)
    assert fingerprint(transformer) != fingerprint(pipelines("pixart").transformer)


def test_demo_dit_has_a_shipped_front_whose_picks_beat_the_heuristics(dit):
    folder = folder_for(dit.transformer)
    assert folder is not None and folder.startswith(DATA_DIR)
    info = json.load(open(os.path.join(folder, MODEL_FILE)))
    assert info["presets"], "no preset uses a learned schedule"
    for preset, pick in info["presets"].items():
        sched = CacheSchedule.load(os.path.join(folder, pick["file"]))
        assert sched.num_blocks == dit.transformer.config.num_layers
        # the pick rule: at least as faithful on the calibration prompts, and faster
        assert pick["quality_loss"] <= pick["replaced_quality_loss"]
        assert pick["macs_ratio"] > pick["replaced_macs_ratio"]
        assert pick["replaces"] == PRESETS[preset].settings["dit"]["block_cache"]["schedule"]


def test_presets_use_the_learned_schedule_on_the_demo_dit(dit):
    info = json.load(open(os.path.join(folder_for(dit.transformer), MODEL_FILE)))
    preset = next(iter(info["presets"]))
    learned = preset_schedule(dit.transformer, preset)
    accelerate(dit, preset)
    try:
        used = _schedule_in_use(dit)
        assert isinstance(used, CacheSchedule) and used == learned
        assert "ecad-demo-dit" in str(dit.acceleration.report())
        for steps in (learned.num_steps, 6):
            out = dit("a red circle", num_inference_steps=steps, output_type="latent",
                      generator=torch.Generator().manual_seed(0)).images
            stats = next(i for i in dit.acceleration.report().applied if i["technique"] == "block_cache")["stats"]
            assert torch.isfinite(out).all()
            if steps == learned.num_steps:
                assert stats["resampled"] == "no"
            else:   # another step count: the preset's heuristic, built for it, not a resampled schedule
                assert "fallback" in stats["resampled"]
                assert PRESETS[preset].settings["dit"]["block_cache"]["schedule"] in stats["resampled"]
    finally:
        dit.acceleration.remove()


def test_fallback_is_checked(pipelines):
    pipe = pipelines("sd3")
    with pytest.raises(ValueError, match="fallback"):
        accelerate(pipe, "off", block_cache={"schedule": "fora:2", "fallback": "fora:3"})
    with pytest.raises(ValueError, match="fallback"):
        accelerate(pipe, "off", block_cache={"schedule": "fora:2", "fallback": 3})
    assert getattr(pipe, "acceleration", None) is None or not pipe.acceleration.handles


def test_user_choices_win_over_the_learned_schedule(dit):
    preset = next(iter(json.load(open(os.path.join(folder_for(dit.transformer), MODEL_FILE)))["presets"]))
    for overrides in ({"block_cache": {"schedule": "fora:2"}}, {"block_cache": {"mode": "dynamic"}}):
        accelerate(dit, preset, **overrides)
        try:
            config = dit.acceleration.plan["block_cache"]
            assert not isinstance(config.schedule, CacheSchedule) or config.mode == "dynamic"
            if config.mode == "schedule":
                assert config.schedule == "fora:2"
        finally:
            dit.acceleration.remove()
    accelerate(dit, preset, block_cache={"max_reuse": 0})        # a field other than schedule/mode
    try:
        assert _schedule_in_use(dit) == preset_schedule(dit.transformer, preset)
    finally:
        dit.acceleration.remove()


def test_other_models_keep_the_heuristic(pipelines):
    pipe = pipelines("sd3")
    assert folder_for(pipe.transformer) is None
    accelerate(pipe, "balanced")
    try:
        assert _schedule_in_use(pipe) == PRESETS["balanced"].settings["dit"]["block_cache"]["schedule"]
    finally:
        pipe.acceleration.remove()
