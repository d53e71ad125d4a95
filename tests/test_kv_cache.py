"""TempCache on AnyFlow-FAR: exactness of the off setting and of the merge rule, budget, errors."""

import warnings

import pytest
import torch

from accelerate_diffusion import accelerate, patches
from accelerate_diffusion.kernels import ann, kv
from accelerate_diffusion.patches import kv_cache
from accelerate_diffusion.families import FAMILIES
from accelerate_diffusion.journal import Journal
from accelerate_diffusion.testing import surface
from accelerate_diffusion.testing_video import make_far_pipeline, run_far

warnings.filterwarnings("ignore", message=".*flex_attention.*")

ROLL = dict(latent_frames=8, chunk=2)


@pytest.fixture(scope="module")
def far():
    pipe = make_far_pipeline("micro")
    return pipe, run_far(pipe, "micro", **ROLL)


# -- pure functions ------------------------------------------------------------------
def test_merged_identical_keys_with_log_bias_equal_unmerged_attention():
    torch.manual_seed(0)
    b, h, d, m = 2, 3, 8, 4
    q = torch.randn(b, h, 5, d)
    other_k, other_v = torch.randn(b, h, 6, d), torch.randn(b, h, 6, d)
    dup_k = torch.randn(b, h, 1, d).expand(b, h, m, d).contiguous()
    dup_v = torch.randn(b, h, m, d)                     # values may differ: sum of values is kept
    full = kv.biased_attention(q, torch.cat([other_k, dup_k], 2), torch.cat([other_v, dup_v], 2), None)

    slots, merged = kv.insert(kv.Slots.empty(other_k), other_k, other_v, 0, threshold=1.5)
    assert merged == 0 and len(slots) == 6
    slots, merged = kv.insert(slots, dup_k[:, :, :1], dup_v[:, :, :1], 1, threshold=1.5)
    slots, merged = kv.insert(slots, dup_k[:, :, 1:], dup_v[:, :, 1:], 2, threshold=0.999, method="exact")
    assert merged == m - 1 and len(slots) == 7 and slots.count.tolist() == [1] * 6 + [m]
    compact = kv.biased_attention(q, slots.k, slots.v, slots.bias())
    torch.testing.assert_close(compact, full, atol=1e-6, rtol=1e-5)
    # without the log(m) bias the merged slot loses attention mass
    assert not torch.allclose(kv.biased_attention(q, slots.k, slots.v, None), full, atol=1e-4)


def test_evict_keeps_budget_order_and_policy():
    k = torch.randn(1, 2, 6, 4)
    slots = kv.Slots(k, k.clone(), torch.ones(6), torch.tensor([5., 0., 4., 1., 3., 2.]),
                     torch.arange(6))
    kept, n = kv.evict(slots, 3, "attention")
    assert n == 3 and kept.birth.tolist() == [0, 2, 4]
    kept, n = kv.evict(slots, 3, "age")
    assert kept.birth.tolist() == [3, 4, 5]
    kept, n = kv.evict(slots, 3, "attention", protect_from=5)
    assert kept.birth.tolist() == [0, 2, 5]
    assert kv.evict(slots, 0, "age")[1] == 0            # 0 = unlimited


def test_projected_ann_finds_the_exact_neighbour():
    torch.manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(2, 200, 96), dim=-1)
    query = torch.nn.functional.normalize(base[:, 50:80] + 0.05 * torch.randn(2, 30, 96), dim=-1)
    idx, sim = ann.nearest(query, base, "proj", dim=16, candidates=8)
    ref, ref_sim = ann.nearest(query, base, "exact")
    assert torch.equal(ref, torch.arange(50, 80)) and (idx == ref).float().mean() >= 0.9
    assert torch.all(sim <= ref_sim + 1e-6)
    with pytest.raises(ValueError, match="ann.method"):
        ann.nearest(query, base, "lsh")


# -- on the pipeline -----------------------------------------------------------------
def test_no_merge_unlimited_budget_is_bit_identical_and_remove_restores(far):
    pipe, reference = far
    untouched = surface(pipe)
    accelerate(pipe, "off", kv_cache=dict(merge_threshold=1.5, budget_frames=0, encode="pipeline"))
    assert torch.equal(run_far(pipe, "micro", **ROLL), reference)
    stats = pipe.acceleration.report().applied[0]["stats"]
    assert stats["chunks"] == 3 and set(stats["merges per chunk"]) == {0}
    accelerate(pipe, "off", kv_cache=dict(merge_threshold=1.5, budget_frames=2, encode="pipeline", evict="age"))
    assert not torch.equal(run_far(pipe, "micro", **ROLL), reference)      # evictions: the cache changed
    ctrl = pipe.acceleration.stats()["kv_cache"]
    assert (ctrl["chunks"][-1]["evictions"] > 0
            and max(ctrl["chunks"][-1]["cache_tokens"].values()) <= 2 * ctrl["full_tokens_per_frame"])
    accelerate(pipe, "off", kv_cache=dict(merge_threshold=0.5, budget_frames=2, encode="incremental"))
    assert not torch.equal(run_far(pipe, "micro", **ROLL), reference)
    pipe.acceleration.remove()
    assert torch.equal(run_far(pipe, "micro", **ROLL), reference)
    assert surface(pipe) == untouched


def test_incremental_encode_matches_far_while_nothing_is_compressed():
    # With full_chunk_limit above the chunk count FAR keeps all history at full resolution:
    # encoding each chunk once against the cache is then the same computation.
    pipe = make_far_pipeline("micro", full_chunk_limit=5)
    reference = run_far(pipe, "micro", **ROLL)
    with accelerate(pipe, "off", kv_cache=dict(merge_threshold=1.5, encode="incremental")).acceleration:
        out = run_far(pipe, "micro", **ROLL)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


def test_compressed_encode_matches_far_at_a_constant_window():
    # FAR's cache step is chunk-causal: a chunk's compressed keys never change once made, so
    # encoding each chunk once as it leaves the full window (plus the full chunks) is the same
    # computation as FAR's re-encode of the whole history, at a cost that does not grow.
    pipe = make_far_pipeline("micro")
    roll = dict(latent_frames=12, chunk=1)
    reference = run_far(pipe, "micro", **roll)
    untouched = surface(pipe)
    lengths = []
    hook = pipe.transformer.blocks[0].register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1]))
    with accelerate(pipe, "off", kv_cache=dict(merge_threshold=1.5, encode="compressed")).acceleration:
        out = run_far(pipe, "micro", **roll)
        ctrl = pipe.acceleration.stats()["kv_cache"]
        full, comp = ctrl["full_tokens_per_frame"], ctrl["compressed_tokens_per_frame"]
        assert ctrl["chunks"][-1]["cache_tokens"][0] == 9 * comp + 2 * full     # 12 frames: 9 compressed, 2 full
    hook.remove()
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert max(lengths) == comp + 2 * full           # every pass: one compressed chunk + 2 full chunks at most
    assert surface(pipe) == untouched


def test_cache_never_exceeds_budget_over_a_long_rollout(far):
    pipe, _ = far
    accelerate(pipe, "off", kv_cache=dict(merge_threshold=0.6, budget_frames=3, evict="attention"))
    run_far(pipe, "micro", latent_frames=24, chunk=2)
    ctrl = pipe.acceleration.stats()["kv_cache"]
    chunks, budget = ctrl["chunks"], 3 * ctrl["full_tokens_per_frame"]
    assert len(chunks) == 11
    assert all(max(row["cache_tokens"].values()) <= budget for row in chunks)
    assert chunks[-1]["cache_tokens"][0] == budget
    assert sum(r["merges"] for r in chunks) > 0 and sum(r["evictions"] for r in chunks) > 0
    # compressed mode: the budget holds the compressed history; the 2 full chunks ride beside it
    accelerate(pipe, "off", kv_cache=dict(merge_threshold=0.6, budget_frames=1, encode="compressed"))
    run_far(pipe, "micro", latent_frames=24, chunk=2)
    ctrl = pipe.acceleration.stats()["kv_cache"]
    chunks, tpf = ctrl["chunks"], ctrl["full_tokens_per_frame"]
    assert all(n <= tpf for n in ctrl["slots_per_layer"].values())
    assert all(max(row["cache_tokens"].values()) <= 5 * tpf for row in chunks)
    assert sum(r["merges"] for r in chunks) > 0 and sum(r["evictions"] for r in chunks) > 0
    pipe.acceleration.remove()


def test_bad_configs_and_unsupported_pipelines():
    with pytest.raises(ValueError, match=r"kv_cache\.budget_frames: 0\.5 is out of range"):
        kv_cache.Config(budget_frames=0.5)
    with pytest.raises(ValueError, match=r"kv_cache\.evict: 'lru' is not allowed; allowed: 'attention', 'age'"):
        kv_cache.Config(evict="lru")
    with pytest.raises(ValueError, match=r"kv_cache\.encode"):
        kv_cache.Config(encode="full")
    with pytest.raises(ValueError, match=r"kv_cache\.merge_threshold"):
        kv_cache.Config(merge_threshold=3)
    with pytest.raises(ValueError, match=r"kv_cache\.ann_dim"):
        kv_cache.Config(ann_dim=0)
    with pytest.raises(ValueError, match=r"kv_cache: unknown field\(s\) window"):
        kv_cache.Config.from_dict({"window": 3})
    other = torch.nn.Linear(2, 2)
    pixart = next(f for f in FAMILIES if f.name == "pixart")
    ctx = patches.PatchContext(pipe=None, denoiser=other, denoiser_attr="transformer", family=pixart,
                               state=None, journal=Journal())
    with pytest.raises(patches.NotApplicable, match="pixart has none"):
        kv_cache.apply(ctx, kv_cache.Config())


def test_annsa_and_annca_equal_dense_attention_when_retrieval_covers_everything():
    torch.manual_seed(0)
    q, keys, values = torch.randn(2, 3, 40, 8), torch.randn(2, 3, 110, 8), torch.randn(2, 3, 110, 8)
    bias = torch.cat([torch.rand(70).add(1).log(), torch.zeros(40)])
    dense = kv.biased_attention(q, keys, values, bias)
    torch.testing.assert_close(kv.block_retrieval_attention(q, keys, values, bias, 70, 16, 5), dense)
    assert not torch.allclose(kv.block_retrieval_attention(q, keys, values, bias, 70, 16, 1), dense, atol=1e-3)
    q, k, v = torch.randn(2, 3, 64, 8), torch.randn(2, 3, 50, 8), torch.randn(2, 3, 50, 8)
    dense = kv.biased_attention(q, k, v, None)
    torch.testing.assert_close(kv.ann_cross_attention(q, k, v, 16, 8, 50), dense)
    assert not torch.allclose(kv.ann_cross_attention(q, k, v, 16, 8, 4), dense, atol=1e-3)


def test_annca_and_annsa_run_on_the_pipeline_and_remove_cleanly(far):
    pipe, reference = far
    accelerate(pipe, "off", kv_cache=dict(merge_threshold=1.5, cross_topk=8, self_topk=1, self_block=8))
    out = run_far(pipe, "micro", **ROLL)
    stats = pipe.acceleration.report().applied[0]["stats"]
    assert stats["annca_calls"] > 0 and stats["annsa_calls"] > 0 and torch.isfinite(out).all()
    pipe.acceleration.remove()
    assert all(type(b.attn2.processor).__name__ == "AnyFlowCrossAttnProcessor" for b in pipe.transformer.blocks)
    assert torch.equal(run_far(pipe, "micro", **ROLL), reference)
    with pytest.raises(ValueError, match=r"kv_cache\.self_topk: AnnSA needs encode='incremental'"):
        kv_cache.Config(self_topk=2, encode="pipeline")
    # AnnCA on the compressed encode: the denoising passes retrieve, the cache passes stay dense
    accelerate(pipe, "off", kv_cache=dict(merge_threshold=1.5, cross_topk=8, encode="compressed"))
    out = run_far(pipe, "micro", **ROLL)
    assert pipe.acceleration.report().applied[0]["stats"]["annca_calls"] > 0 and torch.isfinite(out).all()
    pipe.acceleration.remove()


def test_presets_apply_tempcache_to_the_far_family(far):
    pipe, reference = far
    for preset in ("quality", "balanced", "fast", "max"):
        accelerate(pipe, preset)
        applied = pipe.acceleration.report().applied
        assert [a["technique"] for a in applied] == ["kv_cache"]
        pipe.acceleration.remove()
    accelerate(pipe, "quality")         # the history fits the budget: FAR's computation, encoded once
    torch.testing.assert_close(run_far(pipe, "micro", **ROLL), reference, atol=1e-5, rtol=1e-5)
    pipe.acceleration.remove()
