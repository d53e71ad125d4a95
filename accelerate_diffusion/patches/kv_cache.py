"""Temporal KV-cache compression for autoregressive video: TempCache.

Target: diffusers' ``AnyFlowFARPipeline``, which denoises a video chunk by chunk and keeps
a per-layer KV cache of the chunks already made. Each layer's self-attention processor is
swapped for one that attends to a bounded TempCache (``kernels/kv.py``) instead:

- when a chunk's keys enter the cache, each is matched to its nearest cached key (ANN on
  the keys with RoPE applied, ``kernels/ann.py``); pairs above ``merge_threshold`` merge
  (running-mean key/value, count m, logit bias log m through the SDPA additive mask);
- the cache is held within ``budget_frames`` frames' worth of tokens per layer, evicting
  the least-attended (or oldest) slots.

Three ways of filling it (``encode``):

- ``"incremental"`` (flat cost): the pipeline's ``encode_kv_cache``, which re-encodes the
  whole history after every chunk, is replaced (on the instance) by one pass of the new
  chunk at t=0 that attends to the TempCache and commits its keys. History is kept at full
  resolution (FAR's compressed-context branch is not used), so even with nothing merged
  it equals the pipeline only while FAR would not compress (``full_chunk_limit`` not hit).
- ``"compressed"`` (flat cost, FAR's own history): the cache step is replaced by a pass
  over a constant window: the chunk that leaves FAR's full-resolution window, encoded once
  through FAR's compressed patch embedding, and the (at most ``full_chunk_limit - 1``) full
  chunks, re-encoded each time as FAR does. FAR's cache step is chunk-causal, so a compressed
  chunk's keys never change once made: with nothing merged or evicted this equals the
  pipeline (up to float order) at a cost that does not grow with the video. The TempCache
  (merges, budget) holds the compressed history; the full chunks ride beside it.
- ``"pipeline"``: the pipeline's own cache step runs; the TempCache is rebuilt from its
  buffers once per chunk and the denoising steps attend to it. With no merge and no
  eviction the original processor runs: bit-identical output.

The processors reproduce the pipeline's attention exactly otherwise, including its
inference-path zero padding of keys to a multiple of 128 that is not masked (diffusers
0.42.1 behaviour; the cache-step path masks it, and so does the commit pass here).

SkyReels-V2 diffusion forcing (``SkyReelsV2Transformer3DModel``) re-runs every finished
frame of its window at each step; ``kv_cache_skyreels.py`` gives that history the same
TempCache and is dispatched from :func:`apply`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TechniqueConfig, check_choice, check_range
from ..kernels import ann, kv
from . import NotApplicable, PatchContext, PatchHandle, TechniqueHook, kv_cache_skyreels

NAME = "kv_cache"
HOOK = "accelerate_diffusion.kv_cache"
ENCODE = ("incremental", "compressed", "pipeline")


@dataclass
class Config(TechniqueConfig):
    """TempCache settings. ``merge_threshold`` > 1 never merges; ``budget_frames`` 0 is unlimited."""

    NAME = NAME
    merge_threshold: float = 0.95     # cosine similarity (mean over heads, min over batch) to merge
    budget_frames: float = 0.0        # cache cap per layer, in frames of full-resolution tokens
    evict: str = "attention"          # "attention" (least attended first) | "age" (oldest first)
    encode: str = "incremental"       # "incremental" | "compressed" (flat cost) | "pipeline" (FAR's re-encode)
    ann: str = "exact"                # "exact" (fastest at budget sizes, measured) | "proj" (projection + re-rank)
    ann_dim: int = 16                 # projection width for ann="proj"
    ann_candidates: int = 4           # candidates re-ranked exactly for ann="proj"
    mass_samples: int = 64            # queries sampled to estimate attention mass for eviction
    mass_decay: float = 0.8           # per-chunk decay of the accumulated attention mass
    cross_topk: int = 0               # AnnCA: prompt tokens retrieved per query block (0 = dense)
    cross_block: int = 8              # AnnCA: query tokens per block
    self_topk: int = 0                # AnnSA: cache key blocks retrieved per query block (0 = whole cache)
    self_block: int = 16              # AnnSA: tokens per query/key block

    def validate(self) -> None:
        check_range(NAME, "merge_threshold", self.merge_threshold, -1.0, 2.0)
        check_range(NAME, "budget_frames", self.budget_frames, 0.0)
        if 0 < self.budget_frames < 1:
            raise ValueError(f"{NAME}.budget_frames: {self.budget_frames!r} is out of range; allowed 0 "
                             f"(unlimited) or [1, inf)")
        check_choice(NAME, "evict", self.evict, kv.EVICTION)
        check_choice(NAME, "encode", self.encode, ENCODE)
        check_choice(NAME, "ann", self.ann, ann.METHODS)
        check_range(NAME, "ann_dim", self.ann_dim, 1, 4096, integer=True)
        check_range(NAME, "ann_candidates", self.ann_candidates, 1, 1024, integer=True)
        check_range(NAME, "mass_samples", self.mass_samples, 1, 1 << 20, integer=True)
        check_range(NAME, "mass_decay", self.mass_decay, 0.0, 1.0)
        check_range(NAME, "cross_topk", self.cross_topk, 0, 1 << 16, integer=True)
        check_range(NAME, "cross_block", self.cross_block, 1, 1 << 16, integer=True)
        check_range(NAME, "self_topk", self.self_topk, 0, 1 << 16, integer=True)
        check_range(NAME, "self_block", self.self_block, 1, 1 << 16, integer=True)
        if self.self_topk and self.encode != "incremental":
            raise ValueError(f"{NAME}.self_topk: AnnSA needs encode='incremental' (got {self.encode!r})")

    def insert_frames(self, slots: kv.Slots, k, v, frames) -> tuple[kv.Slots, int]:
        """Insert frame after frame (``frames``: (frame index, first token, token count) each)
        with this config's merge threshold and ANN; returns the slots and the merges."""
        merges = 0
        for frame, start, length in frames:
            slots, m = kv.insert(slots, k[:, :, start:start + length], v[:, :, start:start + length], frame,
                                 self.merge_threshold, self.ann, self.ann_dim, self.ann_candidates)
            merges += m
        return slots, merges

    def add_mass(self, slots: kv.Slots, q, keys, bias) -> None:
        """evict="attention": decay the slots' accumulated attention mass and add what ``q`` gives them."""
        if len(slots) and self.evict == "attention":
            seen = kv.attention_mass(q, keys, bias, len(slots), self.mass_samples)
            slots.mass = slots.mass * self.mass_decay + seen


class _Controller:
    """Shared state of one patched pipeline: the per-layer caches, geometry and statistics."""

    def __init__(self, config: Config, transformer, state=None):
        self.config = config
        self.transformer = transformer
        self.state = state                      # the pipeline's AccelerationState: in_call gates the processors
        self.slots: dict[int, kv.Slots] = {}
        self.built: dict[int, tuple] = {}       # pipeline mode: layer -> (cache step, chunks) built for
        self.cache_steps = 0
        self.committing = False
        self.in_cache_step = False
        self.chunk_partition: list[int] = []
        self.full_tpf = 0                       # full-resolution tokens per frame
        self.compressed_tpf = 0
        self.chunks: list[dict] = []            # row i: the cache once chunk i entered it
        self.counters: dict[str, int] = {}
        self.full: dict[int, tuple] = {}        # compressed mode: layer -> (k, v) of the full-resolution chunks
        self.compressed_chunks = 0              # compressed mode: chunks already in the TempCache
        self.window: dict | None = None         # compressed mode: the cache pass under way

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # geometry, from the transformer's arguments (pre-forward hook)
    def observe(self, kwargs) -> None:
        hidden = kwargs.get("hidden_states")
        flag = kwargs.get("kv_cache_flag") or {}
        cfg = self.transformer.config
        if hidden is not None:
            h, w = hidden.shape[-2:]
            self.full_tpf = (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
            self.compressed_tpf = (h // cfg.compressed_patch_size[1]) * (w // cfg.compressed_patch_size[2])
        self.chunk_partition = list(kwargs.get("chunk_partition") or [])
        self.in_cache_step = bool(flag.get("is_cache_step"))
        if self.in_cache_step:
            self.cache_steps += 1
        elif flag.get("num_cached_chunks") == 0 and not self.committing:
            self.reset()                        # first chunk of a new generation

    @property
    def budget(self) -> int:
        return int(round(self.config.budget_frames * self.full_tpf))

    def reset(self) -> None:
        self.slots.clear()
        self.built.clear()
        self.full.clear()
        self.compressed_chunks = 0
        self.chunks = []
        self.counters = {}

    def record(self, chunk: int, layer: int, merges: int, evictions: int) -> None:
        while len(self.chunks) <= chunk:
            self.chunks.append({"chunk": len(self.chunks), "cache_tokens": {}, "cache_bytes": 0,
                                "merges": 0, "evictions": 0})
        row = self.chunks[chunk]
        row["merges"] += merges
        row["evictions"] += evictions
        full = self.full.get(layer)
        row["cache_tokens"][layer] = len(self.slots[layer]) + (full[0].shape[2] if full else 0)
        row["cache_bytes"] = (sum(s.nbytes for s in self.slots.values())
                              + sum(k.nbytes + v.nbytes for k, v in self.full.values()))

    def details(self) -> dict:
        """Per chunk, the cache as it was once the chunk entered it (``cache_tokens`` per layer,
        merges, evictions); tokens per frame; the slots held now per layer; the counters."""
        return {"chunks": [dict(row) for row in self.chunks], "full_tokens_per_frame": self.full_tpf,
                "compressed_tokens_per_frame": self.compressed_tpf,
                "slots_per_layer": {layer: len(s) for layer, s in self.slots.items()},
                "counters": dict(self.counters)}

    def stats(self) -> dict:
        if not self.chunks:
            return {"chunks": 0, **self.counters}
        last = self.chunks[-1]
        return {**self.counters,
            "encode": self.config.encode,
            "chunks": len(self.chunks),
            "cache tokens per layer (last chunk)": sorted(set(last["cache_tokens"].values())),
            "budget tokens per layer": self.budget or "unlimited",
            "merges per chunk": [r["merges"] for r in self.chunks],
            "evictions per chunk": [r["evictions"] for r in self.chunks],
            "cache MiB (last chunk)": round(last["cache_bytes"] / 2 ** 20, 3),
        }


def _project(attn, hidden_states):
    """q, k, v in (B, H, L, D), as the pipeline's causal processor computes them."""
    dtype = hidden_states.dtype
    q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    q, k = q.to(dtype), k.to(dtype)
    return tuple(t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))


class TempCacheProcessor:
    """Self-attention over [TempCache slots, this chunk] with the log(m) bias; commits chunks."""

    def __init__(self, original, ctrl: _Controller, layer: int):
        self.original = original
        self.ctrl = ctrl
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None, kv_cache=None, kv_cache_flag=None):
        ctrl, cfg = self.ctrl, self.ctrl.config
        if not ctrl.state.in_call:      # another pipeline sharing the transformer
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb,
                                 kv_cache, kv_cache_flag)
        if ctrl.window is not None:
            return self._window(attn, hidden_states, rotary_emb)
        args = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                    rotary_emb=rotary_emb, kv_cache=kv_cache, kv_cache_flag=kv_cache_flag)
        if kv_cache is None or encoder_hidden_states is not None or kv_cache_flag["is_cache_step"]:
            return self.original(attn, hidden_states, **args)      # training path / FAR cache step
        from diffusers.models.transformers.transformer_anyflow_far import apply_rotary_emb

        chunks_before = kv_cache_flag["num_cached_chunks"]
        if cfg.encode == "pipeline":
            if chunks_before == 0:
                return self.original(attn, hidden_states, **args)
            changed = self._rebuild(attn, kv_cache, kv_cache_flag, rotary_emb, hidden_states, chunks_before)
            if not changed:
                return self.original(attn, hidden_states, **args)   # nothing merged or evicted
        q, k, v = _project(attn, hidden_states)
        lq = q.shape[2]
        q = apply_rotary_emb(q, rotary_emb["query"])
        k = apply_rotary_emb(k, rotary_emb["key"][:, :, -lq:])
        slots = ctrl.slots.get(self.layer)
        if slots is None or slots.k.shape[:2] != k.shape[:2] or (chunks_before == 0 and not ctrl.committing):
            slots = kv.Slots.empty(k)         # new generation (or batch changed): empty cache
            ctrl.slots[self.layer] = slots
        full_k, full_v = ctrl.full.get(self.layer, (k[:, :, :0], v[:, :, :0]))
        keys, values = torch.cat([slots.k, full_k, k], 2), torch.cat([slots.v, full_v, v], 2)
        bias = torch.cat([slots.bias(), slots.count.new_zeros(full_k.shape[2] + lq)])
        # The pipeline pads keys with zeros to a multiple of 128 and leaves them unmasked in the
        # denoising pass: equal keys, so they fold into one slot with a log(pad) bias, exactly.
        pad = 0 if ctrl.committing else -lq % 128
        if pad:
            keys = torch.cat([keys, keys.new_zeros(*keys.shape[:2], 1, keys.shape[3])], 2)
            values = torch.cat([values, values.new_zeros(*values.shape[:2], 1, values.shape[3])], 2)
            bias = torch.cat([bias, bias.new_full((1,), float(pad)).log()])
        if cfg.self_topk and len(slots) > cfg.self_topk * cfg.self_block:
            out = kv.block_retrieval_attention(q, keys, values, bias, len(slots), cfg.self_block, cfg.self_topk)
            ctrl.count("annsa_calls")
        else:
            out = kv.biased_attention(q, keys, values, bias)
        if ctrl.committing:
            self._commit(slots, q, k, v, keys, bias, chunks_before)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))

    # -- incremental mode: the new chunk enters the cache ------------------------------
    def _commit(self, slots, q, k, v, keys, bias, chunk):
        ctrl, cfg = self.ctrl, self.ctrl.config
        first, tpf = sum(ctrl.chunk_partition[:-1]), ctrl.full_tpf
        cfg.add_mass(slots, q, keys, bias)
        slots, merges = cfg.insert_frames(slots, k, v, [(first + i, i * tpf, tpf) for i in range(k.shape[2] // tpf)])
        slots, evicted = kv.evict(slots, ctrl.budget, cfg.evict, protect_from=first)
        ctrl.slots[self.layer] = slots
        ctrl.record(chunk, self.layer, merges, evicted)

    # -- compressed mode: the cache pass over the window --------------------------------
    def _window(self, attn, hidden_states, rotary_emb):
        """FAR's chunk-causal cache attention for the window's tokens over [TempCache, window];
        the newly compressed chunk enters the TempCache, the full chunks replace the last ones."""
        from diffusers.models.transformers.transformer_anyflow_far import apply_rotary_emb

        ctrl, cfg, w = self.ctrl, self.ctrl.config, self.ctrl.window
        q, k, v = _project(attn, hidden_states)
        q, k = apply_rotary_emb(q, rotary_emb["query"]), apply_rotary_emb(k, rotary_emb["key"])
        slots = ctrl.slots.get(self.layer)
        if slots is None or slots.k.shape[:2] != k.shape[:2]:
            slots = kv.Slots.empty(k)
        n, chunk = len(slots), w["token_chunk"]
        causal = torch.where(chunk[None, :] <= chunk[:, None], 0.0, float("-inf")).to(q.dtype)
        mask = torch.cat([slots.bias().to(q.dtype).expand(len(chunk), n), causal], 1)
        keys, values = torch.cat([slots.k, k], 2), torch.cat([slots.v, v], 2)
        out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask[None, None])
        cfg.add_mass(slots, q, keys, torch.cat([slots.bias(), slots.count.new_zeros(len(chunk))]))
        nc = w["compressed_tokens"]
        slots, merges = cfg.insert_frames(slots, k, v, w["compressed_frames"])
        first = w["compressed_frames"][0][0] if w["compressed_frames"] else None
        slots, evicted = kv.evict(slots, ctrl.budget, cfg.evict, protect_from=first)
        ctrl.slots[self.layer] = slots
        ctrl.full[self.layer] = (k[:, :, nc:], v[:, :, nc:])
        ctrl.record(w["chunk"], self.layer, merges, evicted)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))

    # -- pipeline mode: rebuild from the pipeline's buffers once per chunk -------------
    def _rebuild(self, attn, kv_cache, flag, rotary_emb, hidden_states, chunk) -> bool:
        from diffusers.models.transformers.transformer_anyflow_far import apply_rotary_emb

        ctrl, cfg = self.ctrl, self.ctrl.config
        key = (ctrl.cache_steps, chunk)
        if ctrl.built.get(self.layer, (None,))[0] == key:
            return ctrl.built[self.layer][1]
        nc, nf = flag["num_cached_compressed_tokens"], flag["num_cached_full_tokens"]
        cached_k = torch.cat([kv_cache["compressed_cache"][0, :, :, :nc], kv_cache["full_cache"][0, :, :, :nf]], 2)
        cached_v = torch.cat([kv_cache["compressed_cache"][1, :, :, :nc], kv_cache["full_cache"][1, :, :, :nf]], 2)
        cached_k = apply_rotary_emb(cached_k, rotary_emb["key"][:, :, : nc + nf])
        groups = [(i * ctrl.compressed_tpf, ctrl.compressed_tpf) for i in range(nc // max(ctrl.compressed_tpf, 1))]
        groups += [(nc + i * ctrl.full_tpf, ctrl.full_tpf) for i in range(nf // ctrl.full_tpf)]
        slots, merges = cfg.insert_frames(kv.Slots.empty(cached_k), cached_k, cached_v,
                                          [(frame, start, n) for frame, (start, n) in enumerate(groups)])
        evicted = 0
        if ctrl.budget and len(slots) > ctrl.budget:
            if cfg.evict == "attention":
                q, _, _ = _project(attn, hidden_states)
                q = apply_rotary_emb(q, rotary_emb["query"])
                slots.mass = kv.attention_mass(q, slots.k, slots.bias(), len(slots), cfg.mass_samples)
            slots, evicted = kv.evict(slots, ctrl.budget, cfg.evict)
        ctrl.slots[self.layer] = slots
        changed = bool(merges or evicted)
        ctrl.built[self.layer] = (key, changed)
        ctrl.record(chunk - 1, self.layer, merges, evicted)   # row i: the cache once chunk i is in
        return changed


class AnnCrossProcessor:
    """AnnCA: each frame attends only to the prompt tokens its query blocks retrieve (top-k, union)."""

    def __init__(self, original, ctrl: _Controller):
        self.original = original
        self.ctrl = ctrl

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
        ctrl, cfg = self.ctrl, self.ctrl.config
        tpf, length = ctrl.full_tpf, hidden_states.shape[1]
        if (not ctrl.state.in_call or attention_mask is not None or not tpf or length % tpf or ctrl.in_cache_step or ctrl.window is not None
                or cfg.cross_topk >= encoder_hidden_states.shape[1]):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask)
        q, k, v = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = kv.ann_cross_attention(q, k, v, tpf, cfg.cross_block, cfg.cross_topk)
        ctrl.count("annca_calls")
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def _encode_incremental(pipe, ctrl: _Controller):
    """Replacement for ``pipe.encode_kv_cache``: one t=0 pass of the finished chunk commits it."""

    def encode_kv_cache(kv_cache, kv_cache_flag, chunk_partition, chunk_idx, output, prompt_embeds,
                        negative_prompt_embeds):
        if kv_cache_flag["num_cached_chunks"] == 0:
            ctrl.reset()
        cfg_on = pipe.do_classifier_free_guidance
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if cfg_on else prompt_embeds
        start, end = sum(chunk_partition[:-1]), sum(chunk_partition)
        latents = output[:, start:end].to(pipe.transformer.dtype)
        latents = torch.cat([latents] * 2) if cfg_on else latents
        t = torch.zeros(latents.shape[:2], device=latents.device, dtype=torch.long)
        ctrl.committing = True
        try:
            pipe.transformer(hidden_states=latents, timestep=t, r_timestep=t, encoder_hidden_states=embeds,
                             chunk_partition=list(chunk_partition), attention_kwargs=pipe.attention_kwargs,
                             return_dict=False, kv_cache=kv_cache,
                             kv_cache_flag={"num_cached_chunks": kv_cache_flag["num_cached_chunks"],
                                            "is_cache_step": False})
        finally:
            ctrl.committing = False
        kv_cache_flag["num_cached_chunks"] += 1
        return kv_cache

    return encode_kv_cache


def _encode_compressed(pipe, ctrl: _Controller):
    """Replacement for ``pipe.encode_kv_cache`` in compressed mode: FAR's cache step restricted
    to the chunk leaving the full window (compressed once) and the full chunks."""

    def encode_kv_cache(kv_cache, kv_cache_flag, chunk_partition, chunk_idx, output, prompt_embeds,
                        negative_prompt_embeds):
        tr = pipe.transformer
        if kv_cache_flag["num_cached_chunks"] == 0:
            ctrl.reset()
        n = len(chunk_partition)
        n_comp = max(n - (tr.config.full_chunk_limit - 1), 0)     # as FAR's cache step splits them
        starts = [sum(chunk_partition[:i]) for i in range(n + 1)]
        f0, fc, f1 = starts[ctrl.compressed_chunks], starts[n_comp], starts[n]
        cfg_on = pipe.do_classifier_free_guidance
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if cfg_on else prompt_embeds
        latents = output[:, f0:f1].to(tr.dtype)
        latents = torch.cat([latents] * 2) if cfg_on else latents
        h, w = latents.shape[-2:]
        pc, pf = tr.config.compressed_patch_size, tr.config.patch_size
        shapes = {"full_frame_shape": (h // pf[1], w // pf[2]), "compressed_frame_shape": (h // pc[1], w // pc[2]),
                  "full_token_per_frame": ctrl.full_tpf, "compressed_token_per_frame": ctrl.compressed_tpf}
        window = {**shapes, "num_full_frames": f1 - fc, "num_compressed_frames": fc - f0}
        tokens = tr._forward_far_patchify(latents.permute(0, 2, 1, 3, 4), far_cfg=window)
        rope = tr.rope(far_cfg={**shapes, "total_frames": f1, "num_compressed_frames": fc}, device=tokens.device)
        rope = {name: f[:, :, -tokens.shape[1]:] for name, f in rope.items()}
        t = torch.zeros(latents.shape[:2], device=latents.device, dtype=torch.long)
        _, tproj, embeds, _ = tr.condition_embedder(t, t, embeds, None, far_cfg=window)
        tproj = tproj.unflatten(2, (6, -1))
        token_chunk, frames = [], []
        for c in range(ctrl.compressed_chunks, n):
            tpf = ctrl.compressed_tpf if c < n_comp else ctrl.full_tpf
            for f in range(starts[c], starts[c + 1]):
                if c < n_comp:
                    frames.append((f, len(token_chunk), tpf))
                token_chunk += [c] * tpf
        ctrl.window = {"token_chunk": torch.tensor(token_chunk, device=tokens.device), "chunk": n - 1,
                       "compressed_frames": frames, "compressed_tokens": (fc - f0) * ctrl.compressed_tpf}
        flag = {"num_cached_chunks": kv_cache_flag["num_cached_chunks"], "is_cache_step": False}
        outer, ctrl.state.in_call = ctrl.state.in_call, True     # the blocks run here, not via the transformer
        try:
            for i, block in enumerate(tr.blocks):
                tokens = block(tokens, embeds, tproj, rope, None, kv_cache[i], flag)
        finally:
            ctrl.window, ctrl.state.in_call = None, outer
        ctrl.compressed_chunks = n_comp
        kv_cache_flag["num_cached_chunks"] += 1
        return kv_cache

    return encode_kv_cache


class _ObserveHook(TechniqueHook):
    def __init__(self, ctrl: _Controller):
        super().__init__(ctrl.state)
        self.ctrl = ctrl

    def before(self, module, args, kwargs):
        self.ctrl.observe(kwargs)
        return False, None, args, kwargs, None


def apply(ctx: PatchContext, config: Config) -> PatchHandle:
    adapter = ctx.family.kv_cache
    if adapter == "skyreels":
        return kv_cache_skyreels.apply(ctx, config)      # diffusion forcing: history re-run each step
    if adapter != "far":
        raise NotApplicable(f"TempCache needs a chunk-wise KV-cached video transformer (the family table "
                            f"names its kv-cache adapter); {ctx.family.name} has none")
    if not callable(getattr(ctx.pipe, "encode_kv_cache", None)):
        raise NotApplicable(f"{type(ctx.pipe).__name__} has no encode_kv_cache(): not an AnyFlow-FAR rollout")
    denoiser = ctx.denoiser
    for i, block in enumerate(denoiser.blocks):
        if isinstance(block.attn1.processor, TempCacheProcessor):
            raise NotApplicable(f"blocks.{i}.attn1 already runs a TempCache (another pipeline sharing this "
                                f"transformer is accelerated with kv_cache)")
    ctrl = _Controller(config, denoiser, ctx.state)
    handle = PatchHandle(NAME, stats=ctrl.stats, details=ctrl.details)
    ctx.hook(denoiser, _ObserveHook(ctrl), HOOK)
    for i, block in enumerate(denoiser.blocks):
        ctx.set_processor(block.attn1, TempCacheProcessor(block.attn1.processor, ctrl, i))
        handle.targets.append(f"blocks.{i}.attn1")
    if config.cross_topk:
        for i, block in enumerate(denoiser.blocks):
            ctx.set_processor(block.attn2, AnnCrossProcessor(block.attn2.processor, ctrl))
            handle.targets.append(f"blocks.{i}.attn2")
    if config.encode in ("incremental", "compressed"):
        encode = _encode_incremental if config.encode == "incremental" else _encode_compressed
        ctx.set_attr(ctx.pipe, "encode_kv_cache", encode(ctx.pipe, ctrl))
        handle.targets.append("pipeline.encode_kv_cache")
    ctx.on_remove(ctrl.reset)
    return handle
