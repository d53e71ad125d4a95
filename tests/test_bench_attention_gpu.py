"""The GPU attention benchmark's --dry-run: every pattern and backend row prints on CPU."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_attention_gpu.py"


def test_dry_run_prints_every_pattern_and_backend(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = importlib.util.spec_from_file_location("bench_attention_gpu", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--dry-run"])
    out = capsys.readouterr().out
    names = [name for name, _ in bench.patterns(True)]
    assert len(names) == 8 and all(name in out for name in names)
    rows = [line.split("|", 1)[1].split() for line in out.splitlines() if "|" in line and not line.startswith("pattern")]
    timed = [r for r in rows if len(r) >= 7 and r[1] != "not"]
    # dense, flex (eager) and xformers (plan through the torch executor) ran where they can
    assert sum(r[0] == "dense" for r in timed) == 8 and sum(r[0] == "flex" for r in timed) == 8
    assert sum(r[0] == "xformers" for r in timed) == 6
    assert all(float(r[5]) < 1e-4 for r in timed if r[0] != "dense")      # max error vs reference
    assert out.count("xformers not run: not expressible") == 2             # the 2D and 3D sliding windows
    assert "triton   not run: triton needs CUDA" in out
