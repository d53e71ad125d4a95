"""Embedded demo models: offline loading, determinism, dataset/caption agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accelerate_diffusion import demo
from accelerate_diffusion.demo import dataset as ds


# ------------------------------------------------------------------ dataset


def test_dataset_deterministic():
    a_img, a_cap, _, _ = ds.make_item(7, seed=3)
    b_img, b_cap, _, _ = ds.make_item(7, seed=3)
    assert a_cap == b_cap and np.array_equal(a_img, b_img)
    imgs, caps, _ = ds.generate(4, seed=3, start=5)
    assert caps[2] == a_cap and np.array_equal(imgs[2], a_img)
    c_img, c_cap, _, _ = ds.make_item(7, seed=4)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (64, 64, 3) and a_img.dtype == np.uint8


def _centroid(mask):
    ys, xs = np.nonzero(mask > 0.5)
    return xs.mean(), ys.mean()


@pytest.mark.parametrize("split", ["train", "test"])
def test_captions_match_drawing(split):
    n_checked = {1: 0, 2: 0, 3: 0}
    for i in range(120):
        img, cap, scene, masks = ds.make_item(i, seed=0, split=split)
        attrs = ds.parse_caption(cap)
        # the caption decodes back to the drawn attributes
        assert attrs["shapes"] == [(s.size, s.color, s.kind) for s in scene.shapes]
        if scene.named_background:
            assert attrs["background"] == scene.background and attrs["texture"] == scene.texture
        else:
            assert attrs["background"] is None and attrs["texture"] is None and " background" not in cap
        assert attrs["layout"] == scene.layout
        n = len(scene.shapes)
        n_checked[n] += 1
        img = img.astype(np.float32)
        # each shape's colour is where its (visible) mask is
        for k, s in enumerate(scene.shapes):
            vis = masks[k] > 0.99
            for later in masks[k + 1 :]:
                vis &= later < 0.01
            assert vis.sum() >= 8, (cap, k)
            mean = img[vis].mean(0)
            assert np.abs(mean - np.array(ds.COLORS[s.color])).max() < 16, (cap, s.color, mean)
            # size word matches the drawn extent
            ys, xs = np.nonzero(masks[k] > 0.5)
            extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
            assert (extent < 16) if s.size == "small" else (extent > 16), (cap, extent)
        # the background colour is where no shape is
        bg = np.all(masks < 0.01, axis=0)
        if scene.texture == "plain":
            mean = img[bg].mean(0)
            assert np.abs(mean - np.array(ds.BACKGROUNDS[scene.background])).max() < 16
        cents = [_centroid(m) for m in masks]
        if n == 1:
            x, y = cents[0]
            gx, gy = ds.GRID_POSITIONS[scene.layout]
            assert abs(x - gx) < 8 and abs(y - gy) < 8, (cap, x, y)
        elif n == 2:
            (xa, ya), (xb, yb) = cents
            rel = {"above": yb - ya, "below": ya - yb, "to the left of": xb - xa, "to the right of": xa - xb}
            assert rel[scene.layout] > 4, (cap, cents)
        else:
            axis = 0 if scene.layout == "from left to right" else 1
            coords = [c[axis] for c in cents]
            assert coords == sorted(coords) and min(np.diff(coords)) > 10, (cap, coords)
    assert n_checked[1] > 30 and n_checked[2] > 30 and n_checked[3] == 0  # three shapes: no longer in the splits


def test_tokenizer_words_are_single_tokens():
    from accelerate_diffusion.demo.tokenizer import build_tokenizer

    tok = build_tokenizer()
    for w in ds.caption_words():
        assert len(tok(w).input_ids) == 3, w  # bos, word, eos
    # unknown words fall back to characters instead of failing
    assert len(tok("zebra").input_ids) > 3


# ------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def clip():
    return demo.load_clip()


def test_clip_matches_captions(clip):
    imgs, caps, _ = ds.generate(48, seed=0, split="test")
    matched = demo.clip_score(imgs, caps, clip)
    shuffled = demo.clip_score(imgs, caps[1:] + caps[:1], clip)
    assert matched.mean() > shuffled.mean() + 3
    feats = demo.image_features(imgs, clip[0])
    assert feats.shape[0] == 48 and torch.isfinite(feats).all()


@pytest.mark.parametrize("kind", demo.KINDS)
def test_pipeline_loads_and_generates(kind):
    pipe = demo.load_pipeline(kind)
    prompt = "a large red circle in the center on a gray background"

    def run():
        g = torch.Generator().manual_seed(0)
        return pipe(prompt, num_inference_steps=4, guidance_scale=demo.DEFAULT_GUIDANCE, generator=g, output_type="np").images

    a = run()
    assert a.shape == (1, 64, 64, 3)  # the documented default size, no height/width given
    assert np.isfinite(a).all()
    assert a.std() > 0.02  # not a constant image
    b = run()
    assert np.array_equal(a, b)  # fixed seed -> same image


def test_zero_token_training_processor_is_exact():
    """Training feeds one zero 'T5' token with a log(n) logit bias instead of n copies."""
    from diffusers import SD3Transformer2DModel

    from accelerate_diffusion.demo.models import ZeroTokenBiasProcessor, zero_token_bias

    torch.manual_seed(0)
    m = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                              caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=8).eval()
    for p in m.parameters():
        p.data += 0.05 * torch.randn_like(p)
    x, pooled, ts = torch.randn(2, 4, 8, 8), torch.randn(2, 8), torch.tensor([300.0, 700.0])
    text = torch.randn(2, 5, 16)
    full = torch.cat([text, torch.zeros(2, 40, 16)], 1)
    with torch.no_grad():
        ref = m(x, encoder_hidden_states=full, pooled_projections=pooled, timestep=ts).sample
        m.set_attn_processor(ZeroTokenBiasProcessor(zero_token_bias(16, 5, n_zero=40)))
        out = m(x, encoder_hidden_states=full[:, :6], pooled_projections=pooled, timestep=ts).sample
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
