"""Fidelity of an accelerated output to the unaccelerated one (torchmetrics).

Inputs are images in [0, 1] shaped [N, C, H, W], or video [N, F, C, H, W] (frames are
scored as images). Identical inputs give PSNR = inf and SSIM = 1.
"""

from __future__ import annotations

import torch


def _as_images(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x).detach().float().cpu()
    if x.ndim == 5:
        x = x.flatten(0, 1)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"images: expected [N,C,H,W] or [N,F,C,H,W], got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)          # channels-last numpy layout
    return x


def psnr(reference: torch.Tensor, other: torch.Tensor, data_range: float = 1.0) -> float:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _as_images(reference), _as_images(other)
    if torch.equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(b, a, data_range=data_range))


def ssim(reference: torch.Tensor, other: torch.Tensor, data_range: float = 1.0) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _as_images(reference), _as_images(other)
    kernel = min(11, a.shape[-1], a.shape[-2])
    kernel -= 1 - kernel % 2                # odd, and no larger than the image
    return float(structural_similarity_index_measure(b, a, data_range=data_range,
                                                     kernel_size=kernel))


def per_image(metric, reference: torch.Tensor, other: torch.Tensor) -> list[float]:
    """``metric`` (psnr or ssim) of each pair: one value per item of the leading dimension."""
    reference, other = torch.as_tensor(reference), torch.as_tensor(other)
    if reference.shape != other.shape:
        raise ValueError(f"fidelity: shapes differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    return [metric(a, b) for a, b in zip(reference, other)]


def per_frame(metric, reference: torch.Tensor, other: torch.Tensor) -> list[float]:
    """For videos [N, F, C, H, W]: ``metric`` of frame f over all N videos, for each f."""
    reference, other = torch.as_tensor(reference), torch.as_tensor(other)
    if reference.ndim != 5:
        raise ValueError(f"per_frame: expected [N, F, C, H, W], got {tuple(reference.shape)}")
    return [metric(reference[:, f], other[:, f]) for f in range(reference.shape[1])]
