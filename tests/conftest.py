import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*torchvision.*")


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
