"""A cheap predictor for the "auto" preset: rank ladder rungs by expected loss from one baseline run.

During the calibration's baseline generation (which runs anyway) :class:`ChangeRecorder` records,
per step, how much each block's output changed since the previous step (relative L1, the signal
FirstBlockCache / TeaCache / MagCache threshold on), the same for the denoiser's output, and, with
CFG, the size of the guidance term (uncond - cond, relative to cond) and how fast it changes.

:func:`predicted_error` turns a rung into an expected error in the same units (a relative change
of the output): a reused component is as wrong as its block changed since its last recompute
(summed over the reused steps), a DeepCache step likewise with the output's change, a step whose
guidance is dropped by the guidance term times (scale - 1), a cached guidance term by its change.
More reuse never lowers it, so the ranking follows the ladder's aggressiveness.
:func:`predicted_psnr` maps it to dB as ``C - 20 log10(error)``, with ``C`` fitted on the rungs
measured so far (an error twice as large costs 6 dB): ``auto`` measures one rung, jumps to the
most aggressive rung predicted to meet the target, and verifies it on a real run.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _main(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return _main(output[-1] if len(output) > 1 and isinstance(output[-1], torch.Tensor) else output[0])
    sample = getattr(output, "sample", None)
    return sample if isinstance(sample, torch.Tensor) else None


def _relative(new: torch.Tensor, old: torch.Tensor) -> float:
    return float((new - old).abs().mean() / old.abs().mean().clamp_min(1e-12))


class ChangeRecorder:
    """Forward hooks on the denoiser and its blocks for one generation; ``signals()`` afterwards.

    ``cfg``: "batched" (one call per step, batch [uncond, cond]), "separate" (cond and uncond
    calls in turn) or "" (no CFG). Block outputs are compared call slot by call slot."""

    def __init__(self, denoiser: torch.nn.Module, blocks: list[torch.nn.Module], cfg: str):
        self.cfg = cfg
        self.outputs: list[torch.Tensor] = []                   # the denoiser's output per call
        self.block_changes: list[list[float]] = []               # per call: relative change per block
        self._previous: dict[tuple[int, int], torch.Tensor] = {}
        self._calls = 0
        self._row: list[float] = [math.nan] * len(blocks)
        self._handles = [denoiser.register_forward_hook(self._on_output)]
        for index, block in enumerate(blocks):
            self._handles.append(block.register_forward_hook(
                lambda module, args, output, index=index: self._on_block(index, output)))

    def _slot(self) -> int:
        return self._calls % 2 if self.cfg == "separate" else 0

    def _on_block(self, index: int, output) -> None:
        tensor = _main(output)
        if tensor is None:
            return
        tensor = tensor.detach().float()
        key = (self._slot(), index)
        if key in self._previous and self._previous[key].shape == tensor.shape:
            self._row[index] = _relative(tensor, self._previous[key])
        self._previous[key] = tensor

    def _on_output(self, module, args, output) -> None:
        tensor = _main(output)
        if tensor is not None:
            self.outputs.append(tensor.detach().float())
        self.block_changes.append(self._row)
        self._row = [math.nan] * len(self._row)
        self._calls += 1

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def signals(self, num_steps: int) -> dict:
        """Per step (lists of ``num_steps``; step 0 has no change): ``blocks`` [steps][blocks],
        ``output``, and with CFG ``guidance`` (|uncond - cond| / |cond|) and ``guidance_change``."""
        per_step = max(1, len(self.outputs) // max(num_steps, 1))
        calls = [self.outputs[i * per_step:(i + 1) * per_step] for i in range(num_steps)]
        rows = [self.block_changes[i * per_step] if i * per_step < len(self.block_changes) else []
                for i in range(num_steps)]
        cond, uncond = [], []
        for step_calls in calls:
            if not step_calls:
                cond.append(None)
                uncond.append(None)
            elif self.cfg == "separate" and len(step_calls) > 1:
                cond.append(step_calls[0])
                uncond.append(step_calls[1])
            elif self.cfg == "batched" and step_calls[0].shape[0] % 2 == 0:
                half = step_calls[0].shape[0] // 2
                uncond.append(step_calls[0][:half])
                cond.append(step_calls[0][half:])
            else:
                cond.append(step_calls[0])
                uncond.append(None)
        out = {"blocks": [[0.0 if math.isnan(v) else v for v in row] for row in rows],
               "output": [0.0] + [_relative(cond[s], cond[s - 1]) if cond[s] is not None and cond[s - 1] is not None
                                  else 0.0 for s in range(1, num_steps)]}
        if any(u is not None for u in uncond):
            diff = [None if u is None or c is None else u - c for u, c in zip(uncond, cond)]
            out["guidance"] = [0.0 if d is None else float(d.abs().mean() / c.abs().mean().clamp_min(1e-12))
                               for d, c in zip(diff, cond)]
            out["guidance_change"] = [0.0] + [
                _relative(diff[s], diff[s - 1]) if diff[s] is not None and diff[s - 1] is not None else 0.0
                for s in range(1, num_steps)]
        return out


def rung_settings(rung: dict, family, denoiser=None) -> dict:
    """technique -> settings a ladder rung runs: its base preset's for the family (with the
    model's learned pick, as the preset would use it), then the rung's overrides."""
    from .presets import PRESETS

    rung = dict(rung)
    preset = rung.pop("preset", None)
    settings = {k: dict(v) for k, v in PRESETS[preset].for_family(family).items()} if preset else {}
    if preset and denoiser is not None and "block_cache" in settings and "block_cache" not in rung:
        from .schedules import learned

        picked = learned.preset_schedule(denoiser, preset)
        if picked is not None:
            settings["block_cache"]["schedule"] = picked
    for technique, value in rung.items():
        if value in (None, False):
            settings.pop(technique, None)
        else:
            settings[technique] = {**settings.get(technique, {}), **value}
    return settings


def _stale_sum(reused: np.ndarray, change: np.ndarray) -> float:
    """Sum over the reused steps of the change accumulated since the last recompute."""
    total, stale = 0.0, 0.0
    for step in range(len(reused)):
        if reused[step]:
            stale += change[step]
            total += stale
        else:
            stale = 0.0
    return total


def predicted_error(rung: dict, signals: dict, *, layout=None, guidance_scale: float = 1.0) -> float:
    """The expected error of a rung's settings (technique -> settings, ``rung_settings``), per step on average."""
    from .patches import deepcache, guidance
    from .schedules.heuristics import resolve_schedule

    output = np.asarray(signals["output"], float)
    steps = len(output)
    error = 0.0
    if "block_cache" in rung and layout is not None:
        schedule = resolve_schedule(rung["block_cache"].get("schedule", "fora:2"), layout, steps)
        recompute = schedule.resample(steps).recompute
        blocks = np.asarray(signals["blocks"], float)
        present = layout.present()
        terms = [_stale_sum(~recompute[:, b, c], blocks[:, b] if blocks.size else output)
                 for b in range(layout.num_blocks) for c in range(present.shape[1]) if present[b, c]]
        error += float(np.mean(terms)) if terms else 0.0
    if "deepcache" in rung:
        config = deepcache.Config(**rung["deepcache"])
        full = set(deepcache.full_step_indices(config, steps))
        reused = np.array([s not in full for s in range(steps)])
        # a deeper branch skips less; a forecast is counted as reuse (the fitted constant absorbs its
        # gain when every rung forecasts alike, as the UNet ladder does)
        error += _stale_sum(reused, output) / max(1, 1 + config.cache_branch)
    if "guidance" in rung and "guidance" in signals and guidance_scale > 1:
        config = guidance.Config(**rung["guidance"])
        size = np.asarray(signals["guidance"], float) * (guidance_scale - 1)
        if config.mode == "truncation":
            error += float(sum(size[s] for s in range(steps) if s / steps >= config.cfg_fraction))
        elif config.mode == "cache":
            change = np.asarray(signals["guidance_change"], float)
            reused = np.array([s % config.cache_interval != 0 for s in range(steps)])
            error += _stale_sum(reused, change * size)
    return error / max(steps, 1)


def predicted_psnr(errors: list[float], measured: dict[int, float]) -> list[float]:
    """Predicted PSNR of each rung from its error, ``C - 20 log10(error)``, ``C`` the mean over
    the ``measured`` rungs (index -> measured dB); an error of 0 predicts infinity."""
    fits = [psnr + 20 * math.log10(errors[i]) for i, psnr in measured.items()
            if errors[i] > 0 and math.isfinite(psnr)]
    if not fits:
        return [math.nan] * len(errors)
    c = sum(fits) / len(fits)
    return [math.inf if e <= 0 else c - 20 * math.log10(e) for e in errors]
