"""Loading the embedded demo weights (no network): CLIP, tokenizer, VAE."""

from __future__ import annotations

from pathlib import Path

import torch

WEIGHTS_DIR = Path(__file__).parent / "weights"


def _dir(name: str, weights_dir: str | Path | None) -> Path:
    d = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    p = d / name
    if not (p / "config.json").exists():
        raise FileNotFoundError(
            f"demo weights not found at {p}; train them with `python -m accelerate_diffusion.demo.train {name}`"
        )
    return p


def is_available(kind: str = "dit", weights_dir: str | Path | None = None) -> bool:
    """Whether the embedded weights for pipeline `kind` (or ``"clip"``/``"vae"``) are present."""
    d = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    need = {"unet": ("clip", "vae", "unet"), "dit": ("clip", "vae", "dit"),
            "ar_video": ("clip", "vae", "ar_video")}.get(kind, (kind,))
    return all((d / n / "config.json").exists() for n in need)


def load_tokenizer(weights_dir: str | Path | None = None):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(_dir("clip", weights_dir), local_files_only=True)


def load_clip(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", weights_dir=None):
    """The demo CLIP as ``(CLIPModel, CLIPTokenizer)``, in eval mode.

    Images go in as ``pixel_values`` of shape (N, 3, 64, 64) scaled to [-1, 1]
    (`to_pixel_values` converts PIL images / uint8 arrays / tensors).
    """
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(_dir("clip", weights_dir), torch_dtype=dtype, local_files_only=True)
    return model.to(device).eval(), load_tokenizer(weights_dir)


def load_vae(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", weights_dir=None):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(_dir("vae", weights_dir), torch_dtype=dtype, local_files_only=True)
    return vae.to(device).eval()
