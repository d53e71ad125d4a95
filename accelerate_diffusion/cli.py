"""Command line: ``accelerate-diffusion bench ...``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch

from .loading import load_pipeline, parse_overrides
from .presets import PRESETS


def _bench(args) -> int:
    from . import testing
    from .eval.bench import run_bench

    overrides = parse_overrides(args.set)
    pipe = load_pipeline(args.pipeline, args.size, args.device, args.dtype)

    def make_kwargs():
        if args.pipeline in testing.PIPELINES:
            kw = testing.call_kwargs(args.pipeline, args.size, steps=args.steps, seed=args.seed,
                                     output_type="pt")
        else:
            kw = dict(num_inference_steps=args.steps, output_type="pt",
                      generator=torch.Generator(args.device).manual_seed(args.seed))
        if args.prompt:
            kw["prompt"] = args.prompt
        kw.setdefault("prompt", "a small red circle above a large blue square")
        if args.guidance is not None:
            kw["guidance_scale"] = args.guidance
        return kw

    label = f"{args.pipeline}" + (f" ({args.size})" if args.pipeline in testing.PIPELINES else "")
    label += f", {args.steps} steps"
    result = run_bench(pipe, make_kwargs, args.preset, overrides, repeats=args.repeats,
                       warmup=args.warmup, label=label, progress=not args.quiet)
    print(result.table())
    if args.report:
        print(result.report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    return 0


def _shows_default(action) -> bool:
    default = action.default
    return bool(action.option_strings) and not (default is None or default is False or default == []
                                                or default is argparse.SUPPRESS)


class _DefaultsFormatter(argparse.HelpFormatter):
    """--help shows each option's default, also for options without help text."""

    def _get_help_string(self, action):
        text = action.help or ""
        if _shows_default(action) and "%(default)" not in text and "default" not in text:
            text += (" " if text else "") + "(default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the subcommand's --help has the rest); defaults in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if action.help is None and _shows_default(action):
            action.help = "(default: %(default)s)"       # argparse skips options without help text
        return action

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


# Numeric options shared by several subcommands, checked in one place: (lowest, highest) allowed.
RANGES = {"steps": (1, 1000), "repeats": (1, 1000), "warmup": (0, 100), "height": (8, 1_048_576),
          "width": (8, 1_048_576), "guidance": (0.0, 100.0), "port": (1, 65535)}


def check_ranges(args) -> None:
    """One line naming the flag and the allowed range (``--steps -5`` used to fail deep in diffusers,
    ``--steps 0`` to write an undenoised image)."""
    for name, (low, high) in RANGES.items():
        value = getattr(args, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not low <= value <= high:
            raise ValueError(f"--{name}: {value} is out of range; allowed {low} to {high}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="accelerate-diffusion",
                     description="Training-free acceleration for diffusers pipelines.")
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="time baseline vs accelerated in one process (paired), "
                                         "count MACs, and compare outputs")
    bench.add_argument("--pipeline", required=True,
                       help="tiny test pipeline (sd, sdxl, pixart, sd3, flux, wan), demo-unet, "
                            "demo-dit, or a diffusers model id / local path")
    bench.add_argument("--size", default="micro", choices=["micro", "small"],
                       help="size of a tiny test pipeline")
    bench.add_argument("--preset", default="balanced", choices=list(PRESETS), help="acceleration preset")
    bench.add_argument("--set", action="append", default=[], metavar="TECH.FIELD=VALUE",
                       help="override a technique setting, e.g. guidance.threshold=0.99 or deepcache=off")
    bench.add_argument("--steps", type=int, default=10)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--prompt", default=None)
    bench.add_argument("--guidance", type=float, default=None, help="guidance_scale")
    bench.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    bench.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    bench.add_argument("--report", action="store_true", help="also print the acceleration report")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.add_argument("--json", default=None, help="write the figures to this JSON file")
    bench.set_defaults(func=_bench)

    from .eval import runner as eval_runner
    eval_runner.register(sub)   # `accelerate-diffusion eval`

    from . import generate
    generate.register(sub)

    from .schedules import search_cli as schedule_search
    schedule_search.register(sub)   # `accelerate-diffusion search`

    from . import app
    app.register(sub)
    return parser


@contextlib.contextmanager
def _quiet_libraries():
    """Library chatter off while a command runs (restored after): transformers' notes that
    torchvision is missing and its weight-loading bars, diffusers' dtype-cast notes, and PyTorch's advice to compile
    flex_attention (AnyFlow-FAR's attention; beside the point on CPU). Errors still show."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = transformers_logging.get_verbosity(), diffusers_logging.get_verbosity()
    bar = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()       # "Loading weights" of the demo CLIP
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            yield
    finally:
        transformers_logging.set_verbosity(levels[0])
        diffusers_logging.set_verbosity(levels[1])
        if bar:
            transformers_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_ranges(args)
        with _quiet_libraries():
            return args.func(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
