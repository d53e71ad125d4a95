"""Distribution and alignment metrics (torchmetrics): FID, CLIP score, LPIPS.

Images are float tensors in [0, 1], [N, 3, H, W] (flatten video frames first). The
networks come from :mod:`.models`, which loads them offline or says why it cannot.
"""

from __future__ import annotations

import torch

from .fidelity import _as_images


def _batches(images: torch.Tensor, size: int = 16):
    for i in range(0, len(images), size):
        yield images[i:i + size]


class FID:
    """FID of several image sets against one reference set, the reference features kept.

    ``extractor`` is an ``nn.Module`` mapping [N, 3, H, W] in [0, 1] to [N, D] (see
    :mod:`.models`); torchmetrics computes the Fréchet distance on its features.
    """

    def __init__(self, extractor: torch.nn.Module, reference: torch.Tensor | list[torch.Tensor]):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.extractor = extractor
        self.description = getattr(extractor, "description", type(extractor).__name__)
        self.metric = FrechetInceptionDistance(feature=extractor, normalize=True,
                                               reset_real_features=False)
        self.n_reference = 0
        for batch in _reference_batches(reference):
            self.metric.update(batch, real=True)
            self.n_reference += len(batch)
        if self.n_reference < 2:
            raise ValueError(f"FID: need at least 2 reference images, got {self.n_reference}")

    def __call__(self, images: torch.Tensor) -> float:
        images = _as_images(images)
        if len(images) < 2:
            raise ValueError(f"FID: need at least 2 images, got {len(images)}")
        self.metric.reset()
        for batch in _batches(images):
            self.metric.update(batch, real=False)
        return float(self.metric.compute())


def _reference_batches(reference):
    if isinstance(reference, torch.Tensor):
        yield from _batches(_as_images(reference))
    else:                       # a list of images, possibly of different sizes
        for image in reference:
            yield _as_images(image)


def fid(reference: torch.Tensor, images: torch.Tensor, extractor: torch.nn.Module) -> float:
    """One FID value: ``images`` against ``reference`` in ``extractor``'s feature space."""
    return FID(extractor, reference)(images)


def clip_score(images: torch.Tensor, prompts: list[str], adapter) -> float:
    """Mean torchmetrics CLIPScore (100 * max(cos, 0)) of each image with its prompt."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    images = _as_images(images)
    if len(images) != len(prompts):
        raise ValueError(f"clip_score: {len(images)} images but {len(prompts)} prompts")
    metric = CLIPScore(model_name_or_path=adapter.loader())
    for i in range(0, len(images), 16):
        batch = (images[i:i + 16].clamp(0, 1) * 255).round().to(torch.uint8)
        metric.update(list(batch), list(prompts[i:i + 16]))
    return float(metric.compute())


def lpips(reference: torch.Tensor, other: torch.Tensor, metric) -> list[float]:
    """LPIPS of each image pair (lower is closer); ``metric`` from ``models.load_lpips``."""
    a, b = _as_images(reference), _as_images(other)
    values = []
    for x, y in zip(a, b):
        metric.reset()
        metric.update(x[None, :3].clamp(0, 1), y[None, :3].clamp(0, 1))
        values.append(float(metric.compute()))
    return values
