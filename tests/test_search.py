"""Schedule search (ECAD): a tiny NSGA-II run end to end, its files, resume after an
interrupt, a non-dominated front, picking a front point through accelerate(), bad arguments."""

import csv
import json
import re
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("pymoo")

from accelerate_diffusion import accelerate  # noqa: E402
from accelerate_diffusion.cli import main as cli_main  # noqa: E402
from accelerate_diffusion.families import family_of, find_denoiser  # noqa: E402
from accelerate_diffusion.schedules import CacheSchedule, ScheduleLayout, measure_component_macs  # noqa: E402
from accelerate_diffusion.schedules import search as search_mod  # noqa: E402
from accelerate_diffusion.schedules.fronts import load_front, pick  # noqa: E402
from accelerate_diffusion.schedules.search import SearchConfig, search  # noqa: E402
from accelerate_diffusion.testing import call_kwargs, run_counted  # noqa: E402

PROMPTS = ["a red circle", "a blue square"]
STEPS = 3


def _extra():
    kw = call_kwargs("pixart", "micro", steps=STEPS)
    return {k: v for k, v in kw.items() if k not in ("prompt", "generator", "output_type", "num_inference_steps")}


def _run(pipe, out, generations=2, **kw):
    config = SearchConfig(steps=STEPS, generations=generations, population=4)
    return search(pipe, PROMPTS, out, config, call_kwargs=_extra(), progress=False, **kw)


@pytest.fixture(scope="module")
def searched(pipelines, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    return _run(pipelines("pixart"), out), out


def test_search_writes_a_valid_non_dominated_front(pipelines, searched):
    result, out = searched
    pipe = pipelines("pixart")
    layout = ScheduleLayout.of(family_of(find_denoiser(pipe)[1]), find_denoiser(pipe)[1])
    assert result.front and result.generations == 2 and result.evaluations >= 4
    files = sorted(f for f in os.listdir(out) if f.startswith("front-"))
    assert len(files) == len(result.front)
    points = []
    for f in files:
        sched = CacheSchedule.load(out / f)
        sched.check_compatible(layout)
        assert sched.num_steps == STEPS and sched.recompute[0].all() and not sched.recompute.all()
        assert {"quality_loss", "macs_ratio", "quality_metric"} <= set(sched.metrics)
        points.append((sched.metrics["quality_loss"], 1 / sched.metrics["macs_ratio"]))
    for i, (q, c) in enumerate(points):          # no point is dominated by another
        assert not any(q2 <= q and c2 <= c and (q2, c2) != (q, c) for j, (q2, c2) in enumerate(points) if j != i)
    with open(out / "evaluations.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result.evaluations
    assert sum(int(r["on_front"]) for r in rows) == len(files)
    assert any(r["origin"].startswith("fora:") for r in rows)   # seeded with the heuristics
    # every evaluated candidate is dominated by or equal to a front point
    for r in rows:
        q, c = float(r["quality_loss"]), float(r["macs_fraction"])
        assert any(q2 <= q + 1e-8 and c2 <= c + 1e-8 for q2, c2 in points)
    assert (out / "front.png").stat().st_size > 1000


def test_front_schedule_reproduces_its_metrics_and_mac_estimate(pipelines, searched):
    """A front file run as block_cache's schedule gives its recorded loss; the MACs
    estimate matches the counted denoiser MACs."""
    from accelerate_diffusion.eval.fidelity import ssim

    result, out = searched
    pipe = pipelines("pixart")
    sched = max(result.front, key=lambda s: s.metrics["macs_ratio"])
    path = out / [f for f in sorted(os.listdir(out)) if f.startswith("front-")][-1]

    def images(**acc):
        kw = {**_extra(), "prompt": PROMPTS, "num_inference_steps": STEPS, "output_type": "pt",
              "generator": [torch.Generator("cpu").manual_seed(i) for i in range(len(PROMPTS))]}
        return run_counted(pipe, kw, **acc)

    reference, base_macs = images()
    cached, macs = images(block_cache={"schedule": str(path)})
    assert 1 - ssim(reference, cached) == pytest.approx(sched.metrics["quality_loss"], abs=1e-5)
    assert base_macs / macs == pytest.approx(sched.metrics["macs_ratio"], rel=0.02)


def test_resume_after_interrupt_loses_nothing(pipelines, tmp_path, monkeypatch):
    pipe = pipelines("pixart")
    full = _run(pipe, tmp_path / "full", generations=3)
    calls = []
    original = search_mod._Evaluator.__call__

    def interrupted(self, schedule):
        if len(calls) == 6:                      # in the middle of generation 2
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, schedule)

    monkeypatch.setattr(search_mod._Evaluator, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(pipe, tmp_path / "cut", generations=3)
    assert not hasattr(pipe, "acceleration")    # the pipeline was left clean
    assert (tmp_path / "cut" / search_mod.STATE_FILE).exists()
    monkeypatch.setattr(search_mod._Evaluator, "__call__", original)
    counted = []
    monkeypatch.setattr(search_mod._Evaluator, "__call__",
                        lambda self, s: counted.append(1) or original(self, s))
    resumed = _run(pipe, tmp_path / "cut", generations=3)
    # the same search as the uninterrupted one, and nothing evaluated twice
    assert resumed.evaluations == full.evaluations
    assert len(calls) + len(counted) == full.evaluations
    assert [s.metrics["quality_loss"] for s in resumed.front] == [s.metrics["quality_loss"] for s in full.front]
    # a finished search resumed again evaluates nothing; more generations continue it
    counted.clear()
    again = _run(pipe, tmp_path / "cut", generations=3)
    assert counted == [] and again.evaluations == full.evaluations


def test_pick_by_budget_and_accelerate_keywords(pipelines, searched, tmp_path):
    result, out = searched
    pipe = pipelines("pixart")
    front = load_front(out)
    losses = sorted(s.metrics["quality_loss"] for s in front)
    chosen = pick(out, max_quality_loss=losses[0])
    assert chosen.metrics["quality_loss"] == losses[0]
    fastest = pick(out, max_quality_loss=1.0)
    assert fastest.metrics["macs_ratio"] == max(s.metrics["macs_ratio"] for s in front)
    assert pick(out, preset="max").metrics["macs_ratio"] == fastest.metrics["macs_ratio"]
    # a front whose best point loses something (seeds may reach loss 0 on this tiny model)
    lossy = tmp_path / "lossy"
    lossy.mkdir()
    for s in front:
        if s.metrics["quality_loss"] > 0:
            shutil.copy(s.metrics["path"], lossy)
    best = min(s.metrics["quality_loss"] for s in load_front(lossy))
    with pytest.raises(ValueError, match="no schedule .* is that close"):
        pick(lossy, max_quality_loss=best / 2)
    with pytest.raises(ValueError, match="must be a number >= 0"):
        pick(out, max_quality_loss=-1)
    accelerate(pipe, "fast", block_cache={"schedule_dir": str(out), "max_quality_loss": 1.0})
    try:
        stats = [a for a in pipe.acceleration.report().applied if a["technique"] == "block_cache"][0]["stats"]
        assert stats["schedule"] == fastest.name
    finally:
        pipe.acceleration.remove()
    with pytest.raises(ValueError, match=r"block_cache\.max_quality_loss: .* set block_cache\.schedule_dir too"):
        accelerate(pipe, "off", block_cache={"max_quality_loss": 0.1})
    with pytest.raises(ValueError, match="unknown override.*schedule_dir"):
        accelerate(pipe, "off", schedule_dir=str(out))        # a field of the technique, not a keyword
    assert not hasattr(pipe, "acceleration")


def test_bad_arguments_give_clear_errors(pipelines, searched, tmp_path, capsys):
    _, out = searched
    pipe = pipelines("pixart")
    with pytest.raises(ValueError, match="file not found"):
        search(pipe, tmp_path / "missing.txt", tmp_path / "x", SearchConfig(steps=3, population=4))
    with pytest.raises(ValueError, match="population"):
        search(pipe, PROMPTS, tmp_path / "x", SearchConfig(steps=3, population=0))
    with pytest.raises(ValueError, match="metric"):
        SearchConfig(metric="fid").validate()
    with pytest.raises(ValueError, match=r"different steps \(3 in the checkpoint, 4 now\)"):
        search(pipe, PROMPTS, out, SearchConfig(steps=4, generations=2, population=4), call_kwargs=_extra(),
               progress=False)
    with pytest.raises(ValueError, match="no DiT denoiser"):
        search(pipelines("sd"), PROMPTS, tmp_path / "y", SearchConfig(steps=3, population=4))
    with pytest.raises(ValueError, match="no schedule with search metrics"):
        load_front(tmp_path)
    # the CLI reports them as errors (exit status 2), before loading any model
    assert cli_main(["search", "--model", "pixart", "--size", "micro", "--prompts", str(tmp_path / "none.txt"),
                     "--out", str(tmp_path / "z")]) == 2
    assert "file not found" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("a red circle\n")
    assert cli_main(["search", "--model", "pixart", "--size", "micro", "--prompts", str(tmp_path / "p.txt"),
                     "--population", "0", "--out", str(tmp_path / "z")]) == 2
    assert "population" in capsys.readouterr().err


def test_cli_search_end_to_end(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red circle\n# comment\na blue square\n")
    rc = cli_main(["search", "--model", "pixart", "--size", "micro", "--prompts", str(tmp_path / "p.txt"),
                   "--steps", "3", "--generations", "1", "--population", "3", "--out", str(tmp_path / "o"),
                   "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Pareto front" in printed
    # the summary names the files it wrote
    listed = re.findall(r"^  (front-\d\d\.json) ", printed, flags=re.M)
    assert listed and listed == sorted(f for f in os.listdir(tmp_path / "o") if f.startswith("front-"))
    summary = json.loads((tmp_path / "o" / "search-summary.txt").read_text())
    assert summary["evaluations"] >= 3 and summary["prompts"] == ["a red circle", "a blue square"]
    front = load_front(tmp_path / "o")
    assert front
    # warm start: every point of that front is in the next search's first generation
    rc = cli_main(["search", "--model", "pixart", "--size", "micro", "--prompts", str(tmp_path / "p.txt"),
                   "--steps", "3", "--generations", "1", "--population", "3", "--out", str(tmp_path / "o2"),
                   "--seed-front", str(tmp_path / "o"), "--metric", "psnr", "--quiet"])
    assert rc == 0
    archive = [json.loads(line) for line in (tmp_path / "o2" / "archive.jsonl").read_text().splitlines()]
    assert {search_mod._key(s.to_bits()) for s in front} <= {row["bits"] for row in archive}
    assert any(row["origin"].startswith(search_mod.WARM_START) for row in archive)   # told apart in the plot


def test_seeds_are_resampled_heuristics(pipelines):
    pipe = pipelines("pixart")
    denoiser = find_denoiser(pipe)[1]
    layout = ScheduleLayout.of(family_of(denoiser), denoiser)
    seeds = search_mod.heuristic_seeds(layout, 10)
    assert {"fora:2", "tgate:gate=0.5"} <= {s.name for s in seeds}
    assert all(s.num_steps == 10 and not s.recompute.all() for s in seeds)
    n_var = seeds[0].to_bits().size
    many = search_mod._initial(seeds, n_var, SearchConfig(steps=10, population=len(seeds) + 3))
    assert many.shape == (len(seeds) + 3, n_var) and not many.all(axis=1).any()
    assert all(np.array_equal(row, s.to_bits()) for row, s in zip(many, seeds))   # every seed, then random
    # --population caps the first generation: seeds spread from the cheapest to the most faithful
    assert len(seeds) > 6
    few = search_mod._initial(seeds, n_var, SearchConfig(steps=10, population=6))
    assert few.shape == (6, n_var)
    by_cost = sorted(seeds, key=lambda s: s.recompute_fraction())
    kept = [next(s for s in seeds if np.array_equal(s.to_bits(), row)) for row in few]
    assert kept[0] is by_cost[0] and kept[-1] is by_cost[-1] and len({id(s) for s in kept}) == 6
    comp, call = measure_component_macs(pipe, {**_extra(), "prompt": PROMPTS[:1]})
    assert 0 < comp.sum() < call


def test_shipped_front_loads_by_name():
    front = load_front("ecad-pixart-small-64px-12steps")
    assert len(front) >= 5 and all(s.model_family == "pixart" and s.num_steps == 12 for s in front)
    ratios = sorted(s.metrics["macs_ratio"] for s in front)
    assert ratios[0] > 1 and ratios[-1] > 2
    assert pick("ecad-pixart-small-64px-12steps", preset="fast").metrics["macs_ratio"] >= 2.0
    with pytest.raises(ValueError, match="shipped fronts: .*ecad-pixart-small-64px-12steps"):
        load_front("no-such-front")



def test_progress_bar_counts_the_candidates_run(pipelines, tmp_path, capsys):
    config = SearchConfig(steps=STEPS, generations=2, population=4)
    search(pipelines("pixart"), PROMPTS, tmp_path / "p", config, call_kwargs=_extra(), progress=True)
    counts = re.findall(r"(\d+)/(\d+) \[", capsys.readouterr().err)
    done, total = map(int, counts[-1])
    assert done == total <= 2 * 4               # the bar ends full, at no more than generations x population
    archive = [json.loads(line) for line in (tmp_path / "p" / "archive.jsonl").read_text().splitlines()]
    assert sum(row["generation"] == 1 for row in archive) <= 4      # the first generation is capped too
