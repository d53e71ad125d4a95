"""One prompts reader for generate, eval and search: the same file gives the same prompts."""

import pytest

from accelerate_diffusion.eval import runner
from accelerate_diffusion.generate import read_prompts
from accelerate_diffusion.prompts import prompt_texts


def test_eval_and_generate_read_a_jsonl_file_alike(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a red circle"}\n\n{"prompt": "a blue square"}\n')
    # eval used to take each JSON line as the prompt text
    assert runner.read_prompts(path) == ["a red circle", "a blue square"]
    assert [i.prompt for i in read_prompts(path)] == ["a red circle", "a blue square"]
    csv = tmp_path / "p.csv"
    csv.write_text("prompt\na green star\n")
    assert runner.read_prompts(csv) == ["a green star"]
    txt = tmp_path / "p.txt"
    txt.write_text("# calibration prompts\na red circle\n\n")
    assert runner.read_prompts(txt) == [i.prompt for i in read_prompts(txt)] == ["a red circle"]


def test_per_row_settings_are_refused_where_they_would_be_ignored(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a red circle"}\n{"prompt": "x", "seed": 3, "steps": 5}\n')
    with pytest.raises(ValueError, match=r"p.jsonl row 2: search reads only 'prompt'; seed, steps per row"):
        prompt_texts(path, "search")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl line 1: unknown field"):
        runner.read_prompts(bad)


def test_eval_cli_reads_jsonl_prompts(tmp_path, capsys):
    from accelerate_diffusion.cli import main

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a red circle"}\n')
    out = tmp_path / "report"
    assert main(["eval", "--model", "sd", "--prompts", str(path), "--presets", "off", "--steps", "2",
                 "--repeats", "1", "--warmup", "0", "--fid-features", "random", "--clip", "none",
                 "--lpips-net", "none", "--out", str(out), "--no-progress"]) == 0
    import json

    assert json.loads((out / "report.json").read_text())["meta"]["prompts"] == ["a red circle"]
