"""Region-adaptive sampling (RAS): recompute only the image tokens the model is changing.

After each scheduler step the guided model output tells which regions move the most
(``diff = (sigma_{t+1} - sigma_t) * v_t``; per-token score = mean over the token's patch
of the per-pixel std over channels, or the L2 norm). The next step runs the transformer on
the top ``sample_ratio`` tokens only, plus all text tokens; the other tokens reuse their
last computed model output. Attention keeps the full context: every attention layer keeps
the image keys/values of all tokens, refreshed at dense steps, and the active rows are
overwritten with fresh ones at sparse steps, so active queries see every token.

How it plugs in (no class is patched):

* a hook on the denoiser decides, per call, dense or sparse and which rows are active;
* ``pos_embed`` (SD3) / ``x_embedder`` (Flux) output -> gather the active tokens, after the
  absolute position embedding was added on the full grid; Lumina 2 (``RasLayout.gather="input"``):
  the input of its first joint block, text rows kept, image rows gathered (its refiners run every
  token, and it packs each row's image tokens right after that row's text);
* ``to_k`` / ``to_v`` of each image attention -> store (dense) or scatter-and-expand
  (sparse) the full-length keys/values: queries stay active-only, keys/values full;
* Flux and Lumina 2 (``RasLayout.query_rope``): the attention processor is wrapped so that at
  sparse steps RoPE is applied with the active rows' positions to the queries and the full
  positions to the keys;
* ``proj_out`` (Lumina 2: ``norm_out``) output -> scatter the active tokens into the stored full
  output map (cached tokens keep their last output; leading text rows pass), so the unpatchify
  sees every token.

Selection is per sample and shared by the uncond/cond rows of that sample (it comes from
the guided output). A change of batch size (adaptive guidance dropping the uncond half)
or image size runs that call dense and re-seeds the stores, and so does a call whose rows have
different text lengths where the layout names a text mask (their image tokens sit at different
offsets).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import TechniqueConfig, check_choice, check_range
from . import NotApplicable, OutputHook, PatchContext, PatchHandle, TechniqueHook

NAME = "ras"
HOOK = "accelerate_diffusion.ras"
METRICS = ("std", "l2")
# Schedulers whose step is x_{t+1} = x_t + (sigma_{t+1} - sigma_t) * v_t: reusing v_t for
# slowly changing tokens is the update RAS was designed for.
SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


@dataclass
class Config(TechniqueConfig):
    """RAS settings.

    sample_ratio: fraction of image tokens recomputed at sparse steps, in (0, 1]; a tuple
        gives one ratio per step (the last one repeats). 1.0 = every step dense.
    metric: "std" (std over channels, averaged over the patch) or "l2" (channel L2 norm).
    start_step: the first steps run dense (the layout forms early).
    error_reset_steps: extra dense steps that refresh every token and the K/V caches;
        a float < 1 is a fraction of the steps, an int a step index.
    starvation_scale: scores are multiplied by exp(starvation_scale * steps_cached), so
        tokens cached for many steps come back (> 0 pulls them back; 0 disables).
    """

    NAME = "ras"
    sample_ratio: Any = 0.5
    metric: str = "std"
    start_step: int = 4
    error_reset_steps: Any = (0.4, 0.75)
    starvation_scale: float = 0.5
    min_steps: int = 1                # generations with fewer steps run untouched (few-step models)

    def __post_init__(self):
        if isinstance(self.sample_ratio, list):
            self.sample_ratio = tuple(self.sample_ratio)
        if isinstance(self.error_reset_steps, (list, int, float)) and not isinstance(
                self.error_reset_steps, bool):
            values = self.error_reset_steps
            self.error_reset_steps = tuple(values) if isinstance(values, list) else (values,)
        super().__post_init__()

    def validate(self) -> None:
        ratios = self.sample_ratio if isinstance(self.sample_ratio, tuple) else (self.sample_ratio,)
        if not ratios:
            raise ValueError("ras.sample_ratio: an empty schedule; give a number in (0, 1] or a "
                             "tuple of them")
        for r in ratios:
            check_range(NAME, "sample_ratio", r, 0.0, 1.0, lo_open=True)
        check_choice(NAME, "metric", self.metric, METRICS)
        check_range(NAME, "start_step", self.start_step, 0, None, integer=True)
        if not isinstance(self.error_reset_steps, tuple):
            raise ValueError(f"ras.error_reset_steps: must be a tuple of step fractions (< 1) or "
                             f"step indices (ints), got {self.error_reset_steps!r}")
        for s in self.error_reset_steps:
            check_range(NAME, "error_reset_steps", s, 0, None)
        check_range(NAME, "starvation_scale", self.starvation_scale, -5.0, 5.0)
        check_range(NAME, "min_steps", self.min_steps, 1, integer=True)

    # -- the per-step plan ------------------------------------------------------------
    def ratio_at(self, step: int) -> float:
        if isinstance(self.sample_ratio, tuple):
            return float(self.sample_ratio[min(step, len(self.sample_ratio) - 1)])
        return float(self.sample_ratio)

    def reset_steps(self, num_steps: int) -> set[int]:
        out = set()
        for s in self.error_reset_steps:
            out.add(int(round(s * num_steps)) if isinstance(s, float) and s < 1 else int(s))
        return out

    def is_dense(self, step: int, num_steps: int) -> bool:
        return (step < self.start_step or step in self.reset_steps(num_steps)
                or self.ratio_at(step) >= 1.0)


# -- scores ---------------------------------------------------------------------------
def token_scores(diff: torch.Tensor, patch: int, metric: str) -> torch.Tensor:
    """[B, N] scores from a latent-space difference.

    ``diff`` is either a latent map [B, C, H, W] (SD3: tokens are p x p patches, row-major
    like ``PatchEmbed``) or packed tokens [B, N, C * p * p] (Flux: channel-major, then the
    2x2 patch, as ``FluxPipeline._pack_latents`` lays them out).
    """
    diff = diff.float()
    if diff.ndim == 4:
        per_pixel = diff.std(dim=1) if metric == "std" else diff.norm(dim=1)       # [B, H, W]
        return F.avg_pool2d(per_pixel[:, None], patch).flatten(1)
    b, n, d = diff.shape
    pix = diff.view(b, n, d // (patch * patch), patch * patch)                   # [B, N, C, p*p]
    per_pixel = pix.std(dim=2) if metric == "std" else pix.norm(dim=2)
    return per_pixel.mean(dim=-1)


@dataclass
class _Call:
    """What the hooks need during one denoiser call."""

    key: int                      # call index within the step (separate CFG: 0 and 1)
    sparse: bool
    n: int                        # image tokens
    rows: int                     # batch rows of this call
    idx: torch.Tensor | None = None   # [rows, k] active token indices (sorted) when sparse


class _Runtime:
    """Scores, selection and the per-call stores of one accelerated pipeline."""

    def __init__(self, ctx: PatchContext, config: Config):
        self.ctx = ctx
        self.state = ctx.state
        self.config = config
        self.patch = ctx.family.patch(ctx.denoiser)[-1]
        self.call: _Call | None = None
        self.reset()

    def reset(self) -> None:
        self.stores: dict[tuple, torch.Tensor] = {}    # (call key, module id) -> [rows, N, D]
        self.batch: dict[int, tuple[int, int]] = {}    # call key -> (rows, N) of the stores
        self.selection: tuple[int, torch.Tensor] | None = None   # (step, [B, k])
        self.drop_count: torch.Tensor | None = None    # [B, N] consecutive steps cached
        self.history: list[torch.Tensor | None] = []   # per step: [B, k] indices or None (dense)
        self.grid: tuple[int, int] | None = None
        self.step_fraction: dict[int, tuple[bool, float]] = {}   # step -> (sparse, active fraction)
        self.supported_scheduler = True
        self.checked_generation = -1

    # -- per call ---------------------------------------------------------------------
    def begin_call(self, args, kwargs) -> _Call | None:
        state = self.state
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor):
            return None
        if self.checked_generation != state.generation:
            self.checked_generation = state.generation
            name = type(self.ctx.pipe.scheduler).__name__
            self.supported_scheduler = _scheduler_ok(self.ctx.pipe.scheduler)
            if not self.supported_scheduler:
                warnings.warn(f"accelerate_diffusion: ras runs dense this generation: scheduler "
                              f"{name} is not supported (supported: {', '.join(SCHEDULERS)})",
                              stacklevel=4)
        rows = hidden.shape[0]
        self.grid = self.ctx.family.token_grid_of(self.ctx.denoiser, args, kwargs)
        n = self.grid[0] * self.grid[1]
        key = max(state.call_in_step - 1, 0)
        call = _Call(key=key, sparse=False, n=n, rows=rows)
        sel = self.selection
        if (self.supported_scheduler and sel is not None and sel[0] == state.step
                and self.batch.get(key) == (rows, n) and sel[1].shape[0] > 0
                and rows % sel[1].shape[0] == 0 and self._plain_call(kwargs) and self._uniform_text(kwargs)
                and not self.config.is_dense(state.step, state.num_steps)):
            idx = sel[1]
            call.sparse = True
            call.idx = idx[torch.arange(rows, device=idx.device) % idx.shape[0]].to(hidden.device)
        self.batch[key] = (rows, n)
        active = call.idx.shape[1] if call.sparse else n
        state.count("ras_sparse_calls" if call.sparse else "ras_dense_calls")
        state.count("ras_tokens_recomputed", rows * active)
        state.count("ras_tokens_total", rows * n)
        if key == 0:
            self.step_fraction[state.step] = (call.sparse, active / n)
            while len(self.history) <= state.step:
                self.history.append(None)
            self.history[state.step] = sel[1].cpu() if call.sparse else None
        return call

    def _uniform_text(self, kwargs) -> bool:
        """Every row has the same text length (always so for one prompt per call)."""
        name = self.ctx.family.ras.text_mask
        mask = kwargs.get(name) if name else None
        if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
            return True
        lengths = mask.bool().sum(dim=1)
        return bool((lengths == lengths[0]).all())

    @staticmethod
    def _plain_call(kwargs) -> bool:
        """Extras that address tokens by position (ControlNet residuals, skipped layers,
        IP-adapter, attention masks) run dense."""
        for name in ("block_controlnet_hidden_states", "controlnet_block_samples",
                     "controlnet_single_block_samples", "skip_layers"):
            if kwargs.get(name) is not None:
                return False
        return not kwargs.get("joint_attention_kwargs")

    # -- after each scheduler step --------------------------------------------------------
    def after_step(self, model_output, scheduler) -> None:
        state = self.state
        nxt = state.step + 1
        if (not isinstance(model_output, torch.Tensor) or not self.supported_scheduler
                or nxt >= state.num_steps or self.config.is_dense(nxt, state.num_steps)):
            if self.drop_count is not None:
                self.drop_count.zero_()
            self.selection = None
            return
        diff = model_output.detach().float() * _step_size(scheduler)
        scores = token_scores(diff, self.patch, self.config.metric)          # [B, N]
        if self.drop_count is None or self.drop_count.shape != scores.shape:
            self.drop_count = torch.zeros_like(scores)
        scores = scores * torch.exp(self.config.starvation_scale * self.drop_count)
        n = scores.shape[1]
        k = min(n, max(1, int(round(self.config.ratio_at(nxt) * n))))
        idx = scores.topk(k, dim=1).indices.sort(dim=1).values
        active = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)
        self.drop_count = torch.where(active, 0.0, self.drop_count + 1)
        self.selection = (nxt, idx)

    # -- the token stores -------------------------------------------------------------
    def gather(self, module, output: torch.Tensor) -> torch.Tensor:
        """The active image tokens; image tokens are the last rows and any leading rows (a joint
        block's text) are kept."""
        call = self.call
        if call is None or not call.sparse:
            return output
        lead = output.shape[1] - call.n
        active = output[:, lead:].gather(1, _rows(call.idx, output.shape[-1]))
        return active if lead == 0 else torch.cat([output[:, :lead], active], dim=1)

    def expand(self, module, output: torch.Tensor) -> torch.Tensor:
        """Full-length K or V: fresh rows for active tokens, stored rows for the others.

        The image tokens are the last rows of the projection input (Flux single blocks
        put the text first); any leading rows are text and pass through."""
        call = self.call
        if call is None:
            return output
        key = (call.key, id(module))
        if not call.sparse:
            self.stores[key] = output[:, output.shape[1] - call.n:]
            return output
        k = call.idx.shape[1]
        full = self.stores[key].scatter(1, _rows(call.idx, output.shape[-1]), output[:, -k:])
        self.stores[key] = full
        if output.shape[1] == k:
            return full
        return torch.cat([output[:, :-k], full], dim=1)

    def scatter(self, module, output: torch.Tensor) -> torch.Tensor:
        """Full output map: recomputed tokens fresh, cached tokens their last output. Image
        tokens are the last rows; leading rows (Lumina 2's text) pass through."""
        call = self.call
        if call is None:
            return output
        key = (call.key, "out")
        if not call.sparse:
            self.stores[key] = output[:, output.shape[1] - call.n:]
            return output
        k = call.idx.shape[1]
        full = self.stores[key].scatter(1, _rows(call.idx, output.shape[-1]), output[:, output.shape[1] - k:])
        self.stores[key] = full
        return full if output.shape[1] == k else torch.cat([output[:, :-k], full], dim=1)

    # -- report ---------------------------------------------------------------------------
    def stats(self) -> dict:
        kinds = list(self.step_fraction.values())
        fractions = [f for _, f in kinds]
        counters = self.state.counters
        sparse = sum(1 for is_sparse, _ in kinds if is_sparse)
        total = counters.get("ras_tokens_total", 0)
        done = counters.get("ras_tokens_recomputed", 0)
        return {
            "dense steps": len(fractions) - sparse,
            "sparse steps": sparse,
            "mean active fraction": round(sum(fractions) / len(fractions), 3) if fractions else None,
            "tokens recomputed": f"{done} of {total}" + (f" ({done / total:.0%})" if total else ""),
        }

    def details(self) -> dict:
        """The token grid, and per step of the last generation the recomputed token indices
        ([B, k], None for dense steps) and sample 0's [h, w] map of them."""
        return {"grid": self.grid, "history": list(self.history), "active_maps": self.active_maps(0)}

    def active_maps(self, sample: int = 0) -> list[torch.Tensor]:
        """Per step of the last generation, a [h, w] bool map of the recomputed tokens."""
        if self.grid is None:
            return []
        h, w = self.grid
        maps = []
        for idx in self.history:
            m = torch.ones(h * w, dtype=torch.bool)
            if idx is not None:
                m = torch.zeros(h * w, dtype=torch.bool)
                m[idx[sample]] = True
            maps.append(m.view(h, w))
        return maps


def _rows(idx: torch.Tensor, dim: int) -> torch.Tensor:
    return idx[..., None].expand(-1, -1, dim)


def _step_size(scheduler) -> float:
    """sigma_{t+1} - sigma_t of the step just taken (a common factor: it scales every
    score alike, so it never changes the selection; kept for the documented formula)."""
    sigmas, i = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
    if sigmas is None or i is None or not 1 <= i < len(sigmas):
        return 1.0
    step = float(sigmas[i] - sigmas[i - 1])
    return step if step != 0.0 else 1.0


def _scheduler_ok(scheduler) -> bool:
    names = {cls.__name__ for cls in type(scheduler).__mro__}
    return bool(names & set(SCHEDULERS))


# -- hooks ----------------------------------------------------------------------------------
class _DenoiserHook(TechniqueHook):
    """Decides dense or sparse for this call and exposes it to the inner hooks."""

    def __init__(self, runtime: _Runtime):
        super().__init__(runtime.state)
        self.runtime = runtime

    def before(self, module, args, kwargs):
        rt = self.runtime
        previous, rt.call = rt.call, rt.begin_call(args, kwargs)
        return False, None, args, kwargs, previous

    def after(self, module, output, previous):
        self.runtime.call = previous
        return output


class _InputGatherHook(TechniqueHook):
    """Gathers the active tokens of a block's input hidden states (``RasLayout.gather="input"``)."""

    def __init__(self, runtime: _Runtime):
        super().__init__(runtime.state)
        self.runtime = runtime

    def before(self, module, args, kwargs):
        if args:
            args = (self.runtime.gather(module, args[0]), *args[1:])
        else:
            kwargs = {**kwargs, "hidden_states": self.runtime.gather(module, kwargs["hidden_states"])}
        return False, None, args, kwargs, None


class _FluxSparseProcessor:
    """Wraps Flux's processor: dense calls go to it unchanged; sparse calls run the same
    joint attention with active-only queries and full keys/values, applying RoPE with the
    active rows' positions to the queries and every position to the keys."""

    def __init__(self, inner, runtime: _Runtime):
        self.inner = inner
        self.runtime = runtime

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):
        call = self.runtime.call
        if call is None or not call.sparse or not self.runtime.state.in_call:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask,
                              image_rotary_emb)
        query = attn.to_q(hidden_states).unflatten(-1, (-1, attn.head_dim))
        key = attn.to_k(hidden_states).unflatten(-1, (-1, attn.head_dim))     # full length
        value = attn.to_v(hidden_states).unflatten(-1, (-1, attn.head_dim))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            eq = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
            ek = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim))
            query, key = torch.cat([eq, query], dim=1), torch.cat([ek, key], dim=1)
            value = torch.cat([ev, value], dim=1)
        n_text = key.shape[1] - call.n
        rows = _query_rows(n_text, call.idx)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            cos, sin = image_rotary_emb
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
            query = _rope_rows(query, cos, sin, rows)
        if attention_mask is not None and attention_mask.ndim == 4 and attention_mask.shape[-2] > 1:
            # a [B, 1, S, S] mask (Chroma's text padding): keep the active queries' rows
            attention_mask = attention_mask.gather(
                2, rows[:, None, :, None].expand(-1, attention_mask.shape[1], -1, attention_mask.shape[-1]))
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2),
                                             value.transpose(1, 2), attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        n_enc = encoder_hidden_states.shape[1]
        enc, img = out[:, :n_enc], out[:, n_enc:]
        img = attn.to_out[1](attn.to_out[0](img.contiguous()))
        return img, attn.to_add_out(enc.contiguous())


def _query_rows(n_text, idx):
    """[B, n_text + k] positions in the full sequence of a sparse call's query rows: the first
    ``n_text`` rows are text, then the image tokens ``idx`` [B, k] of the full grid."""
    return torch.cat([torch.arange(n_text, device=idx.device).expand(idx.shape[0], -1), idx + n_text], dim=1)


def _rope_rows(x, cos, sin, pos):
    """Flux RoPE (real form, pairs interleaved) on [B, S, H, D] queries at positions ``pos`` [B, S]."""
    cos, sin = cos.to(x.device)[pos][:, :, None], sin.to(x.device)[pos][:, :, None]
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class _Lumina2SparseProcessor:
    """Wraps Lumina 2's processor: dense calls go to it unchanged; sparse calls run the same
    self-attention over [text, active image tokens] queries and full-length keys/values (the
    to_k/to_v hooks expand them), with the complex RoPE of the active rows' positions on the
    queries and of every position on the keys."""

    def __init__(self, inner, runtime: _Runtime):
        self.inner = inner
        self.runtime = runtime

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None,
                 base_sequence_length=None):
        call = self.runtime.call
        if call is None or not call.sparse or not self.runtime.state.in_call:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                              base_sequence_length)
        from diffusers.models.embeddings import apply_rotary_emb

        b, s, _ = hidden_states.shape
        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)                         # full length
        value = attn.to_v(encoder_hidden_states)
        head_dim = query.shape[-1] // attn.heads
        kv_heads = key.shape[-1] // head_dim
        dtype = query.dtype
        query = query.view(b, -1, attn.heads, head_dim)
        key = key.view(b, -1, kv_heads, head_dim)
        value = value.view(b, -1, kv_heads, head_dim)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            k = call.idx.shape[1]
            n_text = s - k
            rows = torch.cat([torch.arange(n_text, device=call.idx.device).expand(b, -1), call.idx + n_text], dim=1)
            rope = image_rotary_emb.gather(1, rows[..., None].expand(-1, -1, image_rotary_emb.shape[-1])
                                           .to(image_rotary_emb.device))
            query = apply_rotary_emb(query, rope, use_real=False)
            key = apply_rotary_emb(key, image_rotary_emb, use_real=False)
        query, key = query.to(dtype), key.to(dtype)
        scale = attn.scale
        if base_sequence_length is not None:      # proportional attention: the full sequence length
            scale = math.sqrt(math.log(key.shape[1], base_sequence_length)) * attn.scale
        n_rep = attn.heads // kv_heads
        if n_rep >= 1:
            key = key.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
            value = value.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
        if attention_mask is not None:           # over the full-length keys
            attention_mask = attention_mask.bool().view(b, 1, 1, -1)
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                             attn_mask=attention_mask, scale=scale)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


# Processors that wrap the model's own to rotate only the active queries (RasLayout.query_rope).
QUERY_ROPE = {"flux": _FluxSparseProcessor, "lumina2": _Lumina2SparseProcessor}


def _foreign_block_hooks(family, denoiser) -> list[str]:
    """Hooks other techniques (block caches) left on the transformer's blocks (the family's block
    groups and everything inside them)."""
    found = []
    blocks = {name for name, _ in family.blocks(denoiser)}
    inside = tuple(f"{name}." for name in blocks)
    for name, module in denoiser.named_modules():
        if name not in blocks and not name.startswith(inside):
            continue
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.hooks:
            found.extend(f"{name}:{hook}" for hook in registry.hooks)
    return found


def apply(ctx: PatchContext, config: Config) -> PatchHandle:
    layout = ctx.family.ras
    if layout is None:
        raise NotApplicable(f"the {ctx.family.name} family has no region-adaptive sampling layout in the family table")
    denoiser = ctx.denoiser
    if not _scheduler_ok(ctx.pipe.scheduler):
        raise NotApplicable(f"ras needs a flow-matching Euler scheduler ({', '.join(SCHEDULERS)}); "
                            f"this pipeline uses {type(ctx.pipe.scheduler).__name__}, whose update "
                            f"does not reuse a velocity")
    foreign = _foreign_block_hooks(ctx.family, denoiser)
    if foreign:
        raise NotApplicable("ras cannot run with block-level hooks from another technique (block caching) "
                            f"(found hooks {', '.join(foreign[:3])}): cached block outputs have the "
                            "full token count, RAS steps run fewer tokens; use block_cache=False "
                            "or ras=False")
    attentions = [(name, attn) for _, name, attn, _ in ctx.family.self_attentions(denoiser)]
    for name, attn in attentions:
        proc = type(attn.processor).__name__
        if proc not in layout.processors or getattr(attn, "fused_projections", False) or hasattr(attn, "to_qkv"):
            raise NotApplicable(f"ras: attention {name} uses {proc}"
                                f"{' with fused projections' if hasattr(attn, 'to_qkv') else ''}; "
                                f"ras needs {' or '.join(layout.processors)} with separate to_k/to_v "
                                "(the attention technique and fused QKV cannot be combined with ras)")

    runtime = _Runtime(ctx, config)
    embed = denoiser.get_submodule(layout.embed)
    if layout.gather == "input":
        ctx.hook(embed, _InputGatherHook(runtime), HOOK)
    else:
        ctx.hook(embed, OutputHook(ctx.state, runtime.gather), HOOK)
    for name, attn in attentions:
        ctx.hook(attn.to_k, OutputHook(ctx.state, runtime.expand), HOOK)
        ctx.hook(attn.to_v, OutputHook(ctx.state, runtime.expand), HOOK)
        if layout.query_rope:
            ctx.set_processor(attn, QUERY_ROPE[layout.query_rope](attn.processor, runtime))
    ctx.hook(denoiser.get_submodule(layout.output), OutputHook(ctx.state, runtime.scatter), HOOK)
    ctx.hook(denoiser, _DenoiserHook(runtime), HOOK)
    ctx.on_reset(runtime.reset)
    ctx.on_scheduler_step(runtime.after_step)
    ctx.on_remove(runtime.reset)
    targets = [layout.embed] + [f"{n}.to_k/to_v" for n, _ in attentions] + [layout.output]
    return PatchHandle(NAME, targets=targets, stats=runtime.stats, details=runtime.details)
