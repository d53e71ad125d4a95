"""The demo prompt-following metric (`demo.follow`) and the demo training loop's resume/pause.

None of this needs the demo pipelines: the metric is checked on the dataset's own renders
(it must read them right), on noise (it must not), and on renders paired with the wrong caption.
"""

import threading
import time
from argparse import Namespace

import numpy as np
import pytest
import torch

from accelerate_diffusion.demo import dataset as ds
from accelerate_diffusion.demo import follow
from accelerate_diffusion.demo.train import caption_attributes, hard_negative, loop, wait_while_paused

N = 48


@pytest.fixture(scope="module")
def renders():
    return {k: follow.heldout_renders(N, k) for k in (1, 2)}


def test_dataset_renders_score_near_100(renders):
    one = follow.evaluate_images(*renders[1])
    two = follow.evaluate_images(*renders[2])
    assert min(one["color"], one["size"], one["shape"], one["position"]) >= 95, one
    # two shapes sometimes overlap or touch in the same colour: a few are unreadable
    assert min(two["color"], two["size"], two["shape"], two["relation"], two["both_colors"]) >= 88, two


def test_noise_scores_low(renders):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (N, 64, 64, 3), dtype=np.uint8)
    for k in (1, 2):
        r = follow.evaluate_images(noise, renders[k][1])
        assert r["color"] < 30 and r["shape"] < 30, r
    flat = np.broadcast_to(np.array(ds.BACKGROUNDS["gray"], np.uint8), (N, 64, 64, 3)).copy()
    r = follow.evaluate_images(flat, renders[1][1])
    assert r["color"] == 0 and r["position"] == 0  # nothing drawn: every object is missing


def test_wrong_caption_fails_the_attribute_it_changes(renders):
    images, caps = renders[2]
    swapped, kept, colours = [], [], []
    for im, cap in zip(images, caps):
        a = ds.parse_caption(cap)
        (s1, c1, k1), (s2, c2, k2) = a["shapes"]
        if c1 != c2:
            # the same shapes, each named with the other's colour
            swapped.append(cap.replace(f"{s1} {c1} {k1}", "#").replace(f"{s2} {c2} {k2}", f"{s2} {c1} {k2}")
                           .replace("#", f"{s1} {c2} {k1}"))
            kept.append(cap)
            colours.append(im)
    right = follow.evaluate_images(np.stack(colours), kept)
    wrong = follow.evaluate_images(np.stack(colours), swapped)
    assert len(swapped) > 30 and right["both_colors"] > 85
    assert wrong["both_colors"] < 15 or wrong["relation"] < 15  # colours found, but on the wrong sides
    moved = []
    images1, caps1 = renders[1]
    for cap in caps1:
        layout = ds.parse_caption(cap)["layout"]
        other = next(p for p in ds.GRID_POSITIONS if p != layout)
        moved.append(cap.replace(f" {layout} ", f" {other} "))
    assert follow.evaluate_images(images1, moved)["position"] < 10


def test_background_left_out_is_read_off_the_image():
    scene, rng = follow.heldout_scene(3, 2)
    image = ds.render(scene, rng)[0]
    scene.named_background = False
    cap = ds.make_caption(scene)
    assert "background" not in cap and ds.parse_caption(cap)["background"] is None
    assert follow.background_of(image) == scene.background
    assert follow.score(image, cap)["both_colors"]


def test_video_tracking_on_real_clips():
    caps, clips = follow.video_captions(8, frames=32)
    checks = [follow.track(c, cap) for c, cap in zip(clips, caps)]
    assert np.mean([c["pass"] for c in checks]) >= 0.85, checks
    frozen = [follow.track(np.repeat(c[:1], 32, 0), cap) for c, cap in zip(clips, caps)]
    assert not any(c["moving"] or c["pass"] for c in frozen)
    reversed_ = [follow.track(c[::-1], cap) for c, cap in zip(clips, caps)]
    assert np.mean([c["pass"] for c in reversed_]) < 0.5
    assert all(" moving " in cap and " and " not in cap for cap in caps)


def test_hard_negatives_change_the_caption_and_stay_parseable():
    rng = np.random.default_rng(0)
    _, caps, _ = ds.generate(60, split="test")
    for cap in caps:
        neg = hard_negative(cap, rng)
        assert neg != cap
        a, b = ds.parse_caption(cap), ds.parse_caption(neg)
        assert a["background"] == b["background"] and len(a["shapes"]) == len(b["shapes"])
        assert caption_attributes(neg) != caption_attributes(cap) or a["shapes"] != b["shapes"]


class Killed(Exception):
    pass


def _toy_run(tmp_path, resume, kill_at=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = torch.randn(64, 4)
    args = Namespace(run_dir=str(tmp_path / "run"), steps=10, resume=resume, lr=0.05, warmup=2, weight_decay=0.0,
                     max_minutes=0.0, ckpt_minutes=0.0, log_every=1, pause_file=str(tmp_path / "PAUSE"),
                     stage="toy", seed=0, batch=8)

    def loss_fn(step, gen):
        if step == kill_at:
            raise Killed  # the process dies mid-run; the last checkpoint is from the step before
        idx = torch.randint(0, 64, (8,), generator=gen)
        noise = torch.randn(8, 1)  # global RNG: restored on resume too
        return (model(data[idx]) + 0.1 * noise - data[idx].sum(1, keepdim=True)).pow(2).mean()

    loop(args, tmp_path / "out", {"toy": model}, list(model.parameters()), loss_fn)
    return model


def test_training_resumes_exactly(tmp_path):
    straight = _toy_run(tmp_path / "a", resume=False)
    with pytest.raises(Killed):
        _toy_run(tmp_path / "b", resume=False, kill_at=6)
    assert not (tmp_path / "b" / "run" / "DONE").exists()
    resumed = _toy_run(tmp_path / "b", resume=True)
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)
    assert (tmp_path / "b" / "run" / "DONE").exists() and "resumed" in (tmp_path / "b" / "run" / "train.log").read_text()


def test_pause_file_holds_the_loop(tmp_path):
    pause = tmp_path / "PAUSE"
    pause.touch()
    threading.Timer(0.3, pause.unlink).start()
    t = time.time()
    slept = wait_while_paused(str(pause), log=lambda m: None, poll=0.05)
    assert slept >= 0.25 and time.time() - t >= 0.25
    assert wait_while_paused(str(pause), log=lambda m: None) == 0.0
