"""`generate` on video pipelines (tiny Wan, tiny SkyReels-V2, the demo AR model) and the
one-line errors for model names that are not loadable."""

import json
from pathlib import Path

import pytest
from PIL import Image, ImageSequence

from accelerate_diffusion import cli, demo
from accelerate_diffusion.generate import GenerateOptions, Item, generate, mp4_writer_missing


def _gif_frames(path):
    with Image.open(path) as im:
        return [f.convert("RGB").size for f in ImageSequence.Iterator(im)]


def _mp4_frames(path):
    iio = pytest.importorskip("imageio.v3")
    return iio.imread(path).shape            # (frames, H, W, 3)


def _records(out):
    return [json.loads(line) for line in (Path(out) / "manifest.jsonl").read_text().splitlines()]


def test_wan_video_from_the_cli_writes_mp4_gif_and_resumes(tmp_path, capsys):
    out = tmp_path / "v"
    args = ["generate", "--prompt", "a red circle moving right", "--model", "wan", "--preset", "off",
            "--steps", "2", "--num-frames", "5", "--fps", "10", "--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "generated 1 output(s) for 1 item(s)" in printed and "videos/s" in printed
    (record,) = _records(out)
    assert record["frames"] == 5 and record["fps"] == 10
    assert _gif_frames(out / "00000_00.gif") == [(16, 16)] * 5
    if mp4_writer_missing() is None:
        assert record["files"] == ["00000_00.mp4", "00000_00.gif"]
        assert _mp4_frames(out / "00000_00.mp4") == (5, 16, 16, 3)
    assert not list(out.glob(".*tmp*"))
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "(1 of 1 already done)" in printed and "0.00 videos/s" in printed and "videos: none new" in printed


def test_skyreels_video_through_generate(tmp_path):
    pytest.importorskip("ftfy", reason="SkyReels-V2 cleans prompts with ftfy (the video extra)")
    from accelerate_diffusion.testing_video import make_skyreels_df_pipeline, skyreels_call_kwargs

    pipe = make_skyreels_df_pipeline("micro")
    kw = skyreels_call_kwargs("micro", latent_frames=2, block=1)
    extra = {k: kw[k] for k in ("num_frames", "base_num_frames", "ar_step", "causal_block_size",
                                "max_sequence_length", "height", "width")}
    opts = GenerateOptions(out=tmp_path, preset="off", steps=2, guidance=1.0, extra=extra, fps=8)
    summary = generate(pipe, [Item(0, "a red circle moving right")], opts, progress=False)
    assert summary["generated"] == 1 and summary["kind"] == "video"
    (record,) = _records(tmp_path)
    assert record["frames"] == 5 and record["fps"] == 8
    assert _gif_frames(tmp_path / "00000_00.gif") == [(64, 64)] * 5


@pytest.mark.skipif(not demo.is_available("ar_video"), reason="demo video weights not present")
def test_demo_ar_video_from_the_cli(tmp_path, capsys):
    out = tmp_path / "v"
    assert cli.main(["generate", "--prompt", "a large red circle moving right on a gray background",
                     "--model", "demo-ar_video", "--preset", "off", "--steps", "2", "--num-frames", "9",
                     "--out", str(out), "--quiet"]) == 0
    (record,) = _records(out)
    assert record["frames"] == 9 and record["fps"] == 16
    assert _gif_frames(out / "00000_00.gif") == [(64, 64)] * 9


@pytest.mark.parametrize("argv,message", [
    (["--model", "ar_video"], "unknown demo model 'ar_video' (did you mean demo-ar_video?); "
                              "demo models: demo-unet, demo-dit, demo-ar_video"),
    (["--model", "demo"], "unknown demo model 'demo'; demo models: demo-unet, demo-dit, demo-ar_video"),
    (["--model", "stable-diffusoin"], "--model: 'stable-diffusoin' is not a built-in name or a local folder"),
    (["--model", "./no/such/model"], "--model: local folder './no/such/model' does not exist"),
    (["--model", "demo-ar_video", "--num-frames", "6"], "--num-frames: the demo video model makes 4k+1"),
    (["--model", "sd", "--num-frames", "5"], "--num-frames: 'sd' (StableDiffusionPipeline) makes images"),
])
def test_model_errors_are_one_line(tmp_path, capsys, argv, message):
    assert cli.main(["generate", "--prompt", "x", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
