"""benchmarks/attention_token_counts.py: the self-attention share grows with the clip, and the
end-to-end figure follows Amdahl's law."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "attention_token_counts.py"


def _load():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("attention_token_counts", SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_denoiser_speedup_is_amdahl():
    mod = _load()
    # half the MACs in attention at density 1/4: ideal kernel 1 / (0.5 + 0.125); half as good 1 / (0.5 + 0.25)
    assert mod.denoiser_speedup(0.5, 0.25, 1.0) == pytest.approx(1.6)
    assert mod.denoiser_speedup(0.5, 0.25, 0.5) == pytest.approx(4 / 3)
    assert mod.denoiser_speedup(0.3, 0.5, 0.5) == pytest.approx(1.0)       # kernel no faster than dense


def test_longer_clips_spend_more_in_self_attention():
    mod = _load()
    short, long = mod.probe("small", 64, 64, 5), mod.probe("small", 128, 128, 9)
    assert short["image_tokens"] < long["image_tokens"]
    assert 0 < short["share"] < long["share"] < 1
    assert 0 < long["density"] < 1


def test_unknown_model_is_one_line_error(capsys):
    with pytest.raises(SystemExit):
        _load().main(["--models", "wan99"])
    assert "--models: unknown model 'wan99'" in capsys.readouterr().err
