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


# The UNet presets: the whole UNet body cached (branch -1) and forecast linearly from the last two
# full steps, the first two steps full; the full steps either uniform or denser at the start
# (centre 0: gaps grow along the steps). Picked on the demo UNet's calibration captions
# (docs/presets.md#whole-unet-forecast).
WHOLE_UNET = dict(cache_branch=-1, forecast=1, always_full_start=2)
GROWING = dict(schedule="nonuniform", center=0.0, power=1.4)
# Few-step models (LCM, turbo, distilled; 1-7 steps) have no steps to spare: below this every
# preset runs them untouched, and the report says so (docs/compatibility.md).
MIN_STEPS = 8

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("off", "No acceleration: bit-identical to the unpatched pipeline."),
        Preset("quality", "Visually lossless: small, safe savings (fidelity first).", {
            "dit": {"block_cache": dict(mode="schedule", min_steps=MIN_STEPS, schedule="fora:2,first=7,last=1")},  # docs/presets.md#block_cache
            "unet": {"deepcache": dict(min_steps=MIN_STEPS, cache_interval=2, **WHOLE_UNET)},
            "anyflow_far": {"kv_cache": dict(encode="compressed", merge_threshold=1.5, budget_frames=12)},  # docs/presets.md#kv_cache
            "skyreels_v2": {"kv_cache": dict(merge_threshold=1.5, budget_frames=0)},  # docs/presets.md#kv_cache
        }),
        Preset("balanced", "Good default: clear speedup with outputs close to the original.", {
            "*": {"guidance": dict(mode="truncation", cfg_fraction=0.5, min_steps=MIN_STEPS)},  # docs/presets.md#guidance
            "dit": {"block_cache": dict(mode="schedule", min_steps=MIN_STEPS, schedule="fora:3,first=7,last=1")},  # docs/presets.md#block_cache
            # The UNet presets keep full CFG: on the demo UNet CFG truncation cost 23 dB PSNR and 1.6 CLIP,
            # and CFG caching lost to the whole-UNet forecast alone at equal MACs.
            "unet": {"deepcache": dict(min_steps=MIN_STEPS, cache_interval=3, **WHOLE_UNET, **GROWING), "guidance": None},
            "anyflow_far": {"kv_cache": dict(encode="compressed", merge_threshold=0.95, budget_frames=1.5)},
            "skyreels_v2": {"kv_cache": dict(merge_threshold=1.5, budget_frames=0)},
        }),
        Preset("fast", "About 2x or more: visible but small differences from the original.", {
            "*": {"guidance": dict(mode="truncation", cfg_fraction=0.5, min_steps=MIN_STEPS)},  # docs/presets.md#guidance
            "dit": {"block_cache": dict(mode="schedule", min_steps=MIN_STEPS, schedule="fora:3,first=3,last=1")},  # docs/presets.md#block_cache
            "unet": {"deepcache": dict(min_steps=MIN_STEPS, cache_interval=4, **WHOLE_UNET, **GROWING), "guidance": None},
            "anyflow_far": {"kv_cache": dict(encode="compressed", merge_threshold=0.9, budget_frames=1)},
            "skyreels_v2": {"kv_cache": dict(merge_threshold=0.9, budget_frames=12)},
        }),
        Preset("max", "Largest speedup the techniques allow; quality may degrade noticeably.", {
            "*": {"guidance": dict(mode="truncation", cfg_fraction=0.5, min_steps=MIN_STEPS)},  # docs/presets.md#guidance
            "dit": {"block_cache": dict(mode="schedule", min_steps=MIN_STEPS, schedule="fora:4,first=3,last=1")},  # docs/presets.md#block_cache
            "unet": {"deepcache": dict(min_steps=MIN_STEPS, cache_interval=7, **WHOLE_UNET), "guidance": None},
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
    # UNet: the presets' whole-UNet forecast, with uniform N=5 (between fast and max in the same
    # calibration sweep) (docs/presets.md#whole-unet-forecast)
    "unet": [
        {"preset": "quality"},
        {"preset": "balanced"},
        {"preset": "fast"},
        {"deepcache": dict(cache_interval=5, **WHOLE_UNET)},
        {"preset": "max"},
    ],
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; allowed: {', '.join(PRESETS)}, auto")
    return PRESETS[name]
