"""Sparse attention technique: whole-grid window = dense, sparse windows really run the
kernels, per-step/per-layer density, exact removal, and validation errors naming the field."""

import warnings

import pytest
import torch

from accelerate_diffusion import accelerate
from accelerate_diffusion.families import find_denoiser
from accelerate_diffusion.patches import attention
from accelerate_diffusion.testing import run, surface

DITS = ["pixart", "sd3", "flux", "wan"]


def _stats(pipe):
    (item,) = [a for a in pipe.acceleration.report().applied if a["technique"] == "attention"]
    return item["stats"]


def _details(pipe):
    return pipe.acceleration.stats()["attention"]


def _processors(pipe):
    return [m.processor for m in find_denoiser(pipe)[1].modules() if hasattr(m, "processor")]


@pytest.mark.parametrize("name", DITS)
def test_whole_grid_window_is_dense_and_remove_restores(pipelines, name):
    pipe = pipelines(name)
    reference = run(pipe, name, steps=2)
    processors = _processors(pipe)
    untouched = surface(pipe)
    accelerate(pipe, "off", attention=dict(window=1.0, backend="reference"))
    # dense spec -> the dispatcher's reference runs plain SDPA without a mask: bit-exact
    assert torch.equal(run(pipe, name, steps=2), reference)
    sparse, dense = map(int, _stats(pipe)["attention calls sparse/dense"].split("/"))
    assert sparse > 0 and dense == 0 and pipe.acceleration.stats()["attention"]["backend_calls"] == {"reference": sparse}
    assert _processors(pipe) == processors            # processors are never replaced
    pipe.acceleration.remove()
    accelerate(pipe, "off", attention=dict(window=1.0, backend="flex_eager"))
    torch.testing.assert_close(run(pipe, name, steps=2), reference, rtol=1e-5, atol=1e-5)
    pipe.acceleration.remove()
    accelerate(pipe, "off", attention=dict(window=0.5, backend="reference"))
    sparse_out = run(pipe, name, steps=2)
    assert not torch.equal(sparse_out, reference)
    assert _stats(pipe)["mean attention density"] < 1.0
    pipe.acceleration.remove()
    assert surface(pipe) == untouched
    assert _processors(pipe) == processors
    assert torch.equal(run(pipe, name, steps=2), reference)


def test_sparse_calls_go_through_the_kernel_with_the_grid_mask(pipelines):
    pipe = pipelines("sd3")
    seen = []
    original = attention.kernels.attention

    def spy(q, k, v, spec, **kw):
        seen.append((tuple(q.shape), spec))
        return original(q, k, v, spec, **kw)

    attention.kernels.attention = spy
    try:
        accelerate(pipe, "off", attention=dict(window=2, pattern="blocked", backend="reference"))
        run(pipe, "sd3", steps=2)
    finally:
        attention.kernels.attention = original
        pipe.acceleration.remove()
    assert seen
    for shape, spec in seen:   # SD3: image grid first, text tokens appended (suffix)
        assert spec.grid == (8, 8) and spec.prefix == 0 and spec.suffix == shape[2] - 64 > 0
        assert spec.window == (2, 2) and spec.stride == (2, 2)


def test_flux_text_tokens_are_a_dense_prefix(pipelines):
    pipe = pipelines("flux")
    accelerate(pipe, "off", attention=dict(window=0.25, backend="reference"))
    run(pipe, "flux", steps=1)
    specs = list(_details(pipe)["specs"].values())
    pipe.acceleration.remove()
    assert specs and all(s.prefix > 0 and s.suffix == 0 and s.grid == (8, 8) for s in specs)


def test_dense_steps_and_dense_layers(pipelines):
    pipe = pipelines("pixart")
    reference = run(pipe, "pixart", steps=4)
    n_blocks = len(find_denoiser(pipe)[1].transformer_blocks)
    for overrides in (dict(dense_steps=4), dict(dense_steps=1.0), dict(dense_layers=list(range(n_blocks)))):
        accelerate(pipe, "off", attention=dict(window=0.25, backend="reference", **overrides))
        assert torch.equal(run(pipe, "pixart", steps=4), reference), overrides
        assert _stats(pipe)["attention calls sparse/dense"].startswith("0/")
        pipe.acceleration.remove()
    accelerate(pipe, "off", attention=dict(window=0.25, backend="reference", dense_steps=0.5, dense_layers=[-1]))
    run(pipe, "pixart", steps=4)
    layers = _details(pipe)["layers"]
    calls_per_step = layers[0]["sparse_calls"] // 2      # steps 2 and 3 sparse
    assert calls_per_step > 0 and layers[0]["dense_calls"] == 2 * calls_per_step
    assert layers[-1]["sparse_calls"] == 0 and layers[-1]["dense_calls"] == 4 * calls_per_step
    assert "dense, original" in _stats(pipe)["density per block"]
    pipe.acceleration.remove()


@pytest.mark.parametrize("overrides, field", [
    (dict(window=1.5), "window"),
    (dict(window=0), "window"),
    (dict(stride=0), "stride"),
    (dict(pattern="diagonal"), "pattern"),
    (dict(backend="cuda"), "backend"),
    (dict(dense_steps=-1), "dense_steps"),
    (dict(dense_layers=[99]), "dense_layers"),
])
def test_bad_parameters_name_the_field(pipelines, overrides, field):
    pipe = pipelines("pixart")
    with pytest.raises(ValueError, match=rf"attention\.{field}"):
        accelerate(pipe, "off", attention=overrides)
    if getattr(pipe, "acceleration", None) is not None:
        pipe.acceleration.remove()


@pytest.mark.parametrize("overrides, field", [
    (dict(window=9), "window"),                  # 9 tokens > the 8-token side
    (dict(window=(2, 2, 2)), "window"),          # 3 values for a 2-d grid
    (dict(window=2, stride=4), "stride"),        # stride > window
])
def test_grid_dependent_errors_name_the_field(pipelines, overrides, field):
    pipe = pipelines("pixart")
    accelerate(pipe, "off", attention=dict(backend="reference", **overrides))
    try:
        with pytest.raises(ValueError, match=rf"attention\.{field}"):
            run(pipe, "pixart", steps=1)
    finally:
        pipe.acceleration.remove()


def test_video_only_pattern_is_skipped_on_images(pipelines):
    pipe = pipelines("pixart")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        accelerate(pipe, "off", attention=dict(pattern="frame_tile"))
    assert [s["technique"] for s in pipe.acceleration.report().skipped] == ["attention"]
    pipe.acceleration.remove()


def test_video_patterns_on_wan(pipelines):
    pipe = pipelines("wan")
    reference = run(pipe, "wan", steps=2)
    # micro Wan: 9 frames of 16x16 -> a (3, 1, 1) token grid; criss-cross there is dense
    for cfg, sparse in ((dict(pattern="frame_tile", global_frames=0), True),
                        (dict(pattern="strided", window=(2, 1, 1)), True),
                        (dict(pattern="criss_cross", window=1), False)):
        accelerate(pipe, "off", attention=dict(backend="reference", **cfg))
        out = run(pipe, "wan", steps=2)
        assert _stats(pipe)["token grid"] == (3, 1, 1)
        assert (_stats(pipe)["mean attention density"] < 1.0) == sparse, cfg
        assert torch.equal(out, reference) != sparse, cfg
        pipe.acceleration.remove()
    assert torch.equal(run(pipe, "wan", steps=2), reference)


def test_auto_backend_runs_whole_grid_as_plain_sdpa_bit_exact(pipelines):
    pipe = pipelines("flux")
    reference = run(pipe, "flux", steps=2)
    accelerate(pipe, "off", attention=dict(window=1.0))      # backend="auto"
    out = run(pipe, "flux", steps=2)
    stats = _stats(pipe)
    pipe.acceleration.remove()
    assert torch.equal(out, reference) and set(stats["backends"]) == {"reference"}
    rt_line = stats["attention MACs of sparse calls"]           # dense spec: kernel MACs == dense MACs
    assert rt_line.split(" at")[0] == rt_line.split("(dense: ")[1].rstrip(")")


def test_presets_use_attention_only_for_wan():
    from accelerate_diffusion.families import FAMILIES
    from accelerate_diffusion.presets import PRESETS

    for preset in PRESETS.values():
        for family in FAMILIES:
            settings = preset.for_family(family).get("attention")
            if settings is not None:
                assert family.name == "wan" and preset.name == "max"
                attention.Config(**settings)          # valid
    assert PRESETS["max"].for_family(next(f for f in FAMILIES if f.name == "wan"))["attention"]


def test_explicit_xformers_backend_on_cpu_says_it_needs_cuda(pipelines):
    pipe = pipelines("sd3")
    accelerate(pipe, "off", attention=dict(window=2, pattern="blocked", backend="xformers"))
    try:
        with pytest.raises(RuntimeError, match="backend='xformers': xformers needs CUDA tensors"):
            run(pipe, "sd3", steps=2)
        assert "xformers not used" not in _stats(pipe)     # auto only: an explicit choice raises
    finally:
        pipe.acceleration.remove()


def test_remove_frees_the_masks_built_for_the_pipeline(pipelines):
    from accelerate_diffusion.kernels import flex, masks

    pipe = pipelines("pixart")
    accelerate(pipe, "off", attention=dict(window=0.5, backend="reference"))
    run(pipe, "pixart", steps=2)
    assert masks._dense_mask_cached.cache_info().currsize > 0       # the reference backend's masks
    pipe.acceleration.remove()
    assert masks._dense_mask_cached.cache_info().currsize == 0
    assert flex._block_mask.cache_info().currsize == 0
