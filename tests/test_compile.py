"""torch.compile (CPU inductor) with accelerated pipelines: both orders give the eager result, the
cache decisions stay out of the graph, and the set of graphs stops growing.

Few and short on purpose: a first compile costs tens of seconds on two cores."""

import pytest
import torch
from torch._dynamo.utils import counters

from accelerate_diffusion import accelerate
from accelerate_diffusion.testing import make_pipeline, run

pytestmark = pytest.mark.slow
STEPS = 10    # presets leave generations under 8 steps alone


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-4)


def test_compile_then_accelerate_matches_eager_and_stops_compiling():
    pipe = make_pipeline("pixart")
    eager_base = run(pipe, "pixart", steps=STEPS)
    accelerate(pipe, "fast")
    eager_fast = run(pipe, "pixart", steps=STEPS)
    pipe.acceleration.remove()
    assert (eager_fast - eager_base).abs().max() > 1e-3       # fast really differs from the baseline

    torch._dynamo.reset()
    counters.clear()
    pipe.transformer = torch.compile(pipe.transformer)
    acc = accelerate(pipe, "fast").acceleration
    assert acc.family.name == "pixart"                        # seen through the OptimizedModule
    close(run(pipe, "pixart", steps=STEPS), eager_fast)
    assert acc.stats()["block_cache"]["components reused"] > 0
    # no reason to break the graph except our own eager decision points
    reasons = " ".join(counters["graph_break"])
    assert "Data dependent" not in reasons and "data-dependent" not in reasons.lower()
    run(pipe, "pixart", steps=STEPS)
    settled = graphs()
    close(run(pipe, "pixart", steps=STEPS), eager_fast)
    run(pipe, "pixart", steps=STEPS + 6)      # another step count, same shapes: the same graphs serve
    assert graphs() == settled

    pipe.acceleration.remove()
    close(run(pipe, "pixart", steps=STEPS), eager_base)


@pytest.mark.parametrize("name, preset, technique, figure", [
    ("pixart", "max", "block_cache", "components reused"),
    ("sd", "fast", "deepcache", "cached_steps"),        # DeepCache's skipped UNet blocks, compiled
])
def test_accelerate_then_module_compile_matches_eager(name, preset, technique, figure):
    pipe = make_pipeline(name)
    accelerate(pipe, preset)
    eager = run(pipe, name, steps=STEPS)
    pipe.acceleration.denoiser.compile()
    close(run(pipe, name, steps=STEPS), eager)
    close(run(pipe, name, steps=STEPS), eager)
    assert pipe.acceleration.stats()[technique][figure] > 0
