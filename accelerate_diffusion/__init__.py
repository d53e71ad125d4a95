"""accelerate-diffusion: make existing diffusers pipelines faster without retraining.

    from accelerate_diffusion import accelerate
    pipe = accelerate(pipe, preset="fast")   # same pipeline object, patched in place
    pipe.acceleration.report()
    pipe.acceleration.remove()

One technique at a time, diffusers-style: ``apply_deepcache(pipe, DeepCacheConfig(cache_interval=3))``.
"""

from .api import (Acceleration, Report, accelerate, accelerated, apply_block_cache, apply_deepcache,
                  apply_guidance, apply_kv_cache, apply_ras, apply_sparse_attention)
from .families import FAMILIES, TECHNIQUES, family_of
from .patches.attention import Config as SparseAttentionConfig
from .patches.block_cache import Config as BlockCacheConfig
from .patches.deepcache import Config as DeepCacheConfig
from .patches.guidance import Config as GuidanceConfig
from .patches.kv_cache import Config as KVCacheConfig
from .patches.ras import Config as RASConfig
from .presets import PRESETS
from .state import ConcurrentUseError

__version__ = "0.1.0"

__all__ = ["accelerate", "accelerated", "Acceleration", "Report", "PRESETS", "FAMILIES",
           "TECHNIQUES", "family_of", "ConcurrentUseError", "apply_deepcache", "apply_block_cache",
           "apply_guidance", "apply_ras", "apply_sparse_attention", "apply_kv_cache", "DeepCacheConfig",
           "BlockCacheConfig", "GuidanceConfig", "RASConfig", "SparseAttentionConfig", "KVCacheConfig",
           "__version__"]
