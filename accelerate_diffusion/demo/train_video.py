"""Train the demo autoregressive video model (``AnyFlowFARTransformer3DModel``) on moving-shape clips.

    python -m accelerate_diffusion.demo.train_video --out runs/weights --run-dir runs/ar_video [--max-minutes 60] [--resume]

Needs the demo ``clip`` and ``vae`` weights in ``--out``. Checkpoints, log, pause file and
time cap work as in `train` (shared loop). The clips (`video.make_clip`) are encoded once,
key frame by key frame, with the demo VAE and cached under ``$DEMO_CACHE`` (not committed).

Teacher forcing through the transformer's own training path (``kv_cache=None``): a window of
T key frames is split into chunks of 1 or 2 frames (uniform); FAR keeps the last ``full_chunk_limit``
chunks at full resolution (noisy copy + clean copy) and the earlier ones as clean compressed
context. Every noisy chunk gets its own flow-matching time ``s`` (logit-normal),
``x_s = (1 - s) x0 + s eps``, and the loss is ``|v - (eps - x0)|^2`` on the noisy chunks,
which is what ``FlowMapEulerDiscreteScheduler.step`` integrates (``x_r = x_t - (s_t - s_r) v``).
Clean context frames get a little Gaussian noise (still labelled t=0) so that the model
tolerates its own imperfect frames over long rollouts.

FlexAttention has no backward on CPU, so training swaps the causal self-attention processor
for `DenseMaskProcessor`: the same ``BlockMask`` evaluated densely and fed to SDPA (the same
function, tested against the flex path). Inference uses diffusers' processor unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import video
from .train import EMA, add_run_args, loop, save_fp16, seed_all

CACHE_DIR = Path(os.environ.get("DEMO_CACHE", "/tmp/accelerate_diffusion_demo_cache"))
NAME = "ar_video"


class DenseMaskProcessor:
    """FAR's causal self-attention with its BlockMask applied densely through SDPA (trainable on CPU).

    Only the training path (no KV cache) is handled; anything else goes to diffusers' processor.
    """

    def __init__(self):
        from diffusers.models.transformers.transformer_anyflow_far import AnyFlowCausalAttnProcessor

        self.fallback = AnyFlowCausalAttnProcessor()
        self._masks: dict[int, tuple] = {}

    def dense(self, block_mask, n: int) -> torch.Tensor:
        hit = self._masks.get(id(block_mask))
        if hit is None or hit[0] is not block_mask or hit[1].shape[0] != n:
            i = torch.arange(n)
            z = torch.zeros((), dtype=torch.long)
            hit = (block_mask, block_mask.mask_mod(z, z, i[:, None], i[None, :]))
            if len(self._masks) > 256:
                self._masks.clear()
            self._masks[id(block_mask)] = hit
        return hit[1]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 kv_cache=None, kv_cache_flag=None):
        from diffusers.models.transformers.transformer_anyflow_far import apply_rotary_emb

        if kv_cache is not None or encoder_hidden_states is not None:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, kv_cache,
                                 kv_cache_flag)

        def heads(x):
            return x.unflatten(2, (attn.heads, -1)).transpose(1, 2)

        q = heads(attn.norm_q(attn.to_q(hidden_states)).to(hidden_states.dtype))
        k = heads(attn.norm_k(attn.to_k(hidden_states)).to(hidden_states.dtype))
        v = heads(attn.to_v(hidden_states))
        q, k = apply_rotary_emb(q, rotary_emb["query"]), apply_rotary_emb(k, rotary_emb["key"])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense(attention_mask, q.shape[2]))
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def use_dense_attention(transformer) -> DenseMaskProcessor:
    proc = DenseMaskProcessor()
    for block in transformer.blocks:
        block.attn1.set_processor(proc)
    return proc


# ---------------------------------------------------------------- data


@torch.no_grad()
def clip_data(args, wd: Path):
    """Normalised key-frame latents (N, T, 4, 16, 16), caption embeddings as the pipeline makes
    them (N + 1, 32, 64; the last row is the empty prompt), and the adapter config."""
    from .loaders import load_clip, load_vae

    key = hashlib.sha1(str(wd.resolve()).encode()).hexdigest()[:8]  # one cache per weights folder
    cache = CACHE_DIR / f"video_v2_{key}_{args.data_seed}_{args.n_clips}_{args.clip_frames}.pt"
    newest = max((wd / n / "config.json").stat().st_mtime for n in ("vae", "clip"))
    if cache.exists() and cache.stat().st_mtime > newest:
        return torch.load(cache)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    vae = load_vae(weights_dir=wd)
    clip, tok = load_clip(weights_dir=wd)
    lat, caps = [], []
    for i in tqdm(range(args.n_clips), desc="render + encode clips", mininterval=10):
        frames, cap = video.make_clip(i, args.data_seed, "train", frames=args.clip_frames)
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        lat.append(vae.encode(x).latent_dist.mean.half())
        caps.append(cap)
    raw = torch.stack(lat).float()                       # (N, T, 4, 16, 16)
    mean = raw.mean(dim=(0, 1, 3, 4))
    std = raw.std(dim=(0, 1, 3, 4))
    vae_config = dict(latents_mean=[round(float(m), 5) for m in mean], latents_std=[round(float(s), 5) for s in std])
    pipe = video.build_pipeline(video.new_transformer(), clip, tok, vae, vae_config)
    embeds = []
    for i in range(0, len(caps) + 1, 256):
        chunk = (caps + [""])[i : i + 256]
        e, _ = pipe.encode_prompt(chunk, do_classifier_free_guidance=False,
                                  max_sequence_length=video.MAX_SEQUENCE_LENGTH, device="cpu")
        embeds.append(e.half())
    data = {
        "latents": ((raw - mean.view(1, 1, -1, 1, 1)) / std.view(1, 1, -1, 1, 1)).half(),
        "embeds": torch.cat(embeds),
        "captions": caps,
        "vae_config": vae_config,
    }
    torch.save(data, cache)
    return data


def random_partition(frames: int, gen) -> list[int]:
    """Chunks of 1 frame or of 2 (half the time each; the last one may be shorter): the
    pipeline's usual uniform partitions, few enough that their masks are built once."""
    return video.partition(frames, 1 if torch.rand(1, generator=gen).item() < 0.5 else 2)


def train(args):
    out = Path(args.out) / NAME
    data = clip_data(args, Path(args.out))
    lat, emb = data["latents"], data["embeds"]
    n, t_max = lat.shape[:2]
    model = video.new_transformer().train()
    use_dense_attention(model)
    ema = EMA(model, args.ema)
    limit = model.config.full_chunk_limit
    masks: dict[tuple, object] = {}

    def loss_fn(step, gen):
        # window length: uniform, or (with probability short_frac) short enough that the first
        # chunks have no past frames to copy from: the text-only start of a rollout
        short = args.short_frac > 0 and torch.rand(1, generator=gen).item() < args.short_frac
        top = limit if short else min(args.max_frames, t_max)
        frames = int(torch.randint(1, top + 1, (1,), generator=gen))
        part = random_partition(frames, gen)
        n_comp_chunks = max(0, len(part) - limit)
        n_comp = sum(part[:n_comp_chunks])
        n_full = frames - n_comp
        idx = torch.randint(0, n, (args.batch,), generator=gen)
        start = torch.randint(0, t_max - frames + 1, (args.batch,), generator=gen)
        x0 = torch.stack([lat[i, s : s + frames] for i, s in zip(idx.tolist(), start.tolist())]).float()
        b = args.batch
        drop = torch.rand(b, generator=gen) < args.cfg_drop
        ctx = torch.where(drop.view(-1, 1, 1), emb[-1:].float(), emb[idx].float())
        # per noisy chunk: its own time s
        sig_chunk = torch.sigmoid(torch.randn(b, len(part) - n_comp_chunks, generator=gen) * args.sigma_std
                                  + args.sigma_mean)
        sig = torch.repeat_interleave(sig_chunk, torch.tensor(part[n_comp_chunks:]), dim=1)  # (b, n_full)
        s = sig.view(b, n_full, 1, 1, 1)
        eps = torch.randn(b, n_full, *x0.shape[2:], generator=gen)
        clean = x0[:, n_comp:]
        noisy = (1 - s) * clean + s * eps
        aug = torch.rand(b, 1, 1, 1, 1, generator=gen) * args.context_noise
        context = x0 + aug * torch.randn(x0.shape, generator=gen)
        hidden = torch.cat([context[:, :n_comp], noisy], 1)
        timestep = torch.cat([torch.zeros(b, n_comp), sig * 1000], 1)
        key = tuple(part)
        if key not in masks:
            masks[key] = model.build_attention_mask(chunk_partition=part, height=x0.shape[-2], width=x0.shape[-1],
                                                    has_clean_context=True)
        pred = model(hidden_states=hidden, timestep=timestep, r_timestep=timestep, encoder_hidden_states=ctx,
                     chunk_partition=part, clean_hidden_states=context[:, n_comp:], clean_timestep=torch.zeros(b, n_full),
                     attention_mask=masks[key], return_dict=False)[0]
        return F.mse_loss(pred, eps - clean)

    def save(m):
        save_fp16(m, out)
        video.new_scheduler().save_pretrained(out / "scheduler")
        video.DemoVideoVAE(**data["vae_config"]).save_config(out / "vae")

    loop(args, out, {NAME: model}, list(model.parameters()), loss_fn, ema=ema, save_fn=save)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--n-clips", type=int, default=3000)
    p.add_argument("--clip-frames", type=int, default=32, help="key frames rendered per training clip")
    p.add_argument("--max-frames", type=int, default=32, help="longest training window")
    p.add_argument("--short-frac", type=float, default=0.3, help="share of windows of <= full_chunk_limit frames")
    p.add_argument("--sigma-mean", type=float, default=0.0)
    p.add_argument("--sigma-std", type=float, default=1.0)
    p.add_argument("--context-noise", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--cfg-drop", type=float, default=0.1)
    args = p.parse_args(argv)
    args.stage = NAME
    args.run_dir = args.run_dir or f"demo-runs/{NAME}"
    if (Path(args.run_dir) / "DONE").exists():
        print(f"{NAME}: {args.run_dir}/DONE exists, nothing to do (delete it to train further)")
        return
    torch.set_num_threads(args.threads)
    seed_all(args.seed)
    train(args)


if __name__ == "__main__":
    main()
