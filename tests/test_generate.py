"""Batch generation CLI: inputs, outputs, resume, bad input, and a 2-process run."""

import json
import os
import subprocess
import sys

import pytest

from accelerate_diffusion import cli, loading
from accelerate_diffusion.generate import Item, read_prompts


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_prompts_txt_jsonl_csv(tmp_path):
    txt = read_prompts(_write(tmp_path, "p.txt", "a red circle\n\n a blue square \n"))
    assert [i.prompt for i in txt] == ["a red circle", "a blue square"] and txt[1].index == 1
    jsonl = read_prompts(_write(tmp_path, "p.jsonl", '{"prompt": "x", "seed": 7, "steps": 3}\n'
                                                     '{"prompt": "y", "negative_prompt": "blurry"}\n'))
    assert jsonl[0] == Item(0, "x", seed=7, steps=3) and jsonl[1].negative_prompt == "blurry"
    csv = read_prompts(_write(tmp_path, "p.csv", "prompt,seed,height,width,guidance\nz,3,32,48,4.5\n"))
    assert csv[0] == Item(0, "z", seed=3, height=32, width=48, guidance=4.5)


@pytest.mark.parametrize("name,text,message", [
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "bad.jsonl line 2: not valid JSON"),
    ("bad2.jsonl", '{"prompt": "ok"}\n{"prompt": "x", "seed": "abc"}\n', "bad2.jsonl line 2: 'seed' must be an integer"),
    ("bad3.jsonl", '{"prompt": "ok", "colour": 1}\n', "bad3.jsonl line 1: unknown field\\(s\\) colour"),
    ("bad.csv", "prompt,steps\nx,0\n", "bad.csv line 2: 'steps' = 0 is out of range"),
    ("nohead.csv", "text\nx\n", "must include 'prompt'"),
    ("empty.txt", "\n\n# a comment\n", "no prompt in"),
])
def test_read_prompts_errors_name_the_line(tmp_path, name, text, message):
    with pytest.raises(ValueError, match=message):
        read_prompts(_write(tmp_path, name, text))


def test_missing_file_and_bad_size_fail_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    assert cli.main(["generate", "--prompts", str(tmp_path / "nope.txt"), "--out", str(tmp_path)]) == 2
    assert "prompts: file not found" in capsys.readouterr().err
    assert cli.main(["generate", "--prompt", "x", "--model", "sd3", "--height", "40",
                     "--out", str(tmp_path)]) == 2
    assert "height 40 is not a multiple of 16" in capsys.readouterr().err
    assert cli.main(["generate", "--out", str(tmp_path)]) == 2
    assert "exactly one of --prompt or --prompts" in capsys.readouterr().err


def test_generate_writes_images_manifest_and_resumes(tmp_path, capsys):
    prompts = _write(tmp_path, "p.txt", "a red circle\na blue square\na green star\n")
    out = tmp_path / "out"
    args = ["generate", "--prompts", str(prompts), "--model", "sd", "--out", str(out), "--preset", "off",
            "--steps", "2", "--batch-size", "2", "--num-images-per-prompt", "2", "--quiet"]
    assert cli.main(args) == 0
    assert "generated 6 output(s) for 3 item(s)" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == ["00000_00", "00001_00", "00002_00"]
    assert records[1]["files"] == ["00001_00.png", "00001_01.png"] and records[1]["seed"] == 1
    assert records[0]["preset"] == "off" and records[0]["techniques"] == []
    assert sorted(p.name for p in out.glob("*.png")) == [f"0000{i}_0{k}.png" for i in range(3) for k in range(2)]
    assert not list(out.glob(".*tmp*"))
    # An interrupted item (file gone, or its manifest line cut) is redone; finished ones are skipped.
    (out / "00002_01.png").unlink()
    assert cli.main(args) == 0
    assert "generated 2 output(s) for 1 item(s) (2 of 3 already done)" in capsys.readouterr().out


def test_two_processes_split_and_merge(tmp_path):
    prompts = _write(tmp_path, "p.txt", "one\ntwo\nthree\n")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "accelerate_diffusion.cli", "generate", "--prompts", str(prompts), "--model", "sd",
           "--out", str(out), "--preset", "off", "--steps", "2", "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[process 0/2]" in done.stdout and "[process 1/2]" in done.stdout
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == ["00000_00", "00001_00", "00002_00"]
    assert {r["rank"] for r in records} == {0, 1}
    assert not list(out.glob("manifest.rank*.jsonl"))


def test_huge_sizes_are_refused_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    assert cli.main(["generate", "--prompt", "a red circle", "--width", "100000", "--height", "100000",
                     "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--height/--width 100000 x 100000 = 10,000,000,000 pixels" in err and "--max-pixels" in err
    rows = _write(tmp_path, "p.jsonl", '{"prompt": "x", "height": 8192, "width": 8192}\n')
    assert cli.main(["generate", "--prompts", str(rows), "--model", "sd", "--out", str(tmp_path)]) == 2
    assert "item 0 ('x') height/width 8192 x 8192" in capsys.readouterr().err


def test_memory_estimate_refuses_what_does_not_fit(tmp_path, monkeypatch, capsys):
    from accelerate_diffusion import generate as gen
    from accelerate_diffusion.testing import make_pipeline

    pipe = make_pipeline("sd")
    small, large = gen.estimate_memory(pipe, 64, 64), gen.estimate_memory(pipe, 128, 128)
    assert large == 4 * small and gen.estimate_memory(pipe, 64, 64, batch=3) == 3 * small
    assert gen.estimate_memory(pipe, 100_000, 100_000) > 2**40          # > 1 TiB: no machine here has it
    monkeypatch.setattr(gen, "available_memory", lambda device: 2**18)  # 0.25 MiB free
    args = ["generate", "--prompt", "x", "--model", "sd", "--preset", "off", "--steps", "2",
            "--height", "64", "--width", "64", "--out", str(tmp_path / "o"), "--quiet"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "64 x 64" in err and "needs an estimated 0.5 MiB but 0.2 MiB is free" in err and "--no-memory-check" in err
    assert cli.main(args + ["--no-memory-check"]) == 0


def test_resume_only_keeps_items_made_with_the_same_settings(tmp_path, capsys):
    prompts = _write(tmp_path, "p.txt", "a red circle\na blue square\n")
    out = tmp_path / "out"
    base = ["generate", "--prompts", str(prompts), "--model", "sd", "--out", str(out), "--quiet"]
    first = base + ["--preset", "fast", "--steps", "3"]
    assert cli.main(first) == 0
    capsys.readouterr()
    (record,) = [r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines()) if r["index"] == 0]
    settings = record["settings"]
    assert (settings["model"], settings["preset"], settings["steps"], settings["seed"]) == ("sd", "fast", 3, 0)
    assert settings["scheduler"].startswith("DDIMScheduler:") and settings["height"] == 32
    before = (out / "00000_00.png").read_bytes()

    changed = base + ["--preset", "off", "--steps", "2"]
    assert cli.main(changed) == 2                      # refused: nothing is silently kept or replaced
    err = capsys.readouterr().err.strip()
    assert "2 of 2 item(s) were made with other settings" in err and "--overwrite" in err
    assert "preset 'fast' -> 'off'" in err and "steps 3 -> 2" in err and len(err.splitlines()) == 1
    assert (out / "00000_00.png").read_bytes() == before

    assert cli.main(changed + ["--overwrite"]) == 0
    assert "replaced 2 item(s) made with other settings" in capsys.readouterr().out
    assert (out / "00000_00.png").read_bytes() != before
    assert cli.main(changed) == 0
    assert "(2 of 2 already done)" in capsys.readouterr().out
    assert cli.main(changed + ["--seed", "5"]) == 2     # the seed is a setting too
    assert "seed 0 -> 5" in capsys.readouterr().err
    _write(tmp_path, "p.txt", "a red circle\na green star\n")   # line 2 now asks for another picture
    assert cli.main(changed) == 2
    assert "1 of 2 item(s)" in capsys.readouterr().err


def test_preset_auto_from_the_cli_calibrates_once_and_records_its_target(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["generate", "--prompt", "a red circle", "--model", "pixart", "--out", str(out), "--preset", "auto",
            "--target-psnr", "1000", "--calibration-budget", "2", "--steps", "10", "--quiet"]
    assert cli.main(args) == 0
    stored = list((tmp_path / "cache").glob("*.json"))
    assert len(stored) == 1 and "10steps" in stored[0].name
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert record["settings"]["auto"] == {"target_psnr": 1000.0, "budget": 2} and record["techniques"] == []


@pytest.mark.parametrize("extra, message", [
    (["--preset", "auto"], "--preset auto: give one quality target"),
    (["--preset", "fast", "--target-psnr", "30"], "--target-psnr/--target-ssim: only with --preset auto"),
])
def test_preset_auto_flags_are_checked(tmp_path, capsys, extra, message):
    assert cli.main(["generate", "--prompt", "a", "--model", "pixart", "--out", str(tmp_path), *extra]) != 0
    assert message in capsys.readouterr().err
