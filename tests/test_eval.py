"""Evaluation module: metrics on known inputs, a tiny end-to-end report, resume, bad inputs."""

import csv
import json
import math
import statistics

import pytest
import torch

from accelerate_diffusion.cli import main
from accelerate_diffusion.eval import fidelity, models, plots, quality, runner
from accelerate_diffusion.eval.runner import EvalConfig, evaluate


# -- metrics on known inputs ---------------------------------------------------------------

def test_identical_images_psnr_inf_ssim_one_fid_zero():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert fidelity.psnr(x, x.clone()) == math.inf
    assert fidelity.ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-6)
    assert quality.fid(x, x.clone(), models.RandomFeatures()) == pytest.approx(0.0, abs=1e-4)


def test_known_perturbation_gives_expected_psnr():
    x = torch.full((2, 3, 16, 16), 0.5)
    # a uniform offset d gives MSE d^2, so PSNR = 10 log10(1 / d^2): 20 dB for d = 0.1
    assert fidelity.psnr(x, x + 0.1) == pytest.approx(20.0, abs=1e-3)
    assert fidelity.per_image(fidelity.psnr, x, x + 0.01) == pytest.approx([40.0, 40.0], abs=1e-3)


def test_fid_grows_with_distance_and_per_frame_shapes():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 32, 32, generator=g)
    near, far = (x + 0.02).clamp(0, 1), (x * 0.3).clamp(0, 1)
    extractor = models.RandomFeatures()
    assert 0 <= quality.fid(x, near, extractor) < quality.fid(x, far, extractor)
    video = torch.rand(2, 3, 3, 16, 16, generator=g)
    frames = fidelity.per_frame(fidelity.psnr, video, video.flip(1))
    assert len(frames) == 3 and frames[1] == math.inf and math.isfinite(frames[0])


def test_tf_legacy_resize_keeps_constants_and_corners():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = models.resize_tf_legacy(x, 8)
    assert y.shape == (1, 1, 8, 8) and y[0, 0, 0, 0] == 0 and y[0, 0, 2, 2] == x[0, 0, 1, 1]
    assert torch.equal(models.resize_tf_legacy(torch.ones(1, 3, 5, 7), 11), torch.ones(1, 3, 11, 11))


def test_pareto_front():
    assert plots.pareto_front([(1, 30), (2, 25), (1.5, 20), (3, 10), (2, 26)]) == [0, 4, 3]


def test_missing_models_are_reported_not_invented(monkeypatch):
    with pytest.raises(models.Unavailable, match="no local CLIP"):
        models.load_clip(None)
    with pytest.raises(models.Unavailable, match="not a local directory"):
        models.load_clip("openai/clip-vit-base-patch32")
    monkeypatch.setenv("ACCELERATE_DIFFUSION_INCEPTION", "/nonexistent/inception.pt")
    with pytest.raises(models.Unavailable, match="not a file"):
        models.find_inception_weights()


def _tiny_clip():
    """A random CLIP (transformers classes) behind the adapter: checks the CLIPScore plumbing."""
    from transformers import CLIPConfig, CLIPModel

    from accelerate_diffusion.testing import _clip_tokenizer

    torch.manual_seed(0)
    tok = _clip_tokenizer(16)
    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                      num_hidden_layers=1, vocab_size=len(tok), bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1, max_position_embeddings=16),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                        num_hidden_layers=1, image_size=32, patch_size=8),
                     projection_dim=16)
    return CLIPModel(cfg), tok


def test_clip_score_through_adapter_and_clip_fid_features():
    adapter = models.load_clip(_tiny_clip)
    images = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    score = quality.clip_score(images, ["a red circle", "a blue square", "a star"], adapter)
    assert 0.0 <= score <= 100.0
    features = models.ClipImageFeatures(adapter)
    assert features(images).shape == (3, 16)
    assert quality.fid(images, images, features) == pytest.approx(0.0, abs=1e-3)


# -- end to end ------------------------------------------------------------------------------

def test_end_to_end_report_is_consistent_and_resumes(pipelines, scale_technique, tmp_path, monkeypatch):
    pipe = pipelines("sd")
    configs = ["off", EvalConfig("scaled", "off", {"guidance": {"factor": 0.9}})]
    kwargs = dict(steps=2, seeds=[0], out_dir=str(tmp_path), repeats=2, warmup=1,
                  call_kwargs=dict(height=32, width=32, guidance_scale=5.0),
                  fid_features="random", clip=_tiny_clip, progress=False)
    report = evaluate(pipe, ["a red circle", "a blue square"], configs, **kwargs)

    for name in ("report.md", "report.json", "report.csv", "pareto.png", "grids/prompt_00.png",
                 "grids/prompt_01.png", "configs/scaled/images.pt", "configs/off/images/p01_s0.png"):
        assert (tmp_path / name).is_file(), name
    data = json.loads((tmp_path / "report.json").read_text())
    off, scaled = data["rows"]
    assert [off["label"], scaled["label"]] == ["off", "scaled"]
    assert scaled["speedup"] == pytest.approx(scaled["baseline_s"] / scaled["time_s"])
    assert len(scaled["times_s"]) == len(scaled["baseline_times_s"]) == 2
    # the time inside the UNet's calls: part of each whole call, paired the same way
    for whole, inside in ((scaled["times_s"], scaled["denoiser_times_s"]),
                          (scaled["baseline_times_s"], scaled["baseline_denoiser_times_s"])):
        assert all(0 < d < t for t, d in zip(whole, inside))
    assert scaled["denoiser_speedup"] == pytest.approx(
        statistics.median(scaled["baseline_denoiser_times_s"]) / statistics.median(scaled["denoiser_times_s"]))
    assert off["denoiser_speedup"] == 1.0
    assert off["speedup"] == 1.0 and off["psnr"] == "inf" and off["fid"] == 0.0
    assert off["macs"] > 0 and scaled["macs_ratio"] == pytest.approx(off["macs"] / scaled["macs"])
    assert math.isfinite(scaled["psnr"]) and scaled["ssim"] < 1.0 and scaled["fid"] > 0
    assert scaled["applied"] == ["guidance"] and 0 <= scaled["clip_score"] <= 100
    assert "random conv features" in data["metrics"]["fid"]["by"]
    # LPIPS is not asked for by default (no extra installs torchvision): not listed anywhere
    assert "lpips" not in data["metrics"] and "LPIPS" not in (tmp_path / "report.md").read_text()
    # peak memory is measured on CPU too (it read 0.0 before): at least the process's resident set
    assert off["peak_memory_mib"] > 10 and scaled["peak_memory_mib"] > 10
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [r["label"] for r in rows] == ["off", "scaled"]
    assert float(rows[1]["speedup"]) == pytest.approx(scaled["speedup"])
    markdown = (tmp_path / "report.md").read_text()
    assert "| scaled |" in markdown and f"{scaled['speedup']:.2f}x" in markdown
    assert report.row("scaled")["psnr"] == scaled["psnr"]

    # resume: nothing is generated or timed again, figures are the same
    def no_rerun(*args, **kw):
        raise AssertionError("a completed configuration was redone")

    monkeypatch.setattr(runner, "_generate", no_rerun)
    again = evaluate(pipe, ["a red circle", "a blue square"], configs, **kwargs)
    assert all(r["resumed"] for r in again.rows)
    assert again.row("scaled")["time_s"] == report.row("scaled")["time_s"]
    assert "loaded from an earlier run" in (tmp_path / "report.md").read_text()
    # a changed setting is not taken from the cache
    with pytest.raises(AssertionError, match="redone"):
        evaluate(pipe, ["a red circle", "a blue square"], configs, **{**kwargs, "steps": 3})


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="prompts: file not found"):
        runner.read_prompts(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="non-empty list"):
        runner.read_prompts([])
    (tmp_path / "empty.txt").write_text("\n# only a comment\n\n")
    with pytest.raises(ValueError, match="no prompt in"):
        runner.read_prompts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="unknown preset 'turbo'; allowed: off, quality"):
        runner.parse_configs(["off", "turbo"])
    assert [c.label for c in runner.parse_configs("fast,off")] == ["off", "fast"]
    assert [c.label for c in runner.parse_configs(["balanced"])] == ["off", "balanced"]
    config = runner.parse_config_arg("dc3=fast deepcache.cache_interval=3 guidance=off")
    assert (config.label, config.preset) == ("dc3", "fast")
    assert config.overrides == {"deepcache": {"cache_interval": 3}, "guidance": False}
    with pytest.raises(ValueError, match="expected 'LABEL=PRESET"):
        runner.parse_config_arg("deepcache.cache_interval=3")

    with pytest.raises(ValueError, match="reference_dir: not a directory"):
        evaluate("sd", ["a red circle"], ["off"], reference_dir=str(tmp_path / "none"))
    from PIL import Image

    from accelerate_diffusion.eval.report import _load_reference_dir

    (tmp_path / "ref").mkdir()
    Image.new("RGB", (8, 6), (255, 0, 0)).save(tmp_path / "ref" / "a.png")
    with pytest.raises(ValueError, match="at least 2 images"):
        _load_reference_dir(str(tmp_path / "ref"))
    Image.new("RGB", (8, 6), (0, 0, 255)).save(tmp_path / "ref" / "b.png")
    red, blue = _load_reference_dir(str(tmp_path / "ref"))
    assert red.shape == (3, 6, 8) and red[0].min() == 1.0 and blue[0].max() == 0.0

    (tmp_path / "prompts.txt").write_text("a red circle\n")
    assert main(["eval", "--model", "sd", "--prompts", str(tmp_path / "nope.txt")]) == 2
    assert "prompts: file not found" in capsys.readouterr().err
    assert main(["eval", "--model", "sd", "--prompts", str(tmp_path / "prompts.txt"),
                 "--presets", "off,warp"]) == 2
    assert "unknown preset 'warp'" in capsys.readouterr().err


def test_demo_clip_prefers_matching_captions():
    try:
        adapter = models.load_clip("demo")
    except models.Unavailable as exc:
        pytest.skip(f"demo CLIP not available: {exc}")
    from accelerate_diffusion.demo import dataset

    images, captions, _ = dataset.generate(4, split="train", start=5000)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    matched = quality.clip_score(x, captions, adapter)
    shuffled = quality.clip_score(x, captions[1:] + captions[:1], adapter)
    assert matched > shuffled + 10


def test_video_report_has_per_frame_metrics_and_strips(tmp_path):
    from accelerate_diffusion.eval.report import EvalReport, compute_metrics

    g = torch.Generator().manual_seed(3)
    off = torch.rand(2, 5, 3, 16, 16, generator=g)          # 2 videos of 5 frames
    fast = off.clone()
    fast[:, 3:] = (fast[:, 3:] + 0.1).clamp(0, 1)            # only the last frames differ
    results = [{"label": label, "preset": label, "times_s": [2.0, 2.2], "baseline_s": base,
                "macs": macs, "acceleration": {"applied": [], "skipped": []}}
               for label, base, macs in (("off", [2.0, 2.2], 100), ("fast", [2.1, 2.1], 50))]
    metrics = compute_metrics(results, {"off": off, "fast": fast}, prompts=["a", "b"], model=None,
                              fid_features="random", clip=None, lpips_net=None)
    row = metrics["rows"][1]
    assert row["speedup"] == pytest.approx(2.1 / 2.1) and row["macs_ratio"] == 2.0
    assert row["per_frame"]["psnr"][:3] == [math.inf] * 3 and row["per_frame"]["psnr"][3] < 30
    assert metrics["info"]["clip_score"]["skipped"].startswith("no local CLIP model")
    meta = {"model": "fake", "pipeline": "Fake", "steps": 2, "seeds": [0], "prompts": ["a", "b"],
            "repeats": 2, "warmup": 1, "device": "cpu", "torch_threads": 1, "torch": "x",
            "timing": "t", "memory": "m", "date": "d"}
    report = EvalReport(meta, metrics["rows"], metrics["info"], {"off": off, "fast": fast}, ["off", "fast"])
    report.write(str(tmp_path))
    assert (tmp_path / "strips" / "prompt_01.png").is_file() and (tmp_path / "grids" / "prompt_00.png").is_file()
    assert "## Per-frame PSNR (dB) vs off" in (tmp_path / "report.md").read_text()


def test_lpips_is_refused_in_one_line_where_it_cannot_run(tmp_path, capsys, monkeypatch):
    from accelerate_diffusion.eval import models

    monkeypatch.setattr(models, "lpips_missing", lambda: models.LPIPS_INSTALL)
    (tmp_path / "p.txt").write_text("a red circle\n")
    assert main(["eval", "--model", "sd", "--prompts", str(tmp_path / "p.txt"), "--lpips-net", "alex"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --lpips-net alex: LPIPS needs torchvision") and "--lpips-net none" in err
    assert len(err.splitlines()) == 1
