"""bench_flex_cpu.py --smoke runs (eager, tiny), and its Hilbert order is a Hilbert curve."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_flex_cpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_flex_cpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hilbert_order_visits_every_token_by_unit_steps_and_squares():
    h = _load().hilbert_order(16)
    assert torch.equal(torch.sort(h).values, torch.arange(256))
    y, x = h // 16, h % 16
    assert ((y[1:] - y[:-1]).abs() + (x[1:] - x[:-1]).abs()).eq(1).all()   # grid neighbours
    for start in range(0, 256, 16):                                         # runs of 16 are 4x4 squares
        ys, xs = y[start:start + 16], x[start:start + 16]
        assert ys.max() - ys.min() == 3 and xs.max() - xs.min() == 3


def test_smoke_run_prints_all_variants(capsys):
    _load().main(["--smoke"])
    out = capsys.readouterr().out
    for word in ("dense SDPA", "plain", "tiled", "flex dense", "hilbert", "split"):
        assert out.count(word) >= 2, word
    assert out.count("| grouped") == 1                                      # strided only
    rows = [line.split("|")[1].split() for line in out.splitlines()
            if any(f"| {v} " in line for v in ("plain", "tiled", "grouped"))]
    errs = [float(t) for r in rows for t in r if "e-" in t or "e+" in t]   # the maxerr column
    assert len(errs) == 5 and max(errs) < 1e-5
