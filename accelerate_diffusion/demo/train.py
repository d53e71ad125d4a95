"""Train the embedded demo models on the procedural shapes dataset (CPU, no downloads).

Stages, in dependency order (each writes ``<out>/<name>/`` with ``save_pretrained``)::

    python -m accelerate_diffusion.demo.train vae  --out runs/weights --run-dir runs/vae   # AutoencoderKL
    python -m accelerate_diffusion.demo.train clip --out runs/weights --run-dir runs/clip  # CLIPModel + tokenizer
    python -m accelerate_diffusion.demo.train dit  --out runs/weights --run-dir runs/dit   # SD3Transformer2DModel
    python -m accelerate_diffusion.demo.train unet --out runs/weights --run-dir runs/unet  # UNet2DConditionModel

(the video model: `train_video`). The diffusion stages read ``<out>/vae`` and ``<out>/clip``.

Long runs on a shared CPU: ``--run-dir`` holds ``checkpoint.pt`` (model, EMA, optimizer,
step, CPU time, random states; written every ``--ckpt-minutes``) and ``train.log``;
``--resume`` continues from it, and a finished stage writes ``DONE`` there and skips
itself when started again. While the file ``--pause-file`` exists the loop sleeps (other
jobs time benchmarks meanwhile); paused time does not count. A run ends at ``--steps``
or after ``--max-minutes`` of CPU time (so the load of a shared machine changes how long
a run takes, not how much it trains), whichever comes first; the learning rate warms up,
then follows a cosine to 10% over that same progress (so a time-capped run still anneals).
Weights go to ``<out>/<name>/`` as fp16 safetensors with ``train_log.json`` (arguments,
loss curve, steps done); copy a finished folder into ``accelerate_diffusion/demo/weights/``
to ship it. Everything is seeded; only the time cap makes a run depend on the machine.

What each stage optimises (why: prompt following, see the demo README):
- vae: MSE + L1 + an L1 on 4x4-pooled colours (colour fidelity) + a small KL, shape pixels
  weighted 5x; random 32 px crops (4x cheaper) for the first 80% of the run, whole images after;
- clip: the CLIP contrastive loss with one hard negative caption per image (the caption with
  two colours, the relation, a colour, shape, size or position changed) plus attribute heads:
  the pooled text and image embeddings must each predict every caption attribute, and the
  text tower's per-token states at each shape word must predict that shape's colour and
  size (what the denoisers read); the heads are discarded after training;
- unet / dit: epsilon (min-SNR-5 weighted) / rectified-flow velocity, EMA, 10% empty captions
  for classifier-free guidance, text features computed on the fly by the frozen text tower.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import dataset as ds
from .models import (
    ZeroTokenBiasProcessor,
    ddim_scheduler,
    ddpm_train_scheduler,
    flow_scheduler,
    new_clip,
    new_dit,
    new_unet,
    new_vae,
    text_encoder_from_clip,
    zero_token_bias,
)
from .tokenizer import MAX_LENGTH, build_tokenizer

CACHE_DIR = Path(os.environ.get("DEMO_CACHE", "/tmp/accelerate_diffusion_demo_cache"))
PAUSE_FILE = os.environ.get("DEMO_PAUSE_FILE", "PAUSE_TRAINING")


def seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_images(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """The training split (cached on disk: rendering is deterministic anyway)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"train_v2_{seed}_{n}.npz"
    if path.exists():
        d = np.load(path, allow_pickle=False)
        return d["images"], [str(c) for c in d["captions"]]
    images, captions, _ = ds.generate(n, seed=seed, split="train")
    np.savez(path, images=images, captions=np.array(captions))
    return images, captions


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def save_fp16(model, out: Path):
    m = copy.deepcopy(model).to(torch.float16)
    m.save_pretrained(out, safe_serialization=True)


class EMA:
    def __init__(self, model, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model, step: int):
        d = min(self.decay, (1 + step) / (10 + step))
        for pe, p in zip(self.model.parameters(), model.parameters()):
            pe.lerp_(p.detach(), 1 - d)


def lr_at(progress: float, step: int, base: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then a cosine from `base` to `base / 10` over `progress` in [0, 1]."""
    cos = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return base * min(1.0, (step + 1) / warmup) * cos


def wait_while_paused(pause_file: str, log=print, poll: float = 5.0) -> float:
    """Sleep while `pause_file` exists (checking every `poll` s); returns the seconds slept."""
    if not os.path.exists(pause_file):
        return 0.0
    t = time.time()
    log(f"paused ({pause_file} exists)")
    while os.path.exists(pause_file):
        time.sleep(poll)
    log(f"resumed after {time.time() - t:.0f} s")
    return time.time() - t


def loop(args, out: Path, modules: dict, params, loss_fn, ema: EMA | None = None, save_fn=None) -> int:
    """Resumable training loop: AdamW, warmup + cosine LR, grad clipping, EMA, a step and
    CPU-time cap, pause file, checkpoints every few minutes, a log file and a loss log.

    `modules` are the trained modules (all are checkpointed; the first is the model that
    `save_fn` exports, its EMA copy when `ema` is given). `loss_fn(step, gen)` returns the
    loss, or ``(loss, {name: float})`` for extra figures to log; ``args.progress`` (0 -> 1,
    by steps or CPU time, whichever is further) is set before each call.
    """
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    logf = open(run_dir / "train.log", "a")

    def log(msg: str):
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {args.stage}: {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    model = next(iter(modules.values()))
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    state = {"step": 0, "compute_s": 0.0, "wall_s": 0.0, "log": [], "smooth": None, "runs": []}
    ckpt = run_dir / "checkpoint.pt"
    if args.resume and ckpt.exists():
        c = torch.load(ckpt, weights_only=False)
        for name, m in modules.items():
            m.load_state_dict(c["modules"][name])
        opt.load_state_dict(c["opt"])
        if ema is not None:
            ema.model.load_state_dict(c["ema"])
        gen.set_state(c["gen"])
        torch.set_rng_state(c["torch_rng"])
        state = c["state"]
        log(f"resumed from {ckpt} at step {state['step']} ({state['compute_s'] / 60:.1f} min of compute)")
    state["runs"].append({"args": {k: v for k, v in vars(args).items()}, "start_step": state["step"]})
    budget = args.max_minutes * 60 if args.max_minutes else float("inf")
    export = lambda: ema.model if ema is not None else model  # noqa: E731

    def write_log():
        (out).mkdir(parents=True, exist_ok=True)
        (out / "train_log.json").write_text(json.dumps(
            {"args": vars(args), "steps_done": state["step"], "train_time_s": round(state["compute_s"], 1),
             "wall_time_s": round(state["wall_s"], 1), "runs": state["runs"], "log": state["log"]}, indent=1))

    def checkpoint():
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"modules": {n: m.state_dict() for n, m in modules.items()}, "opt": opt.state_dict(),
                    "ema": ema.model.state_dict() if ema is not None else None, "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "state": state}, tmp)
        os.replace(tmp, ckpt)
        if save_fn is not None:
            save_fn(export())
        write_log()

    log(f"start: step {state['step']}/{args.steps}, budget {args.max_minutes or 'none'} min, lr {args.lr}, "
        f"batch {args.batch}, {sum(p.numel() for p in params) / 1e6:.2f} M trained parameters")
    last_ckpt = time.time()
    while state["step"] < args.steps and state["compute_s"] < budget:
        wait_while_paused(args.pause_file, log)
        t, t_wall = time.process_time(), time.time()  # CPU time: the budget buys the same training whatever the load
        step = state["step"]
        progress = max(step / args.steps, state["compute_s"] / budget)
        args.progress = progress  # loss functions may depend on it (the VAE's crop -> whole switch)
        lr = lr_at(progress, step, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        res = loss_fn(step, gen)
        loss, extra = res if isinstance(res, tuple) else (res, {})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if ema is not None:
            ema.update(model, step)
        lv = loss.item()
        state["smooth"] = lv if state["smooth"] is None else 0.98 * state["smooth"] + 0.02 * lv
        state["step"] = step + 1
        state["compute_s"] += time.process_time() - t
        state["wall_s"] += time.time() - t_wall
        if step % args.log_every == 0:
            entry = {"step": step, "cpu_s": round(state["compute_s"], 1), "lr": round(lr, 7), "loss": round(lv, 5),
                     "loss_smooth": round(state["smooth"], 5), **{k: round(float(v), 4) for k, v in extra.items()}}
            state["log"].append(entry)
            log(" ".join(f"{k}={v}" for k, v in entry.items()))
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            checkpoint()
            last_ckpt = time.time()
    checkpoint()
    (run_dir / "DONE").write_text(json.dumps({"steps": state["step"], "compute_s": round(state["compute_s"], 1)}))
    log(f"done: {state['step']} steps, {state['compute_s'] / 60:.1f} min of CPU, {state['wall_s'] / 60:.1f} min of wall time")
    return state["step"]


# ---------------------------------------------------------------- VAE


def train_vae(args):
    out = Path(args.out) / "vae"
    images, _ = train_images(args.n_images, args.data_seed)
    model = new_vae().train()

    def loss_fn(step, gen):
        # random crops (4x cheaper for a 32 px crop; the VAE is fully convolutional) until the
        # last `full_frac` of the steps, which use whole images so GroupNorm sees full-size statistics
        full = not args.crop or args.progress >= 1 - args.full_frac
        batch = args.batch // 2 if full and args.crop else args.batch
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x = to_tensor(images[idx.numpy()])
        if not full:
            c = args.crop
            oy, ox = (int(v) for v in torch.randint(0, ds.IMAGE_SIZE - c + 1, (2,), generator=gen))
            x = x[:, :, oy: oy + c, ox: ox + c]
        post = model.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = model.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        # shapes cover a small part of the picture: weight their pixels up (those far from
        # the picture's median colour, i.e. from the background)
        med = x.flatten(2).median(-1).values[..., None, None]
        w = 1 + args.object_weight * ((x - med).abs().amax(1, keepdim=True) > 0.3).float()
        err = rec - x
        colour = (F.avg_pool2d(err, 4).abs() * F.avg_pool2d(w, 4)).mean()
        loss = ((err ** 2 + 0.5 * err.abs()) * w).mean() + args.colour_weight * colour + args.kl_weight * kl
        return loss, {"colour_l1": colour.item(), "kl": kl.item()}

    def save(m):
        m = copy.deepcopy(m).eval()
        # latent statistics -> scaling / shift factors (SD uses scale only, SD3 both)
        with torch.no_grad():
            zs = torch.cat([m.encode(to_tensor(images[i: i + 256])).latent_dist.mean for i in range(0, 2048, 256)])
        mean, std = float(zs.mean()), float(zs.std())
        m.register_to_config(scaling_factor=round(1.0 / std, 5), shift_factor=round(mean, 5))
        save_fp16(m, out)

    loop(args, out, {"vae": model}, list(model.parameters()), loss_fn, save_fn=save)


# ---------------------------------------------------------------- CLIP

# caption attributes the CLIP heads predict: (name, number of classes); the last class of
# the second shape's and the background's groups means "none" / "not named"
ATTRIBUTES = (
    ("n_shapes", 2), ("color1", len(ds.COLORS)), ("shape1", len(ds.SHAPES)), ("size1", 2),
    ("color2", len(ds.COLORS) + 1), ("shape2", len(ds.SHAPES) + 1), ("size2", 3),
    ("layout", len(ds.GRID_POSITIONS) + len(ds.RELATIONS)), ("background", len(ds.BACKGROUNDS) + 1),
    ("texture", len(ds.TEXTURES) + 1),
)
_COLORS, _SIZES = list(ds.COLORS), list(ds.SIZES)
_LAYOUTS = list(ds.GRID_POSITIONS) + list(ds.RELATIONS)


def caption_attributes(caption: str) -> list[int]:
    """Class index of every `ATTRIBUTES` group for a one- or two-shape caption."""
    a = ds.parse_caption(caption)
    sh = a["shapes"]
    (z1, c1, k1), second = sh[0], (sh[1] if len(sh) > 1 else None)
    bg, tex = a["background"], a["texture"]
    return [
        len(sh) - 1, _COLORS.index(c1), ds.SHAPES.index(k1), _SIZES.index(z1),
        _COLORS.index(second[1]) if second else len(ds.COLORS),
        ds.SHAPES.index(second[2]) if second else len(ds.SHAPES),
        _SIZES.index(second[0]) if second else 2,
        _LAYOUTS.index(a["layout"]),
        list(ds.BACKGROUNDS).index(bg) if bg else len(ds.BACKGROUNDS),
        ds.TEXTURES.index(tex) if tex else len(ds.TEXTURES),
    ]


def hard_negative(caption: str, rng: np.random.Generator) -> str:
    """`caption` with one thing changed: the two shapes' colours or places swapped, the
    relation or position changed, or one colour, shape or size replaced."""
    a = ds.parse_caption(caption)
    shapes = [list(s) for s in a["shapes"]]
    layout = a["layout"]
    kinds = ["color", "shape", "size"]
    if len(shapes) == 2:
        kinds += ["swap_colors", "swap_order", "relation"] * 2
        if shapes[0][1] == shapes[1][1]:
            kinds.remove("swap_colors")
            kinds.remove("swap_colors")
    else:
        kinds += ["position"] * 2
    kind = kinds[int(rng.integers(len(kinds)))]
    k = int(rng.integers(len(shapes)))
    if kind == "color":
        shapes[k][1] = str(rng.choice([c for c in ds.COLORS if c not in (shapes[k][1], a["background"])]))
    elif kind == "shape":
        shapes[k][2] = str(rng.choice([s for s in ds.SHAPES if s != shapes[k][2]]))
    elif kind == "size":
        shapes[k][0] = "small" if shapes[k][0] == "large" else "large"
    elif kind == "swap_colors":
        shapes[0][1], shapes[1][1] = shapes[1][1], shapes[0][1]
    elif kind == "swap_order":
        shapes.reverse()
    elif kind == "relation":
        layout = str(rng.choice([r for r in ds.RELATIONS if r != layout]))
    else:
        layout = str(rng.choice([p for p in ds.GRID_POSITIONS if p != layout]))
    scene = ds.Scene(shapes=[ds.Shape(k_, c, z, 0.0, 0.0, 0.0) for z, c, k_ in shapes],
                     background=a["background"] or "gray", texture=a["texture"] or "plain", layout=layout,
                     named_background=a["background"] is not None)
    neg = ds.make_caption(scene)
    return neg if neg != caption else hard_negative(caption, rng)


def shape_word_positions(ids: torch.Tensor, tok) -> torch.Tensor:
    """(N, 2) token positions of the first and second shape word of each caption (0: none)."""
    shape_ids = torch.tensor([tok.convert_tokens_to_ids(s + "</w>") for s in ds.SHAPES])
    is_shape = torch.isin(ids, shape_ids)
    pos = torch.zeros(len(ids), 2, dtype=torch.long)
    for i, row in enumerate(is_shape):
        p = torch.nonzero(row).flatten()[:2]
        pos[i, : len(p)] = p
    return pos


class ClipHeads(torch.nn.Module):
    """Training-only heads: caption attributes from the pooled text and image embeddings,
    and each shape's colour and size from the text tower's states at its shape word
    (last layer: the UNet's input; the one before: the DiT's)."""

    def __init__(self, proj_dim: int, text_dim: int):
        super().__init__()
        total = sum(n for _, n in ATTRIBUTES)
        self.text = torch.nn.Linear(proj_dim, total)
        self.image = torch.nn.Linear(proj_dim, total)
        self.token_last = torch.nn.Linear(text_dim, len(ds.COLORS) + 2)
        self.token_penult = torch.nn.Linear(text_dim, len(ds.COLORS) + 2)

    @staticmethod
    def grouped_ce(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over the attribute groups, and the share of captions with every group right."""
        losses, right, o = [], torch.ones(len(target), dtype=torch.bool), 0
        for g, (_, n) in enumerate(ATTRIBUTES):
            lg = logits[:, o: o + n]
            losses.append(F.cross_entropy(lg, target[:, g]))
            right &= lg.argmax(-1) == target[:, g]
            o += n
        return torch.stack(losses).mean(), right.float().mean()

    @staticmethod
    def token_ce(head, hidden, pos, colour, size) -> torch.Tensor:
        """Colour and size of each shape from the hidden state at its shape word (pos 0: no shape)."""
        valid = pos > 0
        h = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))[valid]
        lg = head(h)
        nc = len(ds.COLORS)
        return F.cross_entropy(lg[:, :nc], colour[valid]) + F.cross_entropy(lg[:, nc:], size[valid])


def train_clip(args):
    out = Path(args.out) / "clip"
    images, captions = train_images(args.n_images, args.data_seed)
    tok = build_tokenizer()

    def ids_of(caps):
        return tok(caps, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids

    ids = ids_of(captions)
    rng = np.random.default_rng(args.data_seed + 1)
    neg_ids = ids_of([hard_negative(c, rng) for c in captions])  # one fixed hard negative per caption
    attrs = torch.tensor([caption_attributes(c) for c in captions])
    pos = shape_word_positions(ids, tok)
    tok_colour = torch.stack([attrs[:, 1], attrs[:, 4].clamp(max=len(ds.COLORS) - 1)], 1)
    tok_size = torch.stack([attrs[:, 3], attrs[:, 6].clamp(max=1)], 1)
    model = new_clip(len(tok)).train()
    heads = ClipHeads(model.config.projection_dim, model.config.text_config.hidden_size)

    def loss_fn(step, gen):
        idx = torch.randint(0, len(captions), (args.batch,), generator=gen)
        pix = to_tensor(images[idx.numpy()])
        txt_ids = torch.cat([ids[idx], neg_ids[idx]])
        t_out = model.text_model(input_ids=txt_ids, output_hidden_states=True)
        txt = model.text_projection(t_out.pooler_output)
        img = model.visual_projection(model.vision_model(pixel_values=pix).pooler_output)
        t_n, i_n = F.normalize(txt, dim=-1), F.normalize(img, dim=-1)
        logits = model.logit_scale.exp() * i_n @ t_n.T            # (B, 2B): true captions, then hard negatives
        target = torch.arange(args.batch)
        contrastive = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : args.batch].T, target))
        b = args.batch
        a_txt, full_txt = heads.grouped_ce(heads.text(txt[:b]), attrs[idx])
        a_img, full_img = heads.grouped_ce(heads.image(img), attrs[idx])
        hs = t_out.hidden_states
        a_tok = (heads.token_ce(heads.token_last, t_out.last_hidden_state[:b], pos[idx], tok_colour[idx], tok_size[idx])
                 + heads.token_ce(heads.token_penult, hs[-2][:b], pos[idx], tok_colour[idx], tok_size[idx]))
        loss = contrastive + args.aux_weight * (a_txt + a_img + a_tok)
        if args.text_batch:
            # more captions for the text heads alone: the text tower is cheap next to the image tower
            j = torch.randint(0, len(captions), (args.text_batch,), generator=gen)
            o = model.text_model(input_ids=ids[j], output_hidden_states=True)
            a_more = (heads.grouped_ce(heads.text(model.text_projection(o.pooler_output)), attrs[j])[0]
                      + heads.token_ce(heads.token_last, o.last_hidden_state, pos[j], tok_colour[j], tok_size[j])
                      + heads.token_ce(heads.token_penult, o.hidden_states[-2], pos[j], tok_colour[j], tok_size[j]))
            loss = loss + args.aux_weight * a_more
        hard = (logits[target, target] > logits[target, target + b]).float().mean()
        return loss, {"contrastive": contrastive.item(), "text_attr": a_txt.item(), "image_attr": a_img.item(),
                      "token_attr": a_tok.item(), "text_all_right": full_txt.item(), "image_all_right": full_img.item(),
                      "beats_hard_negative": hard.item()}

    def save(m):
        save_fp16(m, out)
        tok.save_pretrained(out)

    loop(args, out, {"clip": model, "heads": heads}, list(model.parameters()) + list(heads.parameters()), loss_fn,
         save_fn=save)


# ---------------------------------------------------------------- diffusion data


class TextFeatures:
    """The frozen demo text tower, run on the fly on token ids (cheap next to the denoiser)."""

    def __init__(self, wd: Path):
        from transformers import CLIPModel

        clip = CLIPModel.from_pretrained(wd / "clip", torch_dtype=torch.float32)
        self.encoder = text_encoder_from_clip(clip, with_projection=True).float().eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor):
        """``(last hidden state, penultimate hidden state, pooled projection)``."""
        o = self.encoder(ids, output_hidden_states=True)
        return o.last_hidden_state, o.hidden_states[-2], o.text_embeds


@torch.no_grad()
def diffusion_data(args):
    """VAE latents (posterior mean, raw) of the training split, the captions' token ids
    (the last row: the empty prompt, for classifier-free guidance) and the text tower."""
    from diffusers import AutoencoderKL

    wd = Path(args.out)
    vae = AutoencoderKL.from_pretrained(wd / "vae", torch_dtype=torch.float32).eval()
    images, captions = train_images(args.n_images, args.data_seed)
    key = hashlib.sha1(str(wd.resolve()).encode()).hexdigest()[:8]  # one cache per weights folder
    cache = CACHE_DIR / f"latents_v2_{key}_{args.data_seed}_{args.n_images}.pt"
    if cache.exists() and cache.stat().st_mtime > (wd / "vae" / "config.json").stat().st_mtime:
        latents = torch.load(cache)
    else:
        latents = torch.cat([vae.encode(to_tensor(images[i: i + 256])).latent_dist.mean
                             for i in range(0, len(images), 256)])
        torch.save(latents, cache)
    tok = build_tokenizer()
    ids = tok(captions + [""], padding="max_length", max_length=MAX_LENGTH, truncation=True,
              return_tensors="pt").input_ids
    return latents, ids, TextFeatures(wd), vae


def _cond_index(n: int, batch: int, drop: float, gen) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, n, (batch,), generator=gen)
    drop_mask = torch.rand(batch, generator=gen) < drop
    return idx, torch.where(drop_mask, torch.full_like(idx, n), idx)  # n = the empty prompt


def train_unet(args):
    out = Path(args.out) / "unet"
    latents, ids, text, vae = diffusion_data(args)
    z0_all = latents * vae.config.scaling_factor  # SD: no shift
    n = len(z0_all)
    sched = ddpm_train_scheduler()
    acp = sched.alphas_cumprod
    snr = acp / (1 - acp)
    model = new_unet().train()
    ema = EMA(model, args.ema)

    def loss_fn(step, gen):
        idx, cidx = _cond_index(n, args.batch, args.cfg_drop, gen)
        z0 = z0_all[idx]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        pred = model(zt, t, encoder_hidden_states=text(ids[cidx])[0]).sample
        w = snr[t].clamp(max=args.min_snr) / snr[t]  # min-SNR-gamma weighting (epsilon target)
        return ((pred - noise) ** 2).mean(dim=(1, 2, 3)).mul(w).mean()

    def save(m):
        save_fp16(m, out)
        ddim_scheduler().save_pretrained(out / "scheduler")

    loop(args, out, {"unet": model}, list(model.parameters()), loss_fn, ema=ema, save_fn=save)


def train_dit(args):
    out = Path(args.out) / "dit"
    latents, ids, text, vae = diffusion_data(args)
    z0_all = (latents - vae.config.shift_factor) * vae.config.scaling_factor  # SD3 convention
    n = len(z0_all)
    model = new_dit().train()
    # one zero "T5" token standing for the pipeline's 256 (see ZeroTokenBiasProcessor)
    n_img = (model.config.sample_size // model.config.patch_size) ** 2
    model.set_attn_processor(ZeroTokenBiasProcessor(zero_token_bias(n_img, MAX_LENGTH)))
    ema = EMA(model, args.ema)
    zero_tok = torch.zeros(1, 1, model.config.joint_attention_dim)

    def loss_fn(step, gen):
        idx, cidx = _cond_index(n, args.batch, args.cfg_drop, gen)
        x0 = z0_all[idx]
        noise = torch.randn(x0.shape, generator=gen)
        # logit-normal sigmas (as SD3), flow x_t = (1 - s) x0 + s noise, target noise - x0
        s = torch.sigmoid(torch.randn(args.batch, generator=gen)).view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        _, h, p = text(ids[cidx])
        ctx = torch.cat([h, h], dim=-1)  # both CLIP slots hold the same encoder
        ctx = torch.cat([ctx, zero_tok.expand(args.batch, 1, -1)], dim=1)
        pred = model(xt, encoder_hidden_states=ctx, pooled_projections=torch.cat([p, p], -1),
                     timestep=s.flatten() * 1000).sample
        return F.mse_loss(pred, noise - x0)

    def save(m):
        save_fp16(m, out)  # attention processors are not part of the saved model
        flow_scheduler().save_pretrained(out / "scheduler")

    loop(args, out, {"dit": model}, list(model.parameters()), loss_fn, ema=ema, save_fn=save)


DEFAULTS = {
    #        steps   batch  lr     warmup
    "vae": (20000, 32, 1e-3, 200),
    "clip": (20000, 128, 1e-3, 200),
    "unet": (60000, 64, 5e-4, 500),
    "dit": (60000, 64, 5e-4, 500),
}


def add_run_args(p: argparse.ArgumentParser, out_default: str = "demo-runs/weights"):
    """Arguments shared with `train_video`: output, run folder, caps, logging, pausing."""
    p.add_argument("--out", default=out_default, help="weights folder (one subfolder per model)")
    p.add_argument("--run-dir", default=None, help="checkpoint + log folder (default: demo-runs/<stage>)")
    p.add_argument("--resume", action="store_true", help="continue from --run-dir's checkpoint")
    p.add_argument("--max-minutes", type=float, default=0.0, help="CPU-time cap (0: none)")
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--pause-file", default=PAUSE_FILE, help="the loop sleeps while this file exists")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=0.01)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=list(DEFAULTS))
    add_run_args(p)
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--n-images", type=int, default=60000)
    p.add_argument("--ema", type=float, default=0.9995)
    p.add_argument("--cfg-drop", type=float, default=0.1)
    p.add_argument("--min-snr", type=float, default=5.0, help="unet: min-SNR-gamma loss weighting")
    p.add_argument("--kl-weight", type=float, default=5e-4)
    p.add_argument("--colour-weight", type=float, default=2.0, help="vae: L1 on 4x4-pooled colours")
    p.add_argument("--object-weight", type=float, default=4.0, help="vae: extra loss weight of shape pixels")
    p.add_argument("--crop", type=int, default=32, help="vae: train on random crops of this size (0: whole images)")
    p.add_argument("--full-frac", type=float, default=0.2, help="vae: last share of the run on whole images")
    p.add_argument("--aux-weight", type=float, default=0.5, help="clip: attribute heads")
    p.add_argument("--text-batch", type=int, default=256, help="clip: extra captions per step for the text heads")
    args = p.parse_args(argv)
    steps, batch, lr, warmup = DEFAULTS[args.stage]
    args.steps = args.steps or steps
    args.batch = args.batch or batch
    args.lr = args.lr or lr
    args.warmup = args.warmup or warmup
    args.run_dir = args.run_dir or f"demo-runs/{args.stage}"
    if (Path(args.run_dir) / "DONE").exists():
        print(f"{args.stage}: {args.run_dir}/DONE exists, nothing to do (delete it to train further)")
        return
    torch.set_num_threads(args.threads)
    seed_all(args.seed)
    {"clip": train_clip, "vae": train_vae, "unet": train_unet, "dit": train_dit}[args.stage](args)


if __name__ == "__main__":
    main()
