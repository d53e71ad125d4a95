"""The Gradio app: the comparison it shows, its input bounds, and a real-browser run."""

import os
import shutil
import socket

import pytest

from accelerate_diffusion.app import Comparer, available_models


@pytest.fixture(scope="module")
def comparer():
    return Comparer()


def test_compare_returns_both_outputs_and_figures(comparer):
    base, acc, figures, report = comparer.compare("sd", "a red circle", "", 0, 3, 5.0, 32, "off", "")
    assert base.endswith("baseline.png") and acc.endswith("accelerated.png")
    assert os.path.getsize(base) > 0 and os.path.getsize(acc) > 0
    assert "PSNR vs baseline: **inf dB**" in figures and "**1.00x**" in figures  # MACs ratio of off
    assert "preset 'off'" in report


def test_video_model_gives_animation(comparer):
    base, acc, _, _ = comparer.compare("wan", "a red circle", "", 0, 2, 5.0, 32, "off", "")
    assert base.endswith(".gif") and acc.endswith(".gif")


@pytest.mark.parametrize("args,message", [
    (("sd", "x", "", 0, 0, 5.0, 32, "off", ""), "steps: 0 is out of range"),
    (("sd", "x", "", 0, 2, 5.0, 4096, "off", ""), "size: 4096 is out of range"),
    (("sd", "", "", 0, 2, 5.0, 32, "off", ""), "prompt: must not be empty"),
    (("/etc/passwd", "x", "", 0, 2, 5.0, 32, "off", ""), "model: '/etc/passwd' is not offered"),
    (("sd", "x", "", 0, 2, 5.0, 32, "turbo", ""), "preset: unknown preset 'turbo'"),
    (("sd", "x", "", 0, 2, 5.0, 32, "off", "warp.x=1"), "unknown technique 'warp'"),
])
def test_inputs_are_bounded(comparer, args, message):
    with pytest.raises(ValueError, match=message):
        comparer.compare(*args)


def test_models_offered_include_tiny_pipelines():
    assert {"sd", "pixart", "sd3", "flux", "wan"} <= set(available_models())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_in_a_real_browser(comparer, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from accelerate_diffusion.app import build_app

    app = build_app(comparer, default_model="sd")
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            page.click("#generate")
            page.wait_for_selector("#figures :text('PSNR vs baseline')", timeout=120_000)
            page.wait_for_selector("#baseline img", timeout=30_000)
            page.wait_for_selector("#accelerated img", timeout=30_000)
            text = page.inner_text("#figures")
            assert "wall time" in text and "denoiser MACs" in text
            shot = os.environ.get("APP_SCREENSHOT") or str(tmp_path / "app.png")
            page.screenshot(path=shot, full_page=True)
            browser.close()
    finally:
        app.close()
