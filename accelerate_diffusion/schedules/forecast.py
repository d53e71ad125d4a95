"""Forecasting a skipped computation from the outputs of the last full ones (TaylorSeer-style).

Shared by the caches that may predict instead of copy (block caching's components, DeepCache's
deep feature). Lagrange extrapolation in the step index: with full steps unevenly spaced (learned
or non-uniform schedules) it is still exact for polynomials of degree < the number of outputs,
where finite differences on a uniform grid would not be.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


def lagrange_weights(steps: list[int], at: int) -> list[float]:
    """Weights w_j with f(at) = sum_j w_j f(steps[j]) for any polynomial f of degree < len(steps)."""
    out = []
    for j, sj in enumerate(steps):
        w = 1.0
        for m, sm in enumerate(steps):
            if m != j:
                w *= (at - sm) / (sj - sm)
        out.append(w)
    return out


def extrapolate(history: list[tuple[int, Any]], at: int):
    """The output predicted at step ``at`` from (step, output) pairs, oldest first. Outputs are
    tensors or tuples / dataclasses of them (non-tensor parts are taken from the oldest)."""
    weights = lagrange_weights([s for s, _ in history], at)

    def combine(*tensors):
        total = tensors[0] * weights[0]
        for w, t in zip(weights[1:], tensors[1:]):
            total = total + t * w
        return total.to(tensors[0].dtype)

    def walk(*parts):
        first = parts[0]
        if isinstance(first, torch.Tensor):
            return combine(*parts)
        if isinstance(first, tuple):
            return type(first)(walk(*items) for items in zip(*parts))
        if dataclasses.is_dataclass(first):
            return type(first)(**{k: walk(*(p[k] for p in parts)) for k in first.keys()})
        return first

    return walk(*(o for _, o in history))
