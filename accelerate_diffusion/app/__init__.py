"""Gradio app: the same prompt, baseline and accelerated, side by side with the figures.

Offline (analytics off), bound to 127.0.0.1 by default, inputs bounded, a queue so that
concurrent users wait instead of racing on the one pipeline that is patched in place.
"""

from __future__ import annotations

import os
import tempfile
import threading
import warnings

import torch

LIMITS = {"steps": (1, 50), "size": (16, 512), "guidance": (0.0, 15.0), "seed": (0, 2**31 - 1)}
TINY_MODELS = ("sd", "sdxl", "pixart", "sd3", "flux", "wan")
DISPLAY_PX = 256       # outputs are shown at least this large (nearest-neighbour: pixels stay visible)
FALLBACK_STEPS = 20


def default_steps(model: str) -> int:
    """Steps the app starts with: those the model's shipped learned schedules were searched at
    (so balanced/fast/max run them), else the demo models' suggested count, else 20."""
    from ..schedules.learned import served_steps

    steps = served_steps(model)
    if steps is None and model.startswith("demo-"):
        from .. import demo

        steps = demo.DEFAULT_STEPS
    return steps or FALLBACK_STEPS


def available_models() -> list[str]:
    """Demo models first (when their weights are present), then the tiny test pipelines."""
    models = []
    try:
        from .. import demo

        models += [f"demo-{kind}" for kind in ("dit", "unet") if demo.is_available(kind)]
    except (ImportError, AttributeError):
        pass
    return models + list(TINY_MODELS)


class Comparer:
    """Loads pipelines once and runs the paired comparison, one request at a time."""

    def __init__(self):
        self._pipes: dict[str, object] = {}
        self._lock = threading.Lock()

    def pipeline(self, model: str):
        if model not in self._pipes:
            from ..loading import load_pipeline

            self._pipes[model] = load_pipeline(model, "micro")
        return self._pipes[model]

    def compare(self, model: str, prompt: str, negative: str, seed: int, steps: int,
                guidance: float, size: int, preset: str, overrides_text: str):
        from ..loading import parse_overrides
        from ..eval.bench import run_bench
        from ..presets import get_preset
        from .. import testing

        if model not in available_models():
            raise ValueError(f"model: {model!r} is not offered; allowed: {', '.join(available_models())}")
        get_preset(preset)
        if not prompt or not prompt.strip():
            raise ValueError("prompt: must not be empty")
        for name, value in (("steps", steps), ("size", size), ("guidance", guidance), ("seed", seed)):
            lo, hi = LIMITS[name]
            if not lo <= value <= hi:
                raise ValueError(f"{name}: {value} is out of range; allowed [{lo}, {hi}]")
        overrides = parse_overrides([t.strip() for t in overrides_text.split(",") if t.strip()])

        def make_kwargs():
            kw = {}
            if model in TINY_MODELS:
                kw = testing.call_kwargs(model, "micro")
            kw.update(prompt=prompt, num_inference_steps=int(steps), guidance_scale=float(guidance),
                      height=int(size), width=int(size), output_type="pt",
                      generator=torch.Generator("cpu").manual_seed(int(seed)))
            if negative and negative.strip():
                kw["negative_prompt"] = negative
            return kw

        with self._lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = self.pipeline(model)
            result = run_bench(pipe, make_kwargs, preset, overrides, repeats=1, warmup=1, label=model)
        notes = sorted({str(w.message) for w in caught if "accelerate_diffusion" in str(w.message)})
        baseline, baseline_file = _to_display(result.baseline_output, "baseline")
        accelerated, accelerated_file = _to_display(result.accelerated_output, "accelerated")
        figures = (f"| | baseline | accelerated | ratio |\n|---|---|---|---|\n"
                   f"| wall time | {result.baseline_s[0]:.3f} s | {result.accelerated_s[0]:.3f} s "
                   f"| **{result.wall_ratio:.2f}x** |\n"
                   f"| denoiser MACs | {result.baseline_macs / 1e9:.3f} G | {result.accelerated_macs / 1e9:.3f} G "
                   f"| **{result.macs_ratio:.2f}x** |\n\n"
                   f"PSNR vs baseline: **{result.psnr:.2f} dB**, SSIM {result.ssim:.4f}")
        report = "\n".join([result.report] + [f"warning: {n}" for n in notes])
        return baseline, accelerated, figures, report, [baseline_file, accelerated_file]


def _to_display(output: torch.Tensor, name: str) -> tuple[str, str]:
    """(shown, download): a PNG (image) or animated GIF (video), enlarged by a whole factor
    (nearest) to at least DISPLAY_PX so a 64 px output is not a thumbnail, and the same file
    at the model's native size for download."""
    from PIL import Image

    x = output[0].detach().float().clamp(0, 1).cpu()
    folder = tempfile.mkdtemp(prefix="accelerate-diffusion-app-")
    frames = x if x.ndim == 4 else x[None]            # video: [frames, C, H, W]
    frames = [Image.fromarray((f[:3].permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for f in frames]
    width, height = frames[0].size
    factor = max(1, DISPLAY_PX // max(width, height))
    paths = []
    for suffix, scale in (("", factor), ("-native", 1)):
        scaled = [f.resize((width * scale, height * scale), Image.NEAREST) for f in frames]
        if x.ndim == 4:
            path = os.path.join(folder, f"{name}{suffix}.gif")
            scaled[0].save(path, save_all=True, append_images=scaled[1:], duration=125, loop=0)
        else:
            path = os.path.join(folder, f"{name}{suffix}.png")
            scaled[0].save(path)
        paths.append(path)
    return paths[0], paths[1]


def build_app(comparer: Comparer | None = None, default_model: str | None = None):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from ..presets import PRESETS

    comparer = comparer or Comparer()
    models = available_models()

    def on_generate(*inputs):
        try:
            return comparer.compare(*inputs)
        except ValueError as exc:
            raise gr.Error(str(exc))

    with gr.Blocks(title="accelerate-diffusion", analytics_enabled=False) as app:
        gr.Markdown("# accelerate-diffusion\nThe same seed, with and without acceleration.")
        with gr.Row():
            with gr.Column():
                model = gr.Dropdown(models, value=default_model or models[0], label="model")
                prompt = gr.Textbox("a small red circle above a large blue square", label="prompt",
                                    max_length=300)
                negative = gr.Textbox("", label="negative prompt", max_length=300)
                preset = gr.Dropdown(list(PRESETS), value="fast", label="preset")
                gr.Markdown("\n".join(f"- **{p.name}**: {p.description}" for p in PRESETS.values()))
                overrides = gr.Textbox("", label="overrides", max_length=300,
                                       placeholder="e.g. guidance.threshold=0.99, deepcache.cache_interval=3")
                with gr.Row():
                    seed = gr.Number(0, label="seed", precision=0, minimum=LIMITS["seed"][0],
                                     maximum=LIMITS["seed"][1])
                    steps = gr.Slider(*LIMITS["steps"], value=default_steps(default_model or models[0]),
                                      step=1, label="steps")
                with gr.Row():
                    guidance = gr.Slider(*LIMITS["guidance"], value=5.0, step=0.5, label="guidance")
                    size = gr.Slider(*LIMITS["size"], value=64, step=16, label="size (px)")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                with gr.Row():
                    base_out = gr.Image(label="baseline", type="filepath", elem_id="baseline", height=320)
                    acc_out = gr.Image(label="accelerated", type="filepath", elem_id="accelerated", height=320)
                downloads = gr.File(label="download (native size)", file_count="multiple", elem_id="downloads")
                figures = gr.Markdown(elem_id="figures")
                report = gr.Textbox(label="acceleration report", lines=10, elem_id="report")
        # A model's default step count follows the model (its learned schedules' count).
        model.change(lambda name: gr.update(value=default_steps(name)), [model], [steps])
        button.click(on_generate, [model, prompt, negative, seed, steps, guidance, size, preset, overrides],
                     [base_out, acc_out, figures, report, downloads], concurrency_limit=1)
    app.queue(max_size=16, default_concurrency_limit=1)
    return app


def check_port(host: str, port: int) -> None:
    """A busy port is one line naming --port, not Gradio's 18-line OSError after the app is built."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as exc:
        raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                         f"choose a free port, e.g. --port {port + 1}") from None


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False):
    check_port(host, port)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("app: Gradio is not installed; pip install 'accelerate-diffusion[app]'") from None
    app = build_app()
    app.launch(server_name=host, server_port=port, share=share, show_error=True)


def register(sub) -> None:
    """Add the ``app`` subcommand to the CLI."""
    p = sub.add_parser("app", help="Gradio app: baseline and accelerated side by side")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.set_defaults(func=lambda args: launch(args.host, args.port) or 0)
