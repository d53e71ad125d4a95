"""Prompt following of the demo models, measured without any external model.

The dataset is procedural, so a caption says exactly what the picture must hold. For each
generated image the metric segments the objects against the caption's background (the
nearest of the background's shades and the eight object colours, pixel by pixel; connected
regions of object colours are objects) and reads, per object:

- colour: the majority colour class of the region's core (nearest of the dataset's colours);
- size: "large" when the region's extent (bounding-box side) is >= 16 px (the drawn sizes
  are <= 15 and >= 17 px);
- position: one object: the nearest of the nine grid positions to its centroid; two
  objects: whether the first is on the caption's side of the second ("relation");
- shape: a small CNN on the region's silhouette, trained on the dataset's renders
  (`train_shape_classifier`; weights in ``weights/follow/``).

Two-object captions: the two largest regions are matched to the caption's objects by the
assignment that agrees on the most attributes (colour first); a missing object fails every
attribute. The dataset's own renders score ~100% (`--kind real`), noise ~0.

    python -m accelerate_diffusion.demo.follow --kind dit   [--n 64] [--steps 25] [--guidance 5] [--weights-dir DIR]
    python -m accelerate_diffusion.demo.follow --kind real                  # the dataset's renders
    python -m accelerate_diffusion.demo.follow --kind vae                   # ... through the VAE (+ colour error)
    python -m accelerate_diffusion.demo.follow --kind ar_video [--n 32] [--frames 32]
    python -m accelerate_diffusion.demo.follow --train-shape-classifier     # rebuild weights/follow/

Needs scipy (the `eval` extra).

Video (`--kind ar_video`): one-object held-out clip captions, ``--frames`` key frames each;
a caption passes when the object keeps its colour (>= 90% of key frames), first moves the
named way, moves mostly along the named axis, and is still moving in the second half.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from . import dataset as ds

WEIGHTS = Path(__file__).parent / "weights" / "follow" / "shape_classifier.safetensors"
MIN_AREA = 10          # pixels: smaller regions are noise (the smallest drawn shape covers ~30)
MAX_AREA = 1000        # pixels: the largest drawn shape covers ~600
COUNT_AREA = 20        # regions at least this big count as objects for the "count" attribute
LARGE_EXTENT = 16      # px: drawn small shapes span <= 15, large ones >= 17
CROP = 20              # shape classifier input: the silhouette's bounding square, resized
STRIPE = 38.0          # the dataset's pattern shade offset (`dataset._background`)
README_PROMPT = "a small red circle above a large blue square"


@dataclass
class Blob:
    """One segmented object."""

    color: str
    area: int
    extent: int
    x: float
    y: float
    mask: np.ndarray
    shape: str = ""


# ---------------------------------------------------------------- segmentation


def background_of(image: np.ndarray) -> str:
    """The dataset background closest to the median of the image's 3-pixel border."""
    ring = np.concatenate([image[:3].reshape(-1, 3), image[-3:].reshape(-1, 3),
                           image[:, :3].reshape(-1, 3), image[:, -3:].reshape(-1, 3)]).astype(np.float32)
    med = np.median(ring, axis=0)
    return min(ds.BACKGROUNDS, key=lambda n: float(((np.array(ds.BACKGROUNDS[n]) - med) ** 2).sum()))


def palette(background: str, texture: str | None) -> tuple[np.ndarray, list[str]]:
    """Background shades (the base, and the pattern's second shade unless plain) and the
    names of the object colours that can appear on this background."""
    base = np.array(ds.BACKGROUNDS[background], dtype=np.float32)
    refs = [base]
    if texture != "plain":
        refs.append(base + (STRIPE if base.mean() < 128 else -STRIPE))
    return np.stack(refs), [c for c in ds.COLORS if c != background]


def _classes(image: np.ndarray, background: str, texture: str | None) -> tuple[np.ndarray, list[str]]:
    """Per pixel: -1 background, else the index into the returned colour names."""
    refs, names = palette(background, texture)
    cols = np.array([ds.COLORS[n] for n in names], dtype=np.float32)
    pal = np.concatenate([refs, cols])
    d = ((image.astype(np.float32)[..., None, :] - pal) ** 2).sum(-1)
    lab = d.argmin(-1) - len(refs)
    return np.where(lab < 0, -1, lab), names


def _blob(mask: np.ndarray, color: str) -> Blob:
    ys, xs = np.nonzero(mask)
    extent = int(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1)
    return Blob(color=color, area=int(mask.sum()), extent=extent, x=float(xs.mean()), y=float(ys.mean()), mask=mask)


def segment(image: np.ndarray, background: str | None = None, texture: str | None = None) -> list[Blob]:
    """Objects in a uint8 (64, 64, 3) image, largest first. Without a background name it is
    read off the image border; without a texture both pattern shades count as background."""
    background = background or background_of(image)
    lab, names = _classes(image, background, texture)
    regions, n = ndimage.label(lab >= 0)
    blobs = []
    for k in range(1, n + 1):
        m = regions == k
        if m.sum() < MIN_AREA:
            continue
        if m.sum() > MAX_AREA:  # bigger than any drawn shape: background painted in an object colour
            continue
        core = ndimage.binary_erosion(m)
        counts = np.bincount(lab[core if core.sum() >= MIN_AREA else m], minlength=len(names))
        colours = [c for c in np.argsort(counts)[::-1] if counts[c] >= MIN_AREA] or [int(np.argmax(counts))]
        if len(colours) == 1:
            blobs.append(_blob(m, names[colours[0]]))
            continue
        for c in colours:  # several colours of substance in one region: touching objects
            pieces, n_p = ndimage.label(m & (lab == c))
            if n_p:
                biggest = pieces == (1 + int(np.argmax(np.bincount(pieces.ravel())[1:])))
                if biggest.sum() >= MIN_AREA:
                    blobs.append(_blob(biggest, names[c]))
    return sorted(blobs, key=lambda b: -b.area)


def position_class(x: float, y: float) -> str:
    return min(ds.GRID_POSITIONS, key=lambda p: (ds.GRID_POSITIONS[p][0] - x) ** 2 + (ds.GRID_POSITIONS[p][1] - y) ** 2)


def size_class(extent: int) -> str:
    return "large" if extent >= LARGE_EXTENT else "small"


# ---------------------------------------------------------------- shape classifier


def new_shape_classifier() -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * (CROP // 4) ** 2, len(ds.SHAPES)),
    )


def silhouette(mask: np.ndarray) -> torch.Tensor:
    """A region's mask cropped to its bounding square (centred) and resized to CROP x CROP."""
    ys, xs = np.nonzero(mask)
    side = max(ys.max() - ys.min(), xs.max() - xs.min()) + 3
    cy, cx = (ys.max() + ys.min()) / 2, (xs.max() + xs.min()) / 2
    y0, x0 = int(round(cy - side / 2)), int(round(cx - side / 2))
    canvas = np.zeros((side, side), np.float32)
    sy, sx = max(0, -y0), max(0, -x0)
    sub = mask[max(0, y0): y0 + side, max(0, x0): x0 + side].astype(np.float32)
    canvas[sy: sy + sub.shape[0], sx: sx + sub.shape[1]] = sub
    t = torch.from_numpy(canvas)[None, None]
    return torch.nn.functional.interpolate(t, size=(CROP, CROP), mode="area")[0]


_CLASSIFIER: dict[str, torch.nn.Module] = {}


def load_shape_classifier(path: str | Path = WEIGHTS) -> torch.nn.Module:
    from safetensors.torch import load_file

    key = str(path)
    if key not in _CLASSIFIER:
        if not Path(path).exists():
            raise FileNotFoundError(f"shape classifier not found at {path}; build it with "
                                    "`python -m accelerate_diffusion.demo.follow --train-shape-classifier`")
        model = new_shape_classifier()
        model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
        _CLASSIFIER[key] = model.eval()
    return _CLASSIFIER[key]


@torch.no_grad()
def classify_shapes(blobs: list[Blob], classifier: torch.nn.Module) -> None:
    if blobs:
        x = torch.stack([silhouette(b.mask) for b in blobs])
        for b, k in zip(blobs, classifier(x).argmax(-1).tolist()):
            b.shape = ds.SHAPES[k]


def _degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur and noise, so the classifier also knows the soft edges of generated shapes."""
    sigma = float(rng.uniform(0, 1.4))
    img = ndimage.gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0)) if sigma > 0.1 else image
    img = img + rng.normal(0, rng.uniform(0, 8), size=image.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def shape_examples(n_scenes: int, seed: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Silhouettes segmented (as the metric does) from degraded renders, with their true shape."""
    xs, ys = [], []
    for i in range(n_scenes):
        rng = np.random.default_rng([seed, ds.SPLIT_IDS[split], i, 7])
        scene = ds.sample_scene(rng, n_shapes=1 + int(rng.integers(2)))
        image = _degrade(ds.render(scene, rng)[0], rng)
        for b in segment(image, scene.background, scene.texture):
            s = min(scene.shapes, key=lambda s: (s.x - b.x) ** 2 + (s.y - b.y) ** 2)
            if (s.x - b.x) ** 2 + (s.y - b.y) ** 2 < 9 and s.color == b.color:
                xs.append(silhouette(b.mask))
                ys.append(ds.SHAPES.index(s.kind))
    return torch.stack(xs), torch.tensor(ys)


def train_shape_classifier(out: str | Path = WEIGHTS, n_scenes: int = 4000, epochs: int = 20, seed: int = 0) -> dict:
    """Train the shape classifier on the train split's renders; report accuracy on the test split."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    x, y = shape_examples(n_scenes, seed, "train")
    xt, yt = shape_examples(n_scenes // 4, seed, "test")
    model = new_shape_classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(x) + 127) // 128))
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            j = perm[i: i + 128]
            xb = x[j]
            xb = torch.where(torch.rand(len(j), 1, 1, 1) < 0.5, xb, xb.flip(-1))  # shapes are left-right symmetric
            loss = torch.nn.functional.cross_entropy(model(xb), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(-1) == yt).float().mean())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    info = {"train_examples": len(x), "test_examples": len(xt), "test_accuracy": round(acc, 4), "epochs": epochs}
    out.with_name("train_log.json").write_text(json.dumps(info, indent=1))
    _CLASSIFIER.pop(str(out), None)
    return info


# ---------------------------------------------------------------- scoring


def _match_score(blob: Blob, obj: tuple[str, str, str]) -> int:
    size, color, kind = obj
    return 4 * (blob.color == color) + 2 * (blob.shape == kind) + (size_class(blob.extent) == size)


def _object_attrs(blob: Blob | None, obj: tuple[str, str, str]) -> dict:
    size, color, kind = obj
    if blob is None:
        return {"color": False, "size": False, "shape": False}
    return {"color": blob.color == color, "size": size_class(blob.extent) == size, "shape": blob.shape == kind}


def _side_ok(a: Blob, b: Blob, relation: str) -> bool:
    margin = 2.0
    return {"above": b.y - a.y, "below": a.y - b.y, "to the left of": b.x - a.x,
            "to the right of": a.x - b.x}[relation] > margin


def score(image: np.ndarray, caption: str, classifier: torch.nn.Module | None = None) -> dict:
    """Attribute checks for one image and its caption.

    One object: ``{"n": 1, "objects": [{"color", "size", "shape"}], "position", "count"}``;
    two: ``{"n": 2, "objects": [..., ...], "relation", "both_colors", "count"}`` (booleans).
    """
    cap = ds.parse_caption(caption)
    objs = cap["shapes"]
    if len(objs) not in (1, 2):
        raise ValueError(f"captions of one or two objects only, got {len(objs)}: {caption!r}")
    blobs = segment(image, cap["background"], cap["texture"])
    classify_shapes(blobs[:2], classifier if classifier is not None else load_shape_classifier())
    out = {"n": len(objs), "count": sum(b.area >= COUNT_AREA for b in blobs) == len(objs)}
    if len(objs) == 1:
        b = blobs[0] if blobs else None
        out["objects"] = [_object_attrs(b, objs[0])]
        out["position"] = b is not None and position_class(b.x, b.y) == cap["layout"]
        return out
    top = blobs[:2]
    if len(top) == 2:
        fwd = _match_score(top[0], objs[0]) + _match_score(top[1], objs[1])
        rev = _match_score(top[1], objs[0]) + _match_score(top[0], objs[1])
        a, b = (top[0], top[1]) if fwd >= rev else (top[1], top[0])
    elif len(top) == 1:
        a, b = (top[0], None) if _match_score(top[0], objs[0]) >= _match_score(top[0], objs[1]) else (None, top[0])
    else:
        a = b = None
    out["objects"] = [_object_attrs(a, objs[0]), _object_attrs(b, objs[1])]
    out["relation"] = a is not None and b is not None and _side_ok(a, b, cap["layout"])
    out["both_colors"] = all(o["color"] for o in out["objects"])
    return out


def summarize(scores: list[dict]) -> dict:
    """Mean accuracy per attribute (colour/size/shape per object; the rest per caption), in %."""
    res = {}
    for key in ("color", "size", "shape"):
        vals = [o[key] for s in scores for o in s["objects"]]
        res[key] = 100 * float(np.mean(vals)) if vals else float("nan")
    for key in ("position", "relation", "both_colors", "count"):
        vals = [s[key] for s in scores if key in s]
        if vals:
            res[key] = 100 * float(np.mean(vals))
    return res


def heldout_captions(n: int, n_shapes: int, seed: int = 0) -> list[str]:
    """``n`` held-out captions (the test split's scenes, forced to ``n_shapes`` objects) that
    name their background: what the metric's figures are measured on."""
    return [heldout_scene(i, n_shapes, seed)[0].caption for i in range(n)]


def heldout_scene(i: int, n_shapes: int, seed: int = 0):
    """``(scene, rng)`` of held-out item ``i`` (the rng then renders its image)."""
    rng = np.random.default_rng([seed, ds.SPLIT_IDS["test"], i, 100 + n_shapes])
    scene = ds.sample_scene(rng, n_shapes=n_shapes)
    scene.named_background = True
    scene.caption = ds.make_caption(scene)
    return scene, rng


def heldout_renders(n: int, n_shapes: int, seed: int = 0, masks: bool = False):
    """The dataset's own images for `heldout_captions` (the metric's ceiling):
    ``(images uint8 (n, 64, 64, 3), captions)``, plus the per-shape masks if ``masks``."""
    pairs = [heldout_scene(i, n_shapes, seed) for i in range(n)]
    drawn = [ds.render(s, rng) for s, rng in pairs]
    out = np.stack([d[0] for d in drawn]), [s.caption for s, _ in pairs]
    return out + ([d[1] for d in drawn],) if masks else out


@torch.no_grad()
def vae_roundtrip(vae, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 images through the VAE (posterior mean) and back."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i: i + batch]).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(vae.dtype)
        r = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
        out.append(((r.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def colour_error(images: np.ndarray, reference: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """Mean absolute error (R, G, B; 0-255) of each shape's mean colour inside its own
    visible interior (covered >= 99%, not covered by a later shape, one pixel in from the edge)."""
    errs = []
    for im, ref, ms in zip(images, reference, masks):
        for k, m in enumerate(ms):
            vis = ndimage.binary_erosion((m > 0.99) & np.all(ms[k + 1:] < 0.01, axis=0))
            if vis.sum() >= 4:
                errs.append(np.abs(im[vis].astype(np.float32).mean(0) - ref[vis].astype(np.float32).mean(0)))
    return np.mean(errs, axis=0)


# ---------------------------------------------------------------- video


def track(frames: np.ndarray, caption: str, classifier=None) -> dict:
    """Checks for one one-object clip (uint8 (T, 64, 64, 3)) against its caption
    ("a large red circle moving right on a gray background")."""
    from .video import DIRECTIONS, static_caption

    direction = re.search(r" moving (\w+)", caption).group(1)
    cap = ds.parse_caption(static_caption(caption))
    color = cap["shapes"][0][1]
    pos, colors = [], []
    for f in frames:
        blobs = segment(f, cap["background"], "plain")
        colors.append(bool(blobs) and blobs[0].color == color)
        pos.append((blobs[0].x, blobs[0].y) if blobs else (np.nan, np.nan))
    pos = np.array(pos)
    dx, dy = DIRECTIONS[direction]
    axis, sign = (0, dx) if dx else (1, dy)
    p, q = pos[:, axis], pos[:, 1 - axis]
    ok = np.isfinite(p)
    p, q = p[ok], q[ok]
    moved = np.nonzero(np.abs(p - p[0]) >= 1.0)[0] if len(p) else np.array([], int)
    first = bool(len(moved)) and np.sign(p[moved[0]] - p[0]) == sign
    along, across = np.abs(np.diff(p)).sum(), np.abs(np.diff(q)).sum()
    half = len(p) // 2
    out = {
        "color": float(np.mean(colors)) >= 0.9,
        "direction": bool(first),
        "axis": bool(along >= 2 * across and along > 0),
        "moving": bool(np.abs(np.diff(p[half:])).sum() >= 8.0),
    }
    out["pass"] = all(out.values())
    return out


def video_captions(n: int, seed: int = 0, frames: int = 32) -> tuple[list[str], np.ndarray]:
    """The first ``n`` one-object held-out clips (test split): captions and their frames."""
    from .video import make_clip

    caps, clips, i = [], [], 0
    while len(caps) < n:
        clip, cap = make_clip(i, seed, "test", frames=frames)
        if " and " not in cap:
            caps.append(cap)
            clips.append(clip)
        i += 1
    return caps, np.stack(clips)


@torch.no_grad()
def video_rollouts(pipe, captions: list[str], frames: int, seed: int = 0, steps: int | None = None,
                   guidance: float | None = None, batch: int = 8) -> np.ndarray:
    """Key frames uint8 (N, frames, 64, 64, 3) of one rollout per caption."""
    from .video import DEFAULT_GUIDANCE, DEFAULT_STEPS, call_kwargs, decode_keyframes

    out = []
    for i in range(0, len(captions), batch):
        lat = pipe(**call_kwargs(captions[i: i + batch], latent_frames=frames, steps=steps or DEFAULT_STEPS,
                                 guidance=DEFAULT_GUIDANCE if guidance is None else guidance, seed=seed + i,
                                 output_type="latent")).frames
        keys = decode_keyframes(pipe, lat)                       # (B, T, 3, 64, 64) in [0, 1]
        out.append((keys.permute(0, 1, 3, 4, 2).numpy() * 255).round().astype(np.uint8))
    return np.concatenate(out)


# ---------------------------------------------------------------- CLI


def _table(rows: dict[str, dict], keys: list[str]) -> str:
    lines = [f"{'':28}" + "".join(f"{k:>12}" for k in keys)]
    for name, r in rows.items():
        lines.append(f"{name:28}" + "".join(f"{r[k]:11.1f}%" if k in r else f"{'-':>12}" for k in keys))
    return "\n".join(lines)


def evaluate_images(images, captions, classifier=None) -> dict:
    return summarize([score(im, c, classifier) for im, c in zip(images, captions)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="dit",
                   help="dit, unet, ar_video; real (the dataset's renders) or vae (their VAE round trips)")
    p.add_argument("--n", type=int, default=64, help="held-out captions per object count (video: clips)")
    p.add_argument("--steps", type=int, default=None, help="default: 25 (images), the video default (ar_video)")
    p.add_argument("--guidance", type=float, default=None, help="default: 5 (images), the video default (ar_video)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=32, help="ar_video: key frames per rollout")
    p.add_argument("--weights-dir", default=None, help="demo weights folder (default: the shipped ones)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default="", help="also write the figures here")
    p.add_argument("--train-shape-classifier", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_shape_classifier:
        print(train_shape_classifier())
        return
    from . import DEFAULT_GUIDANCE, DEFAULT_STEPS, load_pipeline

    t0 = time.time()
    result: dict = {"kind": args.kind, "n": args.n, "seed": args.seed}
    if args.kind == "ar_video":
        from . import video

        steps = args.steps or video.DEFAULT_STEPS
        guidance = video.DEFAULT_GUIDANCE if args.guidance is None else args.guidance
        caps, real = video_captions(args.n, args.seed, args.frames)
        pipe = load_pipeline("ar_video", weights_dir=args.weights_dir)
        clips = video_rollouts(pipe, caps, args.frames, args.seed, steps, guidance)
        rows = {}
        for name, cl in (("real clips", real), (f"ar_video ({args.frames} frames)", clips)):
            checks = [track(c, cap) for c, cap in zip(cl, caps)]
            rows[name] = {k: 100 * float(np.mean([c[k] for c in checks])) for k in checks[0]}
        print(f"{args.n} one-object held-out clip captions, {args.frames} key frames, {steps} steps/chunk, "
              f"guidance {guidance}, seed {args.seed}")
        print(_table(rows, ["color", "direction", "axis", "moving", "pass"]))
        result.update(rows=rows, steps=steps, guidance=guidance, frames=args.frames)
    else:
        steps = args.steps or DEFAULT_STEPS
        guidance = DEFAULT_GUIDANCE if args.guidance is None else args.guidance
        caps1, caps2 = heldout_captions(args.n, 1, args.seed), heldout_captions(args.n, 2, args.seed)
        readme = None
        if args.kind in ("real", "vae"):
            im1, _, m1 = heldout_renders(args.n, 1, args.seed, masks=True)
            im2, _, m2 = heldout_renders(args.n, 2, args.seed, masks=True)
            if args.kind == "vae":
                from . import load_vae

                vae = load_vae(weights_dir=args.weights_dir)
                r1, r2 = vae_roundtrip(vae, im1), vae_roundtrip(vae, im2)
                err = colour_error(np.concatenate([r1, r2]), np.concatenate([im1, im2]), m1 + m2)
                print("VAE per-shape colour error (mean |difference| of the shape's mean colour, 0-255): "
                      f"R {err[0]:.1f}  G {err[1]:.1f}  B {err[2]:.1f}")
                result["colour_error_rgb"] = [round(float(e), 2) for e in err]
                im1, im2 = r1, r2
        else:
            from .quality import generate

            pipe = load_pipeline(args.kind, weights_dir=args.weights_dir)
            im1 = generate(pipe, caps1, steps, guidance, seed=args.seed)
            im2 = generate(pipe, caps2, steps, guidance, seed=args.seed)
            readme = {}
            for prompt in (README_PROMPT, README_PROMPT + " on a gray background"):
                ims = np.concatenate([generate(pipe, [prompt], steps, guidance, seed=s) for s in range(4)])
                sc = [score(im, prompt) for im in ims]
                readme[prompt] = {"both_colors": sum(s["both_colors"] for s in sc),
                                  "both_colors_and_relation": sum(s["both_colors"] and s["relation"] for s in sc)}
        rows = {"one object": evaluate_images(im1, caps1), "two objects": evaluate_images(im2, caps2)}
        print(f"{args.kind}: {args.n} + {args.n} held-out captions, {steps} steps, guidance {guidance}, seed {args.seed}")
        print(_table(rows, ["color", "size", "shape", "position", "relation", "both_colors", "count"]))
        if readme:
            for prompt, r in readme.items():
                print(f"README prompt {prompt!r}, seeds 0-3: both colours {r['both_colors']}/4, "
                      f"both colours + relation {r['both_colors_and_relation']}/4")
        result.update(rows=rows, readme=readme, steps=steps, guidance=guidance)
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
