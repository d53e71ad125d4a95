"""What the README's quick start promises: the demo snippet saves its image, the generate
command prints the speedup and where the images are, and bench shows progress."""

import re
from pathlib import Path

import pytest

from accelerate_diffusion import cli, demo

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(not demo.is_available("dit"), reason="demo weights not present")
def test_readme_demo_snippet_saves_its_image(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(b for b in blocks if "demo.load_pipeline" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet.replace("num_inference_steps=25", "num_inference_steps=8"), "README", "exec"), {})
    from PIL import Image

    assert Image.open(tmp_path / "demo.png").size == (64, 64)


def test_generate_prints_speedup_and_where_the_images_are(tmp_path, capsys):
    out = tmp_path / "quickstart"
    assert cli.main(["generate", "--model", "sd", "--preset", "fast", "--prompt", "a red circle",
                     "--steps", "10", "--num-images-per-prompt", "2", "--compare-baseline",
                     "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"speedup vs baseline \d+\.\d\dx", printed)
    assert f"images: {out / '00000_00.png'}, {out / '00000_01.png'}; manifest: {out / 'manifest.jsonl'}" in printed
    assert (out / "00000_01.png").is_file()


def test_bench_shows_progress(capsys):
    assert cli.main(["bench", "--pipeline", "sd", "--preset", "off", "--steps", "2", "--repeats", "1",
                     "--warmup", "1"]) == 0
    err = capsys.readouterr().err
    assert "bench" in err and "5/5" in err          # 2 counted + 1 warm-up + 2 timed calls
