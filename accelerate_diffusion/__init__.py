"""accelerate-diffusion: make existing diffusers pipelines faster without retraining.

    from accelerate_diffusion import accelerate
    pipe = accelerate(pipe, preset="fast")   # same pipeline object, patched in place
    pipe.acceleration.report()
    pipe.acceleration.remove()
"""

from .api import Acceleration, Report, accelerate, accelerated
from .families import FAMILIES, TECHNIQUES, family_of
from .presets import PRESETS

__version__ = "0.1.0"

__all__ = ["accelerate", "accelerated", "Acceleration", "Report", "PRESETS", "FAMILIES",
           "TECHNIQUES", "family_of", "__version__"]
