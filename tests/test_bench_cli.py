"""The bench command's behaviour (not its timings): same-run figures, override parsing."""

import json

import pytest

from accelerate_diffusion.cli import main
from accelerate_diffusion.loading import parse_overrides


def test_parse_overrides():
    assert parse_overrides(["guidance.threshold=0.99", "guidance.mode=adaptive", "deepcache=off"]) == {
        "guidance": {"threshold": 0.99, "mode": "adaptive"}, "deepcache": False}
    with pytest.raises(ValueError, match="unknown technique 'warp'"):
        parse_overrides(["warp.x=1"])
    with pytest.raises(ValueError, match="expected technique.field=value"):
        parse_overrides(["guidance"])


def test_bench_off_is_exact(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--pipeline", "sd", "--preset", "off", "--steps", "3", "--repeats", "2",
                 "--warmup", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["psnr"] == float("inf") and result["ssim"] == pytest.approx(1.0)
    assert result["macs_ratio"] == 1.0 and result["baseline_macs"] > 0
    assert result["wall_ratio"] == pytest.approx(result["baseline_s"] / result["accelerated_s"])
    printed = capsys.readouterr().out
    assert "baseline" in printed and "PSNR inf" in printed


def test_bench_bad_preset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--pipeline", "sd", "--preset", "turbo"])
    assert "invalid choice" in capsys.readouterr().err
