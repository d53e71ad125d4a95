import dataclasses
import os
import types
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*torchvision.*")

import torch  # noqa: E402

# Tiny models: one thread is as fast, and two threads on a shared 2-core machine can be 80x slower
# (OpenMP threads spinning at barriers while another process holds a core).
torch.set_num_threads(1)

from accelerate_diffusion import patches  # noqa: E402  (after the offline switches)
from accelerate_diffusion.config import TechniqueConfig, check_range  # noqa: E402


@pytest.fixture(scope="session")
def pipelines():
    """Cache of tiny pipelines: build each (name, size) once per session."""
    from accelerate_diffusion.testing import make_pipeline

    cache = {}

    def get(name, size="micro"):
        if (name, size) not in cache:
            cache[(name, size)] = make_pipeline(name, size)
        pipe = cache[(name, size)]
        if getattr(pipe, "acceleration", None) is not None:   # a failed test left it patched
            pipe.acceleration.remove()
        return pipe

    return get


# A small technique for the plug-in contract: scales the denoiser output (a real, visible change).
@dataclasses.dataclass
class _ScaleConfig(TechniqueConfig):
    """Scales the denoiser output by ``factor`` (a real, visible effect)."""

    NAME = "guidance"
    factor: float = 1.0
    refuse: bool = False

    def validate(self):
        check_range(self.NAME, "factor", self.factor, 0.0, 10.0)


def _scale_apply(ctx, config):
    if config.refuse:
        raise patches.NotApplicable("refused for the test")
    ctx.hook(ctx.denoiser, patches.OutputHook(ctx.state, lambda m, out: _scaled(out, config.factor)), "test.scale")
    return patches.PatchHandle("guidance", targets=[ctx.denoiser_attr],
                               stats=lambda: {"calls": ctx.state.counters["denoiser_calls"]})


def _scaled(out, factor):
    if isinstance(out, tuple):
        return (out[0] * factor,) + tuple(out[1:])
    out.sample = out.sample * factor
    return out


@pytest.fixture
def scale_technique(monkeypatch):
    module = types.SimpleNamespace(Config=_ScaleConfig, apply=_scale_apply)
    monkeypatch.setattr(patches, "available", lambda: {"guidance": module})
    return module
