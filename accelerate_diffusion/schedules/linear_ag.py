"""LinearAG calibration: fit the coefficients that estimate the unconditional prediction.

``guidance`` mode ``linear`` replaces the unconditional evaluation on some steps by
``a*eps_c[t] + b*eps_c[t-1] + c*eps_u[t-1]``. The coefficients are least-squares fits on a few
full-CFG runs of the model; this module records those runs (through the guidance technique's
``record`` setting) and writes the coefficient file the technique loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from ..api import accelerated
from ..families import find_denoiser
from ..patches.guidance import Config, model_fingerprint


def record_trajectories(pipe, calls: Iterable[dict]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Run ``pipe(**kwargs)`` with full CFG for each kwargs; per call, per step (cond, uncond)."""
    trajectories = []
    with accelerated(pipe, "off", guidance=Config(mode="adaptive", threshold=2.0, record=True)):
        for kwargs in calls:
            pipe(**kwargs)
            recorded = pipe.acceleration.stats()["guidance"].get("trajectory")
            if not recorded:
                raise ValueError("guidance: no CFG step was recorded; does this call use "
                                 "classifier-free guidance (guidance_scale > 1)?")
            trajectories.append(recorded)
    return trajectories


def fit_linear_ag(trajectories, max_ratio: float = 0.5, max_fraction: float = 1.0) -> dict:
    """Least-squares LinearAG coefficients per step from full-CFG trajectories.

    For each step t >= 1: ``eps_u[t] ~ a*eps_c[t] + b*eps_c[t-1] + c*eps_u[t-1]`` over all
    samples and elements. ``ratio[t]`` is the residual relative to ``|eps_u - eps_c|`` (the
    error of simply dropping guidance). Steps are chosen for replacement alternately (the
    previous step is a real evaluation), within ``max_fraction`` of the steps, when
    ``ratio <= max_ratio``.
    """
    steps = len(trajectories[0])
    if any(len(t) != steps for t in trajectories):
        raise ValueError("guidance: all calibration runs must have the same number of steps")
    coeffs, ratios, replace = [[0.0, 0.0, 0.0]], [None], []
    for t in range(1, steps):
        cols = [torch.cat([traj[t][0].flatten() for traj in trajectories]),
                torch.cat([traj[t - 1][0].flatten() for traj in trajectories]),
                torch.cat([traj[t - 1][1].flatten() for traj in trajectories])]
        x = torch.stack(cols, 1).double()
        y = torch.cat([traj[t][1].flatten() for traj in trajectories]).double()
        w = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
        ratio = float((y - x @ w).norm() / (y - cols[0].double()).norm().clamp_min(1e-12))
        coeffs.append([float(v) for v in w])
        ratios.append(ratio)
        if ratio <= max_ratio and t < max_fraction * steps and (t - 1) not in replace:
            replace.append(t)
    return {"steps": steps, "coefficients": coeffs, "ratio": ratios, "replace": replace,
            "samples": sum(traj[0][0].shape[0] for traj in trajectories)}


def fit_pipeline(pipe, calls: list[dict], path: str | Path | None = None, **fit_kwargs) -> dict:
    """Record full-CFG runs of ``pipe``, fit LinearAG, tag it with the model, save as JSON."""
    _, denoiser = find_denoiser(pipe)
    data = fit_linear_ag(record_trajectories(pipe, calls), **fit_kwargs)
    data = {"denoiser": type(denoiser).__name__, "fingerprint": model_fingerprint(denoiser),
            "scheduler": type(pipe.scheduler).__name__, **data}
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1) + "\n")
    return data
