"""The "auto" preset: the fastest settings that meet a quality target on *this* model.

``accelerate(pipe, "auto", target_psnr=32)`` calibrates once per (model fingerprint, step
count, resolution, guidance on/off): it runs one baseline generation on calibration prompts,
then walks a ladder of settings ordered from mild to aggressive (presets.AUTO_LADDERS) by
bisection, one accelerated generation per rung tried, and keeps the most aggressive rung whose
PSNR (or SSIM) against the baseline meets the target on every calibration image. The pick is checked once more on a seed
the search did not see. Every measurement is stored in a JSON file under the user cache
directory, so later calls and processes (and other targets the stored rungs already decide)
need no generation at all. Bisection assumes quality falls along the ladder; the verification
on a held-out seed catches a rung where it does not (the pick then steps back a rung, verified too
while the budget lasts).

For a PSNR target the baseline generation also records how much each block's output changes from
step to step (``auto_predict``): after one measured rung, the predictor's expected PSNR of every
rung (fitted on what was measured) sends the search straight to the most aggressive rung predicted
to meet the target; it stops when, refitted on every rung measured, it expects no more aggressive
rung to meet it; the held-out seed verifies the pick.
That replaces most bisection steps (4-6 generations on the demo models, bisection 6); a wrong prediction costs
only the generations bisection would have spent.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from typing import Callable

import torch

from . import auto_predict
from .presets import AUTO_LADDERS
from .schedules.cache_schedule import ScheduleLayout

CACHE_ENV = "ACCELERATE_DIFFUSION_CACHE"
PROMPTS = ("a red apple on a wooden table", "a lighthouse on a cliff at sunset",
           "a portrait of an old man with a beard", "a city street at night in the rain")
SEED, VERIFY_SEED = 0, 1000


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where calibrations live: the argument, else $ACCELERATE_DIFFUSION_CACHE, else the user cache dir."""
    if override:
        return Path(override)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("accelerate-diffusion")) / "auto"


def _default(pipe, name: str):
    param = inspect.signature(type(pipe).__call__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _images(out) -> torch.Tensor:
    images = out.frames if hasattr(out, "frames") else out.images
    images = torch.as_tensor(images).float()
    if images.ndim == 5:                     # video [B, F, C, H, W] -> frames as images
        images = images.flatten(0, 1)
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.permute(0, 3, 1, 2)  # numpy layout [B, H, W, C]
    return images.clamp(0, 1)


def _metric(kind: str, reference: torch.Tensor, other: torch.Tensor) -> float:
    """The worst image's PSNR or SSIM: a rung passes only if every calibration image meets the
    target (a batch average let one easy prompt hide a hard one, and missed on held-out prompts)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if kind == "psnr":
        per_image = peak_signal_noise_ratio(other, reference, data_range=1.0, reduction="none", dim=(1, 2, 3))
    else:
        per_image = structural_similarity_index_measure(other, reference, data_range=1.0, reduction="none")
    return float(per_image.min())


class Calibration:
    """One calibration file: the measured quality of each ladder rung for one setting."""

    def __init__(self, path: Path, key: dict):
        self.path, self.key = path, key
        self.rungs: dict[str, dict] = {}
        self.signals: dict | None = None          # the baseline's change magnitudes (auto_predict)
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("key") == key:
                self.rungs = data.get("rungs", {})
                self.signals = data.get("signals")

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"key": self.key, "rungs": self.rungs, "signals": self.signals}, indent=1))


def choose(pipe, family, denoiser, trial: Callable, *, target_psnr: float | None = None,
           target_ssim: float | None = None, budget: int = 6, prompts=None, call: dict | None = None,
           cache: str | os.PathLike | None = None, fingerprint: str = "", progress: bool = True,
           predict: bool = True) -> dict:
    """The overrides to apply and a record of the calibration.

    ``trial(overrides)`` is a context manager that accelerates ``pipe`` with ``overrides`` inside;
    ``predict=False`` bisects without the predictor."""
    if (target_psnr is None) == (target_ssim is None):
        raise ValueError("auto: give exactly one quality target: target_psnr=... (dB) or target_ssim=... (0-1)")
    kind, target = ("psnr", target_psnr) if target_psnr is not None else ("ssim", target_ssim)
    if not isinstance(target, (int, float)) or (kind == "ssim" and not 0 < target <= 1):
        raise ValueError(f"auto: target_{kind} must be a number{' in (0, 1]' if kind == 'ssim' else ''}, "
                         f"got {target!r}")
    if not isinstance(budget, int) or budget < 2:
        raise ValueError(f"auto: budget is the number of generations calibration may run, at least 2; got {budget!r}")
    ladder = [rung for rung in AUTO_LADDERS.get(family.kind, ()) if set(rung) - {"preset"} <= set(family.techniques)]
    if not ladder:
        raise ValueError(f"auto: no calibration ladder for the {family.name} family; use a preset "
                         f"(quality, balanced, fast, max)")
    call = dict(call or {})
    prompts = list(prompts or PROMPTS)
    steps = call.get("num_inference_steps", _default(pipe, "num_inference_steps"))
    guidance = call.get("guidance_scale", _default(pipe, "guidance_scale"))
    key = {"model": fingerprint, "denoiser": type(denoiser).__name__, "steps": steps,
           "size": f"{call.get('height', 'default')}x{call.get('width', 'default')}",
           "cfg": bool(guidance is not None and guidance > 1), "prompts": prompts,
           "ladder": [json.dumps(r, sort_keys=True) for r in ladder]}
    name = f"{fingerprint or type(denoiser).__name__}-{steps}steps-{key['size']}-{'cfg' if key['cfg'] else 'nocfg'}"
    record = Calibration(cache_dir(cache) / f"{name}.json", key)

    from tqdm.auto import tqdm

    bar = tqdm(total=budget, desc="auto: calibrating", unit="generation", disable=not progress, leave=False)
    spent = 0
    baselines: dict[int, torch.Tensor] = {}

    use_predictor = predict and kind == "psnr"

    def generate(seed: int, overrides: dict | None) -> torch.Tensor:
        nonlocal spent
        spent += 1
        bar.update(1)
        kwargs = {**call, "prompt": prompts, "output_type": "pt",
                  "generator": [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]}
        recorder = None
        with trial(overrides or {}):     # {}: no acceleration, whatever the pipeline had before
            if use_predictor and overrides is None and seed == SEED and record.signals is None:
                recorder = auto_predict.ChangeRecorder(denoiser, [b for _, b in family.blocks(denoiser)],
                                                       family.cfg if key["cfg"] else "")
            try:
                images = _images(pipe(**kwargs))
            finally:
                if recorder is not None:
                    recorder.close()
        if recorder is not None:
            record.signals = recorder.signals(steps)
        return images

    def label(index: int, seed: int) -> str:
        return f"{index}@{seed}"

    def measure(index: int, seed: int) -> dict:
        if label(index, seed) not in record.rungs:
            if seed not in baselines:
                baselines[seed] = generate(seed, None)
            out = generate(seed, ladder[index])
            record.rungs[label(index, seed)] = {k: _metric(k, baselines[seed], out) for k in ("psnr", "ssim")}
            record.save()
        return record.rungs[label(index, seed)]

    def affordable(n_new: int) -> bool:
        return spent + n_new <= budget

    def predicted_next(lo: int, hi: int, seen: list[int]) -> int | None:
        """The most aggressive rung in (lo, hi) predicted to meet the target; None: none is
        (lo is the answer), or no prediction yet (bisect)."""
        if not use_predictor or record.signals is None:
            return None
        measured = {i: record.rungs[label(i, SEED)]["psnr"] for i in seen}   # this path's only: a
        # later call retraces the same path from the stored measurements, generating nothing
        if not measured:
            return None
        layout = ScheduleLayout.of(family, denoiser) if family.block_groups else None
        errors = [auto_predict.predicted_error(auto_predict.rung_settings(rung, family, denoiser), record.signals,
                                               layout=layout, guidance_scale=guidance or 1.0) for rung in ladder]
        predicted = auto_predict.predicted_psnr(errors, measured)
        passing = [i for i in range(lo + 1, hi) if predicted[i] >= target]
        return max(passing) if passing else lo

    lo, hi = -1, len(ladder)          # lo: known to meet the target (-1: no acceleration); hi: known to miss
    seen: list[int] = []
    while hi - lo > 1:
        guess = predicted_next(lo, hi, seen)
        if guess == lo:
            break                     # the predictor says every rung in (lo, hi) misses
        mid = (lo + hi) // 2 if guess is None else guess
        cost = (label(mid, SEED) not in record.rungs) * (1 + (SEED not in baselines))
        if not affordable(cost):
            break
        seen.append(mid)
        if measure(mid, SEED)[kind] >= target:
            lo = mid                  # refitted on this too, the predictor says whether to go on
        else:
            hi = mid
    verified = None
    while lo >= 0:                    # verify on a held-out seed; step back while it misses
        cost = (label(lo, VERIFY_SEED) not in record.rungs) * (1 + (VERIFY_SEED not in baselines))
        if not affordable(cost):
            break
        verified = measure(lo, VERIFY_SEED)[kind]
        if verified >= target:
            break
        lo -= 1
        verified = None
    bar.close()
    chosen = ladder[lo] if lo >= 0 else {}
    measured = record.rungs.get(label(lo, SEED), {}).get(kind, math.inf if lo < 0 else None)
    return {"overrides": chosen, "rung": lo, "of": len(ladder), "target": f"{kind} >= {target}",
            "measured": measured, "verified": verified, "generations_run": spent, "stored": str(record.path)}
