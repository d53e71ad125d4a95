"""Usage errors are one line naming the flag and what is allowed; --help shows defaults."""

import socket

import pytest

from accelerate_diffusion import cli, loading


@pytest.mark.parametrize("argv,message", [
    (["generate", "--prompt", "x", "--steps", "-5"], "error: --steps: -5 is out of range; allowed 1 to 1000"),
    (["generate", "--prompt", "x", "--steps", "0"], "error: --steps: 0 is out of range; allowed 1 to 1000"),
    (["generate", "--prompt", "x", "--guidance", "-1"], "error: --guidance: -1.0 is out of range"),
    (["bench", "--pipeline", "sd", "--steps", "0"], "error: --steps: 0 is out of range"),
    (["eval", "--model", "sd", "--prompts", "p.txt", "--repeats", "0"], "error: --repeats: 0 is out of range"),
    (["generate", "--prompt", "x", "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
])
def test_bad_numbers_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    if argv[0] == "generate":
        argv = argv + ["--out", str(tmp_path)]
    try:
        code = cli.main(argv)
    except SystemExit as exc:           # argparse's own errors (not a number at all)
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_app_on_a_busy_port_is_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["app", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"error: --port {port}: cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    assert len(err.splitlines()) == 1


def test_help_shows_defaults_and_explains_set(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE prompts per pipeline call (default: 1)" in text
    assert "--preset {off,quality,balanced,fast,max,auto} acceleration preset" in text
    assert "stored in the user cache directory) (default: balanced)" in text
    assert "--set TECH.FIELD=VALUE override a technique setting" in text
    assert "--overwrite regenerate items" in text and "--max-pixels" in text
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    assert "--repeats REPEATS (default: 3)" in " ".join(capsys.readouterr().out.split())


def test_a_fresh_process_prints_the_error_alone(tmp_path):
    """In a new process the libraries' import-time notes (torchvision missing, ...) would come first."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "accelerate_diffusion.cli", "generate", "--prompt", "x",
                           "--model", "sd", "--num-frames", "5", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --num-frames: 'sd' (StableDiffusionPipeline) makes images, not videos"
