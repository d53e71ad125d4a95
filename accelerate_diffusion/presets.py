"""Presets: named plans, each a fidelity budget and the technique settings that meet it.

Settings are keyed by scope, merged from general to specific: ``"*"`` (every family),
then the family kind (``"unet"``, ``"dit"``), then the family name (``"pixart"``...).
A technique appears only where it was measured to fit the preset's budget; the figures
behind each choice are in docs/presets.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .families import Family


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    settings: dict[str, dict[str, dict]] = field(default_factory=dict)  # scope -> technique -> params

    def for_family(self, family: Family) -> dict[str, dict]:
        """technique -> params for this family, most specific scope last (wins)."""
        merged: dict[str, dict] = {}
        for scope in ("*", family.kind, family.name):
            for technique, params in self.settings.get(scope, {}).items():
                if params is None:
                    merged.pop(technique, None)
                else:
                    merged[technique] = {**merged.get(technique, {}), **params}
        return merged


# DeepCache's non-uniform full steps, centred at 32 % of the steps: calibrated on the demo UNet
# (`accelerate-diffusion search`, docs/presets.md#deepcache), next to DeepCache's own 15 of 50.
NONUNIFORM = dict(schedule="nonuniform", center=0.32)
# Few-step models (LCM, turbo, distilled; 1-7 steps) have no steps to spare: below this every
# preset runs them untouched, and the report says so (docs/compatibility.md).
MIN_STEPS = 8

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("off", "No acceleration: bit-identical to the unpatched pipeline."),
        Preset("quality", "Visually lossless: small, safe savings (fidelity first).", {
            "dit": {"block_cache": dict(mode="schedule", min_steps=MIN_STEPS, schedule="fora:2,first=7,last=1")},  # docs/presets.md#block_cache
            "unet": {"deepcache": dict(min_steps=MIN_STEPS, cache_interval=2, cache_branch=2, **NONUNIFORM, always_full_start=3)},  # docs/presets.md#deepcache
            "anyflow_far": {"kv_cache": dict(encode="compressed", merge_threshold=1.5, budget_frames=12)},  # docs/presets.md#kv_cache
            "skyreels_v2": {"kv_cache": dict(merge_threshold=1.5, budget_frames=0)},  # docs/presets.md#kv_cache
        }),
        Preset("balanced", "Good default: clear speedup with outputs close to the original.", {
            "*": {"guidance": dict(mode="truncation", cfg_fraction=0.5, min_steps=MIN_STEPS)},  # docs/presets.md#guidance
            "dit": {"block_cache": dict(mode="schedule", min_steps=MIN_STEPS, schedule="fora:3,first=7,last=1")},  # docs/presets.md#block_cache
            # On the demo UNet CFG truncation cost 23 dB PSNR and 1.6 CLIP here: UNet balanced keeps full CFG.
            "unet": {"deepcache": dict(min_steps=MIN_STEPS, cache_interval=2, cache_branch=0, **NONUNIFORM), "guidance": None},  # docs/presets.md#deepcache
            "anyflow_far": {"kv_cache": dict(encode="compressed", merge_threshold=0.95, budget_frames=1.5)},
            "skyreels_v2": {"kv_cache": dict(merge_threshold=1.5, budget_frames=0)},
        }),
        Preset("fast", "About 2x or more: visible but small differences from the original.", {
            "*": {"guidance": dict(mode="truncation", cfg_fraction=0.5, min_steps=MIN_STEPS)},  # docs/presets.md#guidance
            "dit": {"block_cache": dict(mode="schedule", min_steps=MIN_STEPS, schedule="fora:3,first=3,last=1")},  # docs/presets.md#block_cache
            # UNet: CFG caching (uncond every 2nd step) instead of truncation, with DeepCache N=5: on the demo
            # UNet's calibration captions 3.17x / 30.7 dB against N=3 + truncation's 2.73x / 28.4 (docs/presets.md#re-pick).
            "unet": {"deepcache": dict(min_steps=MIN_STEPS, cache_interval=5, cache_branch=0, **NONUNIFORM),
                     "guidance": dict(mode="cache", cache_interval=2, min_steps=MIN_STEPS)},
            "anyflow_far": {"kv_cache": dict(encode="compressed", merge_threshold=0.9, budget_frames=1)},
            "skyreels_v2": {"kv_cache": dict(merge_threshold=0.9, budget_frames=12)},
        }),
        Preset("max", "Largest speedup the techniques allow; quality may degrade noticeably.", {
            "*": {"guidance": dict(mode="truncation", cfg_fraction=0.5, min_steps=MIN_STEPS)},  # docs/presets.md#guidance
            "dit": {"block_cache": dict(mode="schedule", min_steps=MIN_STEPS, schedule="fora:4,first=3,last=1")},  # docs/presets.md#block_cache
            # UNet: DeepCache N=8 (4 full steps) + CFG caching every 3rd step: 3.96x / 29.5 dB on the demo UNet's
            # calibration captions against N=5 + truncation's 3.79x / 26.3 (docs/presets.md#re-pick).
            "unet": {"deepcache": dict(min_steps=MIN_STEPS, cache_interval=8, cache_branch=0, **NONUNIFORM),
                     "guidance": dict(mode="cache", cache_interval=3, min_steps=MIN_STEPS)},
            "anyflow_far": {"kv_cache": dict(encode="compressed", merge_threshold=0.9, budget_frames=1)},  # = fast: nothing smaller pays here
            "skyreels_v2": {"kv_cache": dict(merge_threshold=0.5, budget_frames=4)},
            "wan": {"attention": dict(window=0.5, min_steps=MIN_STEPS)},  # docs/presets.md#attention
        }),
    )
}


# The "auto" preset's ladders (auto.py), per family kind, from mild to aggressive: calibration keeps
# the last rung that meets the user's quality target. A rung is overrides on a base preset
# ("preset", default "off"), so a DiT rung runs the preset's own schedules, the model's learned
# picks included. Rungs with a technique a family lacks are dropped for it; guidance rungs do
# nothing where a pipeline runs without CFG.
_CFG_CACHE = dict(mode="cache", cache_interval=2)
AUTO_LADDERS: dict[str, list[dict]] = {
    # DiT: each preset's block caching first without CFG truncation (truncation sets most of the
    # DiT presets' loss: README), then with it; CFG caching is left out (on the flow-matching demo
    # DiT it lost to truncation at equal MACs: docs/presets.md, "Beyond reuse and truncation").
    "dit": [
        {"preset": "quality"},
        {"preset": "balanced", "guidance": False},
        {"preset": "fast", "guidance": False},
        {"preset": "max", "guidance": False},
        {"preset": "max"},
        {"preset": "max", "block_cache": dict(schedule="fora:5,first=3,last=1")},
    ],
    "unet": [
        {"deepcache": dict(cache_interval=2, cache_branch=2, **NONUNIFORM, always_full_start=3)},
        {"deepcache": dict(cache_interval=2, cache_branch=0, **NONUNIFORM)},
        {"deepcache": dict(cache_interval=3, cache_branch=0, **NONUNIFORM)},
        {"deepcache": dict(cache_interval=3, cache_branch=0, **NONUNIFORM), "guidance": _CFG_CACHE},
        {"deepcache": dict(cache_interval=4, cache_branch=0, **NONUNIFORM), "guidance": _CFG_CACHE},
        # the fixed fast and max presets last: on the calibration captions max (DeepCache N=8 + CFG
        # caching every 3rd step) beat N=5 + truncation in both MACs and PSNR (docs/presets.md#re-pick)
        {"preset": "fast"},
        {"preset": "max"},
    ],
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; allowed: {', '.join(PRESETS)}, auto")
    return PRESETS[name]
