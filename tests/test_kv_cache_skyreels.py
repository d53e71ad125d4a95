"""TempCache on SkyReels-V2 diffusion forcing: exact off setting, restore, budget, guards, errors."""

import warnings

import pytest
import torch

from accelerate_diffusion import accelerate, patches
from accelerate_diffusion.patches import kv_cache
from accelerate_diffusion.families import family_of
from accelerate_diffusion.journal import Journal
from accelerate_diffusion.testing import surface
from accelerate_diffusion.testing_video import make_skyreels_df_pipeline, run_skyreels

warnings.filterwarnings("ignore", message=".*flex_attention.*")

ROLL = dict(latent_frames=12, block=2, ar_step=1, steps=3)
OFF = dict(merge_threshold=1.5, budget_frames=0)


@pytest.fixture(scope="module")
def df():
    pipe = make_skyreels_df_pipeline("micro")
    return pipe, run_skyreels(pipe, "micro", **ROLL)


def _stats(pipe):
    return pipe.acceleration.report().applied[0]["stats"]


def test_off_is_bit_identical_and_remove_restores(df):
    pipe, reference = df
    untouched = surface(pipe)
    accelerate(pipe, "off", kv_cache=dict(OFF, encode="pipeline"))
    assert [a["technique"] for a in pipe.acceleration.report().applied] == ["kv_cache"]
    assert torch.equal(run_skyreels(pipe, "micro", **ROLL), reference)
    stats = _stats(pipe)
    assert stats["commits"] == 5 and set(stats["merges per commit"]) == {0}
    pipe.acceleration.remove()
    accelerate(pipe, "off", kv_cache=dict(merge_threshold=0.3, budget_frames=2))
    assert not torch.equal(run_skyreels(pipe, "micro", **ROLL), reference)      # merged and evicted
    pipe.acceleration.remove()
    assert torch.equal(run_skyreels(pipe, "micro", **ROLL), reference)
    assert surface(pipe) == untouched


def test_incremental_reuses_finished_frames_and_matches_the_pipeline(df):
    # Only the frames the scheduler updates run; finished ones are attended from the cache.
    pipe, reference = df
    with accelerate(pipe, "off", kv_cache=OFF).acceleration:
        out = run_skyreels(pipe, "micro", **ROLL)
        stats = _stats(pipe)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert stats["frames_reused"] > 0 and stats["frames_skipped"] > 0
    assert stats["frames_computed"] < 0.5 * (stats["frames_computed"] + stats["frames_reused"] + stats["frames_skipped"])


def test_incremental_with_cfg_and_long_video_windows_matches_the_pipeline():
    pipe = make_skyreels_df_pipeline("micro", seed=1)
    # guidance: two calls per step, one cache per branch; long video: three windows of 8 frames
    # overlapping by 2 (the overlap is a finished prefix from the first step of each window)
    cases = [dict(latent_frames=8, block=2, ar_step=1, steps=2, guidance_scale=4.0),
             dict(latent_frames=8, block=2, ar_step=1, steps=2, num_frames=4 * 19 + 1, overlap_history=5)]
    for kw in cases:
        reference = run_skyreels(pipe, "micro", **kw)
        with accelerate(pipe, "off", kv_cache=OFF).acceleration:
            out = run_skyreels(pipe, "micro", **kw)
            stats = _stats(pipe)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
        assert stats["frames_reused"] > 0 and "calls_unchanged" not in stats
        with accelerate(pipe, "off", kv_cache=dict(OFF, encode="pipeline")).acceleration:
            assert torch.equal(run_skyreels(pipe, "micro", **kw), reference)
    assert reference.shape[2] == 20


def test_cache_never_exceeds_budget_over_a_long_rollout(df):
    pipe, _ = df
    accelerate(pipe, "off", kv_cache=dict(merge_threshold=0.5, budget_frames=3, evict="attention"))
    run_skyreels(pipe, "micro", latent_frames=32, block=2, ar_step=1, steps=2)
    ctrl, stats = pipe.acceleration.stats()["kv_cache"], _stats(pipe)
    budget = 3 * ctrl["tokens_per_frame"]
    assert stats["commits"] == 15 and stats["budget tokens per layer"] == budget
    assert all(max(row["cache_tokens"].values()) <= budget for row in ctrl["rows"].values())
    assert max(ctrl["rows"][30]["cache_tokens"].values()) == budget
    assert sum(stats["merges per commit"]) > 0 and sum(stats["evictions per commit"]) > 0
    pipe.acceleration.remove()


def test_changed_finished_frames_rebuild_the_cache(df):
    # A callback that edits finished latents: the committed inputs no longer match, so the
    # cache is rebuilt from the new frames instead of serving stale keys.
    pipe, _ = df

    def nudge(p, i, t, kw):
        if i == 4:
            kw["latents"][:, :, :2] *= 1.01
        return kw

    reference = run_skyreels(pipe, "micro", **ROLL, callback_on_step_end=nudge)
    with pytest.warns(UserWarning, match="finished frames changed"):
        with accelerate(pipe, "off", kv_cache=OFF).acceleration:
            out = run_skyreels(pipe, "micro", **ROLL, callback_on_step_end=nudge)
            assert _stats(pipe)["cache_rebuilds"] >= 1
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


def test_bidirectional_attention_runs_unchanged_and_says_so(df):
    pipe, _ = df
    kw = dict(ROLL, block=1, ar_step=0)
    reference = run_skyreels(pipe, "micro", **kw)
    with pytest.warns(UserWarning, match="causal_block_size <= 1"):
        with accelerate(pipe, "off", kv_cache=OFF).acceleration:
            assert torch.equal(run_skyreels(pipe, "micro", **kw), reference)
            assert _stats(pipe)["calls_bidirectional"] > 0


def test_fields_that_do_not_apply_are_errors(df):
    pipe, reference = df
    for field in ("cross_topk", "self_topk"):
        with pytest.raises(ValueError, match=rf"kv_cache\.{field}: .* AnyFlow-FAR only; allowed on SkyReels-V2: 0"):
            accelerate(pipe, "off", kv_cache={field: 4})
    with pytest.raises(ValueError, match=r"kv_cache\.encode: 'compressed' .* allowed on SkyReels-V2: incremental, pipeline"):
        accelerate(pipe, "off", kv_cache={"encode": "compressed"})
    assert torch.equal(run_skyreels(pipe, "micro", **ROLL), reference)     # nothing left half-applied
    with pytest.raises(ValueError, match=r"kv_cache\.budget_frames"):
        kv_cache.Config(budget_frames=0.5)

    class NotForcing:                       # a SkyReels transformer in a pipeline without diffusion forcing
        pass

    ctx = patches.PatchContext(pipe=NotForcing(), denoiser=pipe.transformer, denoiser_attr="transformer",
                               family=family_of(pipe.transformer), state=None, journal=Journal())
    with pytest.raises(patches.NotApplicable, match="not a SkyReels-V2 diffusion-forcing pipeline"):
        kv_cache.apply(ctx, kv_cache.Config())


def test_presets_apply_tempcache_to_the_skyreels_family(df):
    pipe, reference = df
    for preset in ("quality", "balanced", "fast", "max"):
        accelerate(pipe, preset)
        assert [a["technique"] for a in pipe.acceleration.report().applied] == ["kv_cache"]
        pipe.acceleration.remove()
    accelerate(pipe, "quality")         # exact reuse: nothing merged or evicted
    torch.testing.assert_close(run_skyreels(pipe, "micro", **ROLL), reference, atol=1e-5, rtol=1e-5)
    assert pipe.acceleration.report().applied[0]["stats"]["frames_reused"] > 0
    pipe.acceleration.remove()
