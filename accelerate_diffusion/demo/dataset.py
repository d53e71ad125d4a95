"""Procedural "shapes" dataset: 64x64 RGB scenes with a caption each.

Everything is generated from a seed (no downloads). A scene holds one or two
coloured shapes (circle, square, triangle, star, diamond, cross) of two sizes,
on a plain, striped or checkered background of a named colour. Captions name
every attribute, including where the shapes are::

    a small red circle in the top left on a gray background
    a large blue star above a small yellow square on a striped black background
    a small red circle above a large blue square

One caption in five leaves the background out (the picture still has one), so that
prompts written without it, as in the README, are in the training distribution.
Three-shape scenes ("..., ... and ... from left to right") can still be drawn with
``sample_scene(rng, n_shapes=3)`` but are no longer part of the splits: the demo
models are asked to follow captions of up to two shapes, and the small denoisers
learn those better without them.

`sample_scene(rng)` draws the attributes, `render(scene, rng)` draws the image
(4x supersampled, so edges are anti-aliased) and returns per-shape masks as well,
`parse_caption(caption)` decodes a caption back into attributes (used by tests).
Item ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split, i])``,
so any item can be regenerated on its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 210, 40),
    "purple": (145, 60, 195),
    "orange": (245, 135, 25),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS = {
    "gray": (128, 128, 128),
    "white": (235, 235, 235),
    "black": (30, 30, 30),
    "beige": (215, 200, 160),
}
TEXTURES = ("plain", "striped", "checkered")
SIZES = {"small": (5.0, 7.0), "large": (10.0, 13.0)}
GRID_POSITIONS = {
    # name -> (x, y) centre in a 64x64 image
    "in the top left": (15, 15),
    "at the top": (32, 15),
    "in the top right": (49, 15),
    "on the left": (15, 32),
    "in the center": (32, 32),
    "on the right": (49, 32),
    "in the bottom left": (15, 49),
    "at the bottom": (32, 49),
    "in the bottom right": (49, 49),
}
RELATIONS = ("above", "below", "to the left of", "to the right of")
ORDERS = ("from left to right", "from top to bottom")
SPLIT_IDS = {"train": 0, "test": 1, "val": 2}
SHAPE_COUNT_SPLIT = 0.45     # P(one shape); two shapes otherwise
UNNAMED_BACKGROUND = 0.2     # P(the caption leaves the background out)


@dataclass
class Shape:
    kind: str
    color: str
    size: str
    x: float  # centre, pixels
    y: float
    radius: float  # pixels (half the extent of the shape)


@dataclass
class Scene:
    shapes: list[Shape]
    background: str
    texture: str
    layout: str  # grid position (1 shape), relation (2 shapes) or order (3 shapes)
    caption: str = ""
    named_background: bool = True  # whether the caption names the background
    extra: dict = field(default_factory=dict)


def _phrase(s: Shape) -> str:
    return f"a {s.size} {s.color} {s.kind}"


def make_caption(scene: Scene) -> str:
    sh = scene.shapes
    if len(sh) == 1:
        body = f"{_phrase(sh[0])} {scene.layout}"
    elif len(sh) == 2:
        body = f"{_phrase(sh[0])} {scene.layout} {_phrase(sh[1])}"
    else:
        body = f"{_phrase(sh[0])}, {_phrase(sh[1])} and {_phrase(sh[2])} {scene.layout}"
    if not scene.named_background:
        return body
    bg = scene.background if scene.texture == "plain" else f"{scene.texture} {scene.background}"
    return f"{body} on a {bg} background"


def _choice(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _new_shape(rng, colors, x=0.0, y=0.0) -> Shape:
    size = _choice(rng, tuple(SIZES))
    lo, hi = SIZES[size]
    return Shape(
        kind=_choice(rng, SHAPES),
        color=_choice(rng, colors),
        size=size,
        x=x,
        y=y,
        radius=float(rng.uniform(lo, hi)),
    )


def sample_scene(rng: np.random.Generator, n_shapes: int | None = None) -> Scene:
    """Draw the attributes of one scene (shapes, colours, sizes, layout, background).

    ``n_shapes`` forces the number of shapes (1, 2 or 3) without changing the other draws.
    """
    background = _choice(rng, tuple(BACKGROUNDS))
    texture = _choice(rng, TEXTURES) if rng.random() < 0.4 else "plain"
    # a shape never has the colour of the background it sits on
    colors = tuple(c for c in COLORS if c != background)
    u = rng.random()
    n = n_shapes or (1 if u < SHAPE_COUNT_SPLIT else 2)
    shapes = [_new_shape(rng, colors) for _ in range(n)]
    if n == 2:  # two shapes of the same kind and colour would make the caption ambiguous
        while (shapes[1].kind, shapes[1].color) == (shapes[0].kind, shapes[0].color):
            shapes[1] = _new_shape(rng, colors)
    jit = lambda: float(rng.uniform(-2.5, 2.5))  # noqa: E731
    if n == 1:
        layout = _choice(rng, tuple(GRID_POSITIONS))
        gx, gy = GRID_POSITIONS[layout]
        s = shapes[0]
        # keep the shape inside the image
        s.x = float(np.clip(gx + jit(), s.radius + 1, IMAGE_SIZE - 1 - s.radius))
        s.y = float(np.clip(gy + jit(), s.radius + 1, IMAGE_SIZE - 1 - s.radius))
    elif n == 2:
        layout = _choice(rng, RELATIONS)
        a, b = shapes
        # along the relation's axis: a gap that allows a little overlap now and then
        gap = (a.radius + b.radius) * float(rng.uniform(0.75, 1.35))
        span = IMAGE_SIZE - 2
        lo_a, lo_b = a.radius + 1, b.radius + 1
        free = span - lo_a - lo_b - gap
        if free < 0:
            gap += free
            free = 0.0
        start = lo_a + float(rng.uniform(0, free))
        first, second = start, start + gap  # first is the smaller coordinate
        cross_c = float(rng.uniform(24, 40))
        ca = float(np.clip(cross_c + jit(), a.radius + 1, IMAGE_SIZE - 1 - a.radius))
        cb = float(np.clip(cross_c + jit(), b.radius + 1, IMAGE_SIZE - 1 - b.radius))
        if layout in ("above", "to the left of"):
            pa, pb = first, second
        else:
            pa, pb = second, first
        if layout in ("above", "below"):
            a.x, a.y, b.x, b.y = ca, pa, cb, pb
        else:
            a.x, a.y, b.x, b.y = pa, ca, pb, cb
    else:
        layout = _choice(rng, ORDERS)
        # three slots along the axis, each shape centred in its slot
        cross_c = float(rng.uniform(20, 44))
        for k, s in enumerate(shapes):
            along = 11 + 21 * k + jit()
            across = float(np.clip(cross_c + jit(), s.radius + 1, IMAGE_SIZE - 1 - s.radius))
            if layout == "from left to right":
                s.x, s.y = along, across
            else:
                s.x, s.y = across, along
    named = bool(rng.random() >= UNNAMED_BACKGROUND)
    scene = Scene(shapes=shapes, background=background, texture=texture, layout=layout, named_background=named)
    scene.caption = make_caption(scene)
    return scene


def _shape_polygon(kind: str, x: float, y: float, r: float, rot: float):
    if kind == "square":
        h = r * 0.9
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if kind == "triangle":
        return [(x + r * math.cos(rot + a), y + r * math.sin(rot + a) + r * 0.15)
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if kind == "diamond":
        return [(x, y - r), (x + r * 0.75, y), (x, y + r), (x - r * 0.75, y)]
    if kind == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5 + rot
            pts.append((x + rr * math.cos(a), y + rr * math.sin(a)))
        return pts
    if kind == "cross":
        w = r * 0.36
        return [(x - w, y - r), (x + w, y - r), (x + w, y - w), (x + r, y - w), (x + r, y + w),
                (x + w, y + w), (x + w, y + r), (x - w, y + r), (x - w, y + w), (x - r, y + w),
                (x - r, y - w), (x - w, y - w)]
    raise ValueError(kind)


def shape_mask(shape: Shape, size: int = IMAGE_SIZE) -> np.ndarray:
    """Anti-aliased coverage (float32 in [0, 1], shape (size, size)) of one shape."""
    ss = SUPERSAMPLE
    im = Image.new("L", (size * ss, size * ss), 0)
    d = ImageDraw.Draw(im)
    x, y, r = shape.x * ss, shape.y * ss, shape.radius * ss
    if shape.kind == "circle":
        d.ellipse([x - r, y - r, x + r, y + r], fill=255)
    else:
        d.polygon(_shape_polygon(shape.kind, x, y, r, 0.0), fill=255)
    im = im.resize((size, size), Image.BOX)
    return np.asarray(im, dtype=np.float32) / 255.0


def _background(scene: Scene, rng: np.random.Generator, size: int) -> np.ndarray:
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if scene.texture != "plain":
        period = int(rng.integers(6, 11))
        yy, xx = np.mgrid[0:size, 0:size]
        if scene.texture == "striped":
            if rng.random() < 0.5:
                pat = (xx // (period // 2)) % 2
            else:
                pat = (yy // (period // 2)) % 2
        else:  # checkered
            pat = ((xx // period) + (yy // period)) % 2
        sign = 1.0 if base.mean() < 128 else -1.0
        img += sign * 38.0 * pat[..., None]
    # a gentle brightness gradient, so backgrounds are not flat
    g = rng.uniform(-12, 12, size=2)
    lin = np.linspace(-1, 1, size, dtype=np.float32)
    img += (g[0] * lin[None, :, None] + g[1] * lin[:, None, None])
    return img


def render(scene: Scene, rng: np.random.Generator | None = None, size: int = IMAGE_SIZE):
    """Draw `scene`. Returns ``(image uint8 (size, size, 3), masks float32 (n, size, size))``.

    Shapes are painted in caption order, later ones on top (they may overlap a little).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    img = _background(scene, rng, size)
    masks = []
    for s in scene.shapes:
        m = shape_mask(s, size)
        col = np.array(COLORS[s.color], dtype=np.float32)
        shade = rng.uniform(-10, 10)  # small per-shape tint
        img = img * (1 - m[..., None]) + (col + shade) * m[..., None]
        masks.append(m)
    img += rng.normal(0, 2.5, size=img.shape)  # sensor-like noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), np.stack(masks)


def make_item(index: int, seed: int = 0, split: str = "train"):
    """Item `index` of a split: ``(image uint8 HxWx3, caption, scene, masks)``."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    scene = sample_scene(rng)
    image, masks = render(scene, rng)
    return image, scene.caption, scene, masks


def generate(n: int, seed: int = 0, split: str = "train", start: int = 0):
    """``n`` items as ``(images uint8 (n, 64, 64, 3), captions list[str], scenes list[Scene])``."""
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions, scenes = [], []
    for k in range(n):
        image, caption, scene, _ = make_item(start + k, seed, split)
        images[k] = image
        captions.append(caption)
        scenes.append(scene)
    return images, captions, scenes


def caption_words() -> list[str]:
    """Every word a caption can contain (the tokenizer's vocabulary)."""
    words = set("a on background and".split())
    words |= set(SHAPES) | set(COLORS) | set(BACKGROUNDS) | set(TEXTURES) | set(SIZES)
    for phrase in (*GRID_POSITIONS, *RELATIONS, *ORDERS):
        words |= set(phrase.split())
    return sorted(words)


_SHAPE_RE = r"a (small|large) (\w+) (\w+)"


def parse_caption(caption: str) -> dict:
    """Decode a caption into ``{"shapes": [(size, color, kind), ...], "layout", "background", "texture"}``
    (``background`` and ``texture`` are None when the caption does not name them)."""
    m = re.fullmatch(r"(.*) on a (?:(striped|checkered) )?(\w+) background", caption)
    if m:
        body, texture, background = m.group(1), m.group(2) or "plain", m.group(3)
    else:
        body, texture, background = caption, None, None
    shapes = [tuple(t) for t in re.findall(_SHAPE_RE, body)]
    if not shapes:
        raise ValueError(f"not a caption of this dataset: {caption!r}")
    rest = re.sub(_SHAPE_RE, "#", body)
    if len(shapes) == 1:
        layout = rest.replace("#", "").strip()
    elif len(shapes) == 2:
        layout = rest.replace("#", "").strip()
    else:
        layout = rest.replace("#, # and #", "").strip()
    return {"shapes": shapes, "layout": layout, "background": background, "texture": texture}


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image)
