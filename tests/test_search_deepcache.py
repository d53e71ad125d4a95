"""DeepCache calibration (exhaustive grid) on a micro SD UNet: files, a non-dominated front that
reproduces its metrics, picking a point through accelerate(), reuse of earlier evaluations,
bad arguments."""

import csv
import json
import os
import shutil

import pytest
import torch

pytest.importorskip("pymoo")

from accelerate_diffusion import accelerate  # noqa: E402
from accelerate_diffusion.cli import main as cli_main  # noqa: E402
from accelerate_diffusion.eval.fidelity import psnr  # noqa: E402
from accelerate_diffusion.schedules import search_deepcache as sdc  # noqa: E402
from accelerate_diffusion.schedules.fronts import DeepCachePoint, load_deepcache_front, pick_deepcache  # noqa: E402
from accelerate_diffusion.schedules.search_deepcache import DeepCacheSearchConfig, parse_grid, search_deepcache  # noqa: E402
from accelerate_diffusion.testing import call_kwargs, run_counted  # noqa: E402

PROMPTS = ["a red circle", "a blue square"]
STEPS = 4


def _extra():
    kw = call_kwargs("sd", "micro", steps=STEPS)
    return {k: v for k, v in kw.items() if k not in ("prompt", "generator", "output_type", "num_inference_steps")}


def _config(**kw):
    grid = dict(steps=STEPS, metric="psnr", cache_interval=(2, 3), cache_branch=(0, 1), schedule=("uniform",),
                always_full_start=(1,), always_full_end=(0, 1), forecast=(0,))
    return DeepCacheSearchConfig(**{**grid, **kw})


def _run(pipe, out, **kw):
    return search_deepcache(pipe, PROMPTS, out, _config(**kw), call_kwargs=_extra(), progress=False)


@pytest.fixture(scope="module")
def calibrated(pipelines, tmp_path_factory):
    out = tmp_path_factory.mktemp("deepcache")
    return _run(pipelines("sd"), out), out


def _points(out):
    return [DeepCachePoint.load(out / f) for f in sorted(os.listdir(out)) if f.startswith("front-")]


def test_calibration_writes_a_valid_non_dominated_front(pipelines, calibrated):
    result, out = calibrated
    assert not hasattr(pipelines("sd"), "acceleration")          # every run was removed
    points = _points(out)
    assert points and len(points) == len(result.front)
    for p in points:
        assert p.num_steps == STEPS and p.full_step_indices[0] == 0 and len(p.full_step_indices) < STEPS
        assert {"quality_loss", "macs_ratio", "quality_metric"} <= set(p.metrics) and p.metrics["macs_ratio"] > 1
    objectives = [(p.metrics["quality_loss"], 1 / p.metrics["macs_ratio"]) for p in points]
    for i, (q, c) in enumerate(objectives):
        assert not any(q2 <= q and c2 <= c and (q2, c2) != (q, c) for j, (q2, c2) in enumerate(objectives) if j != i)
    with open(out / "evaluations.csv") as f:
        rows = list(csv.DictReader(f))
    # 8 grid configurations (2 N x 2 b x 2 last) + the presets, identical ones merged
    assert len(rows) == result.evaluations and result.evaluations <= result.configurations
    assert sum(int(r["on_front"]) for r in rows) == len(points)
    origins = " ".join(r["origin"] for r in rows)
    assert all(f"preset {p}" in origins for p in ("quality", "balanced", "fast", "max"))
    for r in rows:                      # every configuration is dominated by or equal to a front point
        q, c = float(r["quality_loss"]), float(r["macs_fraction"])
        assert any(q2 <= q + 1e-8 and c2 <= c + 1e-8 for q2, c2 in objectives)
    summary = json.loads((out / "search-summary.txt").read_text())
    assert summary["evaluations"] == len(rows) and summary["search"] == "exhaustive grid"
    assert summary["wall_seconds"] > 0 and summary["max_branch"] >= 1
    assert (out / "front.png").stat().st_size > 1000


def test_front_point_reproduces_its_metrics(pipelines, calibrated):
    """A front file applied as deepcache's point gives its recorded loss and MACs."""
    _, out = calibrated
    pipe = pipelines("sd")
    point = min(_points(out), key=lambda p: p.metrics["quality_loss"])

    def images(**acc):
        kw = {**_extra(), "prompt": PROMPTS, "num_inference_steps": STEPS, "output_type": "pt",
              "generator": [torch.Generator("cpu").manual_seed(i) for i in range(len(PROMPTS))]}
        return run_counted(pipe, kw, **acc)

    reference, base_macs = images()
    cached, macs = images(deepcache={"point": point.metrics.get("path") or str(out / "front-00.json")})
    assert 1 - min(psnr(reference, cached), 100) / 100 == pytest.approx(point.metrics["quality_loss"], abs=1e-5)
    assert base_macs / macs == pytest.approx(point.metrics["macs_ratio"], rel=1e-9)
    assert macs < base_macs


def test_accelerate_picks_a_point_by_budget(pipelines, calibrated, tmp_path):
    _, out = calibrated
    pipe = pipelines("sd")
    front = load_deepcache_front(out)
    losses = sorted(p.metrics["quality_loss"] for p in front)
    fastest = max(front, key=lambda p: p.metrics["macs_ratio"])
    assert pick_deepcache(out, max_quality_loss=1.0).name == fastest.name
    assert pick_deepcache(out, max_quality_loss=losses[0]).metrics["quality_loss"] == losses[0]
    assert pick_deepcache(out, preset="max").name == fastest.name
    budget = losses[len(losses) // 2]
    chosen = pick_deepcache(out, max_quality_loss=budget)
    accelerate(pipe, "fast", deepcache={"schedule_dir": str(out), "max_quality_loss": budget})
    try:
        applied = pipe.acceleration.plan["deepcache"].to_dict()
        assert {k: applied[k] for k in chosen.config} == chosen.config and applied["point"] == chosen.metrics["path"]
        assert "block_cache" not in pipe.acceleration.plan
    finally:
        pipe.acceleration.remove()
    lossy = tmp_path / "lossy"       # the points that lose something (a point may reach loss 0 here)
    lossy.mkdir()
    for p in front:
        if p.metrics["quality_loss"] > 0:
            shutil.copy(p.metrics["path"], lossy)
    best = min(p.metrics["quality_loss"] for p in load_deepcache_front(lossy))
    with pytest.raises(ValueError, match="no DeepCache point .* is that close"):
        accelerate(pipe, "fast", deepcache={"schedule_dir": str(lossy), "max_quality_loss": best / 2})
    with pytest.raises(ValueError, match="is a DeepCache calibration; pass it as deepcache"):
        accelerate(pipelines("pixart"), "fast", block_cache={"schedule_dir": str(out)})
    with pytest.raises(ValueError, match="must be a number >= 0"):
        pick_deepcache(out, max_quality_loss=-1)
    with pytest.raises(ValueError, match="does not apply to the pixart family"):
        accelerate(pipelines("pixart"), "fast", deepcache={"schedule_dir": str(out)})
    assert not hasattr(pipe, "acceleration") and not hasattr(pipelines("pixart"), "acceleration")


def test_rerun_reuses_evaluations(pipelines, calibrated, tmp_path, monkeypatch):
    result, out = calibrated
    pipe = pipelines("sd")
    calls = []
    original = sdc._DeepCacheEvaluator.__call__
    monkeypatch.setattr(sdc._DeepCacheEvaluator, "__call__", lambda self, c: calls.append(c) or original(self, c))
    again = _run(pipe, out)
    assert calls == [] and [p.config for p in again.front] == [p.config for p in result.front]
    wider = _run(pipe, out, cache_interval=(2, 3, 4))   # a wider grid evaluates only the new configurations
    assert 0 < len(calls) == wider.evaluations - result.evaluations
    with pytest.raises(ValueError, match=r"different steps \(4 in the folder, 5 now\)"):
        _run(pipe, out, steps=5)


def test_the_grid_keeps_reuse_and_forecast_apart_and_covers_the_whole_body(pipelines, tmp_path):
    result = _run(pipelines("sd"), tmp_path, cache_interval=(3,), cache_branch=(-1, 0), always_full_end=(0,),
                  forecast=(0, 1), steps=6)                    # full steps 0, 3: step 4 and 5 can be forecast
    with open(tmp_path / "evaluations.csv") as f:
        grid = [r for r in csv.DictReader(f) if r["origin"].startswith("grid")]
    by = {(r["cache_branch"], r["forecast"]): r for r in grid}
    assert set(by) == {("-1", "0"), ("-1", "1"), ("0", "0"), ("0", "1")}     # same full steps, not merged
    assert by[("-1", "0")]["quality_loss"] != by[("-1", "1")]["quality_loss"]
    # the whole body skips more than branch 0 on the same steps
    assert float(by[("-1", "0")]["macs_fraction"]) < float(by[("0", "0")]["macs_fraction"])
    assert len(grid) < result.evaluations          # the presets' settings are evaluated too


def test_bad_arguments_give_clear_errors(pipelines, tmp_path, capsys):
    pipe = pipelines("sd")
    with pytest.raises(ValueError, match="file not found"):
        search_deepcache(pipe, tmp_path / "missing.txt", tmp_path / "x", _config())
    with pytest.raises(ValueError, match="cache_interval is empty"):
        _run(pipe, tmp_path / "x", cache_interval=())
    with pytest.raises(ValueError, match="cache_interval"):
        _run(pipe, tmp_path / "x", cache_interval=(0,))
    with pytest.raises(ValueError, match=r"cache_branch 9 is out of range for this UNet; allowed \[-1, 3\]"):
        _run(pipe, tmp_path / "x", cache_branch=(9,))
    with pytest.raises(ValueError, match="no configuration caches any step"):
        _run(pipe, tmp_path / "x", always_full_start=(STEPS,))
    with pytest.raises(ValueError, match="metric"):
        _run(pipe, tmp_path / "x", metric="fid")
    with pytest.raises(ValueError, match="no UNet denoiser"):
        search_deepcache(pipelines("pixart"), PROMPTS, tmp_path / "x", _config())
    with pytest.raises(ValueError, match="no DeepCache point"):
        load_deepcache_front(tmp_path)
    with pytest.raises(ValueError, match="expected FIELD"):
        parse_grid(["cache_size=2"])
    with pytest.raises(ValueError, match="empty grid"):
        parse_grid(["cache_interval="])
    assert parse_grid(["cache_interval=2,3", "schedule=uniform", "center=0.25,0.3"]) == {
        "cache_interval": (2, 3), "schedule": ("uniform",), "center": (0.25, 0.3)}
    with pytest.raises(ValueError, match=r"deepcache\.center: 8.0 is out of range; allowed \[0.0, 1.0\]"):
        _config(schedule=("nonuniform",), center=(8.0,)).validate()
    (tmp_path / "p.txt").write_text("a red circle\n")
    assert cli_main(["search", "--model", "pixart", "--size", "micro", "--prompts", str(tmp_path / "p.txt"),
                     "--grid", "cache_interval=2", "--out", str(tmp_path / "z")]) == 2
    assert "UNet models only" in capsys.readouterr().err


def test_cli_calibrates_a_unet(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    rc = cli_main(["search", "--model", "sd", "--size", "micro", "--prompts", str(tmp_path / "p.txt"),
                   "--steps", "3", "--grid", "cache_interval=2", "--grid", "cache_branch=0,1",
                   "--grid", "schedule=uniform", "--grid", "always_full_start=1", "--grid", "always_full_end=0",
                   "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 0
    assert "DeepCache calibration" in capsys.readouterr().out
    summary = json.loads((tmp_path / "o" / "search-summary.txt").read_text())
    assert summary["config"]["cache_interval"] == [2] and summary["prompts"] == ["a red circle", "a blue square"]
    assert load_deepcache_front(tmp_path / "o")
