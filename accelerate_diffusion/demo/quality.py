"""Quality check of the embedded demo models (prints figures; asserts nothing).

    python -m accelerate_diffusion.demo.quality [--n 128] [--steps 25] [--guidance 5] [--grid docs/demo_samples.png]

For each demo pipeline, on held-out prompts (the dataset's "test" split):
- demo-CLIP score of the generated images with their own prompts vs shuffled prompts;
- Frechet distance (demo-CLIP image features) between generated and real test images,
  next to the same figure for an untrained pipeline (same classes, VAE and text encoder,
  freshly initialised denoiser).
The same CLIP figures for real test images are printed as a reference.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from . import DEFAULT_GUIDANCE, DEFAULT_STEPS, clip_score, image_features, load_clip, load_pipeline
from . import dataset as ds

GRID_PROMPTS = [
    "a large red circle in the center on a gray background",
    "a small blue square in the top left on a white background",
    "a large yellow star at the bottom on a black background",
    "a large green triangle on the right on a beige background",
    "a large white cross above a small orange circle on a gray background",
    "a small purple diamond to the left of a large yellow square on a black background",
    "a large blue circle below a small red star on a striped white background",
    "a small red circle above a large blue square",
]


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows = samples)."""
    a, b = a.double().numpy(), b.double().numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(s1 s2) = tr sqrt(r s2 r) with r = sqrt(s1), which is symmetric PSD
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r @ s2 @ r
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def shuffled(prompts: list[str], seed: int = 0) -> list[str]:
    """A derangement-ish shuffle: every prompt moves (rotate a random permutation)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(prompts))
    out = [None] * len(prompts)
    for k in range(len(perm)):
        out[perm[k]] = prompts[perm[(k + 1) % len(perm)]]
    return out


@torch.no_grad()
def generate(pipe, prompts, steps, guidance, seed=0, batch=32) -> np.ndarray:
    out = []
    for i in range(0, len(prompts), batch):
        g = torch.Generator().manual_seed(seed + i)
        r = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np")
        out.append((np.clip(r.images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def untrained_copy(pipe, kind: str, seed: int = 0):
    """The same pipeline with a freshly initialised denoiser (same configuration)."""
    torch.manual_seed(seed)
    name = "unet" if kind == "unet" else "transformer"
    den = getattr(pipe, name)
    comps = dict(pipe.components, **{name: type(den).from_config(den.config).eval()})
    p = type(pipe)(**comps)
    p.set_progress_bar_config(disable=True)
    return p


def save_grid(path: Path, rows: list[tuple[str, list[np.ndarray]]], scale: int = 2):
    from PIL import Image, ImageDraw

    n_cols = max(len(r[1]) for r in rows)
    cell = 64 * scale
    label_w = 420
    W, H = label_w + n_cols * (cell + 4), len(rows) * (cell + 4) + 24
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    d.text((4, 4), "prompt  |  real (dataset)  |  UNet (SD pipeline) x2 seeds  |  DiT (SD3 pipeline) x2 seeds", fill=(0, 0, 0))
    for r, (text, ims) in enumerate(rows):
        y = 24 + r * (cell + 4)
        words, line, lines = text.split(), "", []
        for w in words:
            if len(line) + len(w) > 60:
                lines.append(line)
                line = ""
            line += w + " "
        lines.append(line)
        for k, ln in enumerate(lines):
            d.text((4, y + 4 + 12 * k), ln.strip(), fill=(0, 0, 0))
        for c, im in enumerate(ims):
            canvas.paste(Image.fromarray(im).resize((cell, cell), Image.NEAREST), (label_w + c * (cell + 4), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def real_example(prompt: str, seed: int = 0) -> np.ndarray:
    """A dataset image for `prompt` (re-rendering the parsed scene)."""
    a = ds.parse_caption(prompt)
    rng = np.random.default_rng(seed)
    # sample scenes until one has the same caption structure, then copy the attributes
    for i in range(20000):
        s = ds.sample_scene(np.random.default_rng([seed, 9, i]))
        if len(s.shapes) == len(a["shapes"]) and s.layout == a["layout"]:
            for sh, (size, color, kind) in zip(s.shapes, a["shapes"]):
                sh.size, sh.color, sh.kind = size, color, kind
                lo, hi = ds.SIZES[size]
                sh.radius = (lo + hi) / 2
            s.background, s.texture = a["background"], a["texture"]
            return ds.render(s, rng)[0]
    raise ValueError(prompt)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="held-out prompts per pipeline")
    p.add_argument("--n-real", type=int, default=500, help="real test images for the Frechet reference")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--kinds", default="unet,dit")
    p.add_argument("--grid", default="", help="also write a sample grid PNG here")
    p.add_argument("--no-untrained", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clip = load_clip()
    real_imgs, real_caps, _ = ds.generate(args.n_real, seed=0, split="test")
    prompts = real_caps[: args.n]
    real_feats = image_features(real_imgs, clip[0])
    # reference: real images (a second real set, for the Frechet floor at this sample size)
    val_imgs, val_caps, _ = ds.generate(args.n, seed=0, split="val")
    print(f"held-out prompts: {args.n}; real reference images: {args.n_real}; steps={args.steps} guidance={args.guidance}")
    cm = clip_score(val_imgs, val_caps, clip).mean().item()
    cs = clip_score(val_imgs, shuffled(val_caps), clip).mean().item()
    fd = frechet_distance(image_features(val_imgs, clip[0]), real_feats)
    print(f"{'real images':<22} CLIP matched {cm:6.2f}  shuffled {cs:6.2f}  | FD to real {fd:8.2f}")
    grid = {}
    for kind in args.kinds.split(","):
        pipe = load_pipeline(kind)
        t = time.time()
        imgs = generate(pipe, prompts, args.steps, args.guidance)
        dt = time.time() - t
        cm = clip_score(imgs, prompts, clip).mean().item()
        cs = clip_score(imgs, shuffled(prompts), clip).mean().item()
        fd = frechet_distance(image_features(imgs, clip[0]), real_feats)
        line = f"{kind + ' trained':<22} CLIP matched {cm:6.2f}  shuffled {cs:6.2f}  | FD to real {fd:8.2f}"
        print(line + f"   ({dt / len(prompts):.2f} s/image)", flush=True)
        if not args.no_untrained:
            up = untrained_copy(pipe, kind)
            uimgs = generate(up, prompts, args.steps, args.guidance)
            ucm = clip_score(uimgs, prompts, clip).mean().item()
            ufd = frechet_distance(image_features(uimgs, clip[0]), real_feats)
            print(f"{kind + ' untrained':<22} CLIP matched {ucm:6.2f}  {'':16}| FD to real {ufd:8.2f}", flush=True)
        if args.grid:
            grid[kind] = generate(pipe, GRID_PROMPTS * 2, args.steps, args.guidance, seed=1234, batch=len(GRID_PROMPTS) * 2)
    if args.grid:
        rows = []
        n = len(GRID_PROMPTS)
        for i, pr in enumerate(GRID_PROMPTS):
            ims = [real_example(pr, i)]
            for kind in grid:
                ims += [grid[kind][i], grid[kind][i + n]]
            rows.append((pr, ims))
        save_grid(Path(args.grid), rows)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
