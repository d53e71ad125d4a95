"""Train the embedded demo models on the procedural shapes dataset (CPU, no downloads).

Stages, in dependency order (each writes ``<out>/<name>/`` with ``save_pretrained``)::

    python -m accelerate_diffusion.demo.train clip   # CLIPModel + tokenizer  -> clip/
    python -m accelerate_diffusion.demo.train vae    # AutoencoderKL          -> vae/
    python -m accelerate_diffusion.demo.train unet   # UNet2DConditionModel   -> unet/ (+ scheduler)
    python -m accelerate_diffusion.demo.train dit    # SD3Transformer2DModel  -> dit/  (+ scheduler)

Everything is seeded; with the same ``--steps`` a run is repeatable. ``--max-minutes``
is a wall-clock cap (the step count actually reached is written to the loss log, so
the run can be repeated exactly with ``--steps``). The diffusion stages keep an EMA of
the weights and save it. Weights are stored as fp16 safetensors; a loss log
(``train_log.json``, one entry per ``--log-every`` steps) goes next to them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

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

WEIGHTS_DIR = Path(__file__).parent / "weights"
CACHE_DIR = Path(os.environ.get("DEMO_CACHE", "/tmp/accelerate_diffusion_demo_cache"))


def seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_images(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """The training split (cached on disk: rendering is deterministic anyway)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"train_{seed}_{n}.npz"
    if path.exists():
        d = np.load(path, allow_pickle=False)
        return d["images"], [str(c) for c in d["captions"]]
    images, captions, _ = ds.generate(n, seed=seed, split="train")
    np.savez(path, images=images, captions=np.array(captions))
    return images, captions


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class Logger:
    def __init__(self, out: Path, args):
        self.path = out / "train_log.json"
        self.data = {"args": vars(args), "log": []}
        if getattr(args, "resume", False) and self.path.exists():
            prev = json.loads(self.path.read_text())
            self.data["previous_runs"] = prev.pop("previous_runs", []) + [prev]
        self.t0 = time.time()

    def add(self, step: int, **vals):
        self.data["log"].append({"step": step, "time_s": round(time.time() - self.t0, 1), **vals})

    def finish(self, **vals):
        self.data.update(vals, train_time_s=round(time.time() - self.t0, 1))
        self.path.write_text(json.dumps(self.data, indent=1))


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


def _maybe_resume(args, model, out: Path):
    """With --resume, continue from the weights saved in `out` (optimizer state restarts)."""
    if not args.resume:
        return model
    loaded = type(model).from_pretrained(out, torch_dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    print(f"resumed {type(model).__name__} from {out}", flush=True)
    return model


def lr_at(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / warmup)


def loop(args, out: Path, model, params, loss_fn, ema: EMA | None = None, save_fn=None):
    """Generic training loop: AdamW, linear warmup then constant LR, grad clipping,
    a time cap, a loss log and periodic saving."""
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    log = Logger(out, args)
    gen = torch.Generator().manual_seed(args.seed)
    deadline = time.time() + args.max_minutes * 60 if args.max_minutes else None
    run = 0.0
    bar = tqdm(range(args.steps), desc=args.stage, mininterval=5)
    step = 0
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.lr, args.warmup)
        loss = loss_fn(step, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if ema is not None:
            ema.update(model, step)
        lv = float(loss)
        run = lv if step == 0 else 0.98 * run + 0.02 * lv
        bar.set_postfix(loss=f"{run:.4f}")
        if step % args.log_every == 0 or step == args.steps - 1:
            log.add(step, loss=lv, loss_smooth=run)
        if save_fn is not None and step > 0 and step % args.save_every == 0:
            save_fn(ema.model if ema is not None else model)
            log.finish(steps_done=step + 1)
        if deadline is not None and time.time() > deadline:
            print(f"time cap reached after {step + 1} steps", flush=True)
            break
    if save_fn is not None:
        save_fn(ema.model if ema is not None else model)
    log.finish(steps_done=step + 1)
    return step + 1


# ---------------------------------------------------------------- CLIP


def train_clip(args):
    out = Path(args.out) / "clip"
    out.mkdir(parents=True, exist_ok=True)
    images, captions = train_images(args.n_images, args.data_seed)
    tok = build_tokenizer()
    ids = tok(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    pix = to_tensor(images)
    model = _maybe_resume(args, new_clip(len(tok)), out).train()

    def loss_fn(step, gen):
        idx = torch.randint(0, len(captions), (args.batch,), generator=gen)
        return model(input_ids=ids[idx], pixel_values=pix[idx], return_loss=True).loss

    def save(m):
        save_fp16(m, out)
        tok.save_pretrained(out)

    loop(args, out, model, list(model.parameters()), loss_fn, save_fn=save)


# ---------------------------------------------------------------- VAE


def train_vae(args):
    out = Path(args.out) / "vae"
    out.mkdir(parents=True, exist_ok=True)
    images, _ = train_images(args.n_images, args.data_seed)
    pix = to_tensor(images)
    model = _maybe_resume(args, new_vae(), out).train()

    def loss_fn(step, gen):
        idx = torch.randint(0, len(pix), (args.batch,), generator=gen)
        x = pix[idx]
        post = model.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = model.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + args.kl_weight * kl

    def save(m):
        m = copy.deepcopy(m).eval()
        # latent statistics -> scaling / shift factors (SD uses scale only, SD3 both)
        with torch.no_grad():
            zs = torch.cat([m.encode(pix[i : i + 256]).latent_dist.mean for i in range(0, 1024, 256)])
        mean, std = float(zs.mean()), float(zs.std())
        m.register_to_config(scaling_factor=round(1.0 / std, 5), shift_factor=round(mean, 5))
        save_fp16(m, out)

    loop(args, out, model, list(model.parameters()), loss_fn, save_fn=save)


# ---------------------------------------------------------------- diffusion data


@torch.no_grad()
def diffusion_data(args):
    """Latents (VAE posterior mean, raw) and frozen text features for the training split."""
    from diffusers import AutoencoderKL
    from transformers import CLIPModel

    wd = Path(args.out)
    cache = CACHE_DIR / f"diffusion_{args.data_seed}_{args.n_images}.pt"
    vae = AutoencoderKL.from_pretrained(wd / "vae", torch_dtype=torch.float32).eval()
    clip = CLIPModel.from_pretrained(wd / "clip", torch_dtype=torch.float32).eval()
    tok = build_tokenizer()
    if cache.exists() and cache.stat().st_mtime > max((wd / "vae").stat().st_mtime, (wd / "clip").stat().st_mtime):
        return torch.load(cache), vae
    images, captions = train_images(args.n_images, args.data_seed)
    lat = []
    for i in tqdm(range(0, len(images), 256), desc="encode latents", mininterval=5):
        lat.append(vae.encode(to_tensor(images[i : i + 256])).latent_dist.mean)
    te = text_encoder_from_clip(clip, with_projection=True).float()
    caps = captions + [""]  # the last one: the empty prompt (classifier-free guidance)
    last, penult, pooled = [], [], []
    for i in tqdm(range(0, len(caps), 512), desc="encode text", mininterval=5):
        ids = tok(caps[i : i + 512], padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
        o = te(ids, output_hidden_states=True)
        last.append(o.last_hidden_state.half())
        penult.append(o.hidden_states[-2].half())
        pooled.append(o.text_embeds.half())
    data = {
        "latents": torch.cat(lat),
        "last": torch.cat(last),
        "penult": torch.cat(penult),
        "pooled": torch.cat(pooled),
    }
    torch.save(data, cache)
    return data, vae


def _cond_index(n: int, batch: int, drop: float, gen) -> torch.Tensor:
    idx = torch.randint(0, n, (batch,), generator=gen)
    drop_mask = torch.rand(batch, generator=gen) < drop
    return idx, torch.where(drop_mask, torch.full_like(idx, n), idx)  # n = the empty prompt


def train_unet(args):
    out = Path(args.out) / "unet"
    out.mkdir(parents=True, exist_ok=True)
    data, vae = diffusion_data(args)
    z0_all = data["latents"] * vae.config.scaling_factor  # SD: no shift
    n = len(z0_all)
    sched = ddpm_train_scheduler()
    acp = sched.alphas_cumprod
    model = _maybe_resume(args, new_unet(), out).train()
    ema = EMA(model, args.ema)

    def loss_fn(step, gen):
        idx, cidx = _cond_index(n, args.batch, args.cfg_drop, gen)
        z0 = z0_all[idx]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        pred = model(zt, t, encoder_hidden_states=data["last"][cidx].float()).sample
        return F.mse_loss(pred, noise)

    def save(m):
        save_fp16(m, out)
        ddim_scheduler().save_pretrained(out / "scheduler")

    loop(args, out, model, list(model.parameters()), loss_fn, ema=ema, save_fn=save)


def train_dit(args):
    out = Path(args.out) / "dit"
    out.mkdir(parents=True, exist_ok=True)
    data, vae = diffusion_data(args)
    z0_all = (data["latents"] - vae.config.shift_factor) * vae.config.scaling_factor  # SD3 convention
    n = len(z0_all)
    model = _maybe_resume(args, new_dit(), out).train()
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
        h = data["penult"][cidx].float()
        ctx = torch.cat([h, h, ], dim=-1)  # both CLIP slots hold the same encoder
        ctx = torch.cat([ctx, zero_tok.expand(args.batch, 1, -1)], dim=1)
        p = data["pooled"][cidx].float()
        pred = model(xt, encoder_hidden_states=ctx, pooled_projections=torch.cat([p, p], -1),
                     timestep=s.flatten() * 1000).sample
        return F.mse_loss(pred, noise - x0)

    def save(m):
        save_fp16(m, out)  # attention processors are not part of the saved model
        flow_scheduler().save_pretrained(out / "scheduler")

    loop(args, out, model, list(model.parameters()), loss_fn, ema=ema, save_fn=save)


DEFAULTS = {
    #        steps  batch  lr     warmup
    "clip": (1500, 64, 5e-4, 100),
    "vae": (1500, 16, 1e-3, 100),
    "unet": (4000, 32, 4e-4, 200),
    "dit": (6000, 32, 4e-4, 200),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=list(DEFAULTS))
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--n-images", type=int, default=20000)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=0.0)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--cfg-drop", type=float, default=0.1)
    p.add_argument("--resume", action="store_true", help="start from the weights already in --out")
    p.add_argument("--kl-weight", type=float, default=1e-3)
    args = p.parse_args(argv)
    steps, batch, lr, warmup = DEFAULTS[args.stage]
    args.steps = args.steps or steps
    args.batch = args.batch or batch
    args.lr = args.lr or lr
    args.warmup = args.warmup or warmup
    torch.set_num_threads(args.threads)
    seed_all(args.seed)
    {"clip": train_clip, "vae": train_vae, "unet": train_unet, "dit": train_dit}[args.stage](args)


if __name__ == "__main__":
    main()
