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
    from PIL import Image

    base, acc, figures, report, files = comparer.compare("sd", "a red circle", "", 0, 3, 5.0, 32, "off", "")
    assert base.endswith("baseline.png") and acc.endswith("accelerated.png")
    # a 32 px output is shown 8x larger, nearest-neighbour (each pixel an 8x8 block) ...
    shown, native = Image.open(base), Image.open(files[0])
    assert shown.size == (256, 256) and native.size == (32, 32)
    assert shown.resize((32, 32), Image.NEAREST).tobytes() == native.tobytes()
    assert shown.crop((0, 0, 8, 8)).getcolors() is not None and len(shown.crop((0, 0, 8, 8)).getcolors()) == 1
    # ... and downloaded at its native size
    assert [os.path.basename(f) for f in files] == ["baseline-native.png", "accelerated-native.png"]
    assert "PSNR vs baseline: **inf dB**" in figures and "**1.00x**" in figures  # MACs ratio of off
    assert "preset 'off'" in report


def test_video_model_gives_animation(comparer):
    base, acc, _, _, files = comparer.compare("wan", "a red circle", "", 0, 2, 5.0, 32, "off", "")
    assert base.endswith(".gif") and acc.endswith(".gif") and files[1].endswith("accelerated-native.gif")


def test_default_steps_are_those_the_learned_schedules_serve():
    from accelerate_diffusion.app import default_steps

    # the shipped demo-dit front was searched at 25 steps (schedules/data/ecad-demo-dit-25steps)
    assert default_steps("demo-dit") == 25
    assert default_steps("demo-unet") == 25 and default_steps("sd") == 20


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

    # docs/app_screenshot.png: APP_MODEL=demo-dit APP_SCREENSHOT=docs/app_screenshot.png pytest -k browser
    app = build_app(comparer, default_model=os.environ.get("APP_MODEL", "sd"))
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
            # the 64 px output is shown enlarged: the browser decoded a 256 px picture, drawn > 200 px wide
            size = page.eval_on_selector("#accelerated img", "i => [i.naturalWidth, i.getBoundingClientRect().width]")
            assert size[0] == 256 and size[1] > 200, size
            shot = os.environ.get("APP_SCREENSHOT") or str(tmp_path / "app.png")
            page.screenshot(path=shot, full_page=True)
            browser.close()
    finally:
        app.close()
