"""Adaptive guidance (AG), guidance truncation/interval and LinearAG.

Classifier-free guidance (CFG) evaluates the denoiser twice per step, on the
unconditional and the conditional input. Late in sampling the two predictions agree
almost perfectly, so the unconditional evaluation adds cost but no information.
This patch removes it, without editing any pipeline, by intercepting the denoiser:

* **batched CFG** (one call on ``[uncond, cond]``, batch ``2B``): the denoiser runs on
  the rows still needed (all cond rows, the uncond rows of samples still guided) and
  the returned uncond rows of the other samples are copies of their cond rows, so the
  pipeline's ``uncond + s * (cond - uncond)`` is exactly ``cond`` (a guidance-1 step,
  also under ``guidance_rescale``: the std ratio is then 1). A denoiser that returns several
  predictions batched alike (the family row's ``outputs``: LTX-2's video and audio) has each one
  filled the same way; further calls of a step (LTX-2's STG and modality-isolation passes) run untouched.
* **separate CFG calls** (Flux ``true_cfg_scale``, Wan: a cond call then an uncond call
  per step): the uncond call is the one made in diffusers' ``cache_context("uncond")``,
  or else the second call of the step; it is skipped and the cond output of the same
  step returned.

Modes (``Config.mode``):

* ``adaptive`` (AG): after each guided step, ``gamma = cos(eps_cond, eps_uncond)`` per
  sample; once ``gamma >= threshold`` the sample's remaining steps run cond only.
* ``truncation``: CFG only while ``step / num_steps < cfg_fraction``.
* ``interval``: CFG only while ``lo <= step / num_steps < hi``.
* ``linear`` (LinearAG): on steps listed in a fitted coefficient file the uncond
  prediction is not evaluated but estimated as ``a*eps_c[t] + b*eps_c[t-1] + c*eps_u[t-1]``;
  the AG switch (``threshold``) runs on top. Fit with :func:`fit_pipeline`.
* ``cache`` (CFG caching, FasterCache-style): guidance stays on every step, but the uncond
  branch is evaluated only every ``cache_interval`` steps; in between its prediction is the
  step's cond prediction plus the (uncond - cond) difference of the last evaluated step.
  ``cache_interval=1`` evaluates every step (exact).

Per-sample decisions by default (``per_sample=False``: the whole batch switches when
every sample has crossed the threshold). The report lists, per sample, the first step
run without an unconditional evaluation, and the denoiser sample-evaluations (NFE)
run and saved. Guidance is the outermost technique hook, so caches inside it only ever
see the rows that really run.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import TechniqueConfig, check_choice, check_range
from . import NotApplicable, PatchContext, PatchHandle, TechniqueHook

NAME = "guidance"
# The cache_context names diffusers' modular guiders (ClassifierFreeGuidance) give their calls
GUIDER_CONTEXTS = {"pred_cond": "cond", "pred_uncond": "uncond"}
MODES = ("adaptive", "truncation", "interval", "linear", "cache")
HOOK = "accelerate_diffusion.guidance"
DATA_DIR = Path(__file__).parent / "guidance_data"   # shipped LinearAG coefficient files


@dataclass
class Config(TechniqueConfig):
    """``threshold`` above 1 never switches (full CFG, bit-identical to the original)."""

    NAME = NAME
    mode: str = "adaptive"
    threshold: float = 0.99          # adaptive / linear: switch once cos(eps_c, eps_u) >= this
    cfg_fraction: float = 0.5        # truncation: CFG on the first fraction of the steps
    interval: tuple = (0.0, 0.7)     # interval: CFG while lo <= step/num_steps < hi
    per_sample: bool = True          # False: the batch switches when all samples have crossed
    coefficients: str | None = None  # linear: a JSON path or shipped name; None: match the model
    record: bool = False             # keep every fully guided step's (cond, uncond) predictions (LinearAG fitting)
    min_steps: int = 1                # generations with fewer steps run untouched (few-step models)
    cache_interval: int = 2           # cache: evaluate the uncond branch every this many steps

    def validate(self) -> None:
        check_choice(NAME, "mode", self.mode, MODES)
        check_range(NAME, "threshold", self.threshold, -1.0, 2.0)
        check_range(NAME, "cfg_fraction", self.cfg_fraction, 0.0, 1.0, lo_open=True)
        if not isinstance(self.interval, (tuple, list)) or len(self.interval) != 2:
            raise ValueError(f"{NAME}.interval: must be a pair (lo, hi) with 0 <= lo < hi <= 1, "
                             f"got {self.interval!r}")
        lo, hi = self.interval
        check_range(NAME, "interval[0]", lo, 0.0, 1.0, hi_open=True)
        check_range(NAME, "interval[1]", hi, 0.0, 1.0, lo_open=True)
        if lo >= hi:
            raise ValueError(f"{NAME}.interval: lo must be < hi; got ({lo}, {hi})")
        self.interval = (lo, hi)
        check_choice(NAME, "per_sample", self.per_sample, (True, False))
        check_choice(NAME, "record", self.record, (True, False))
        check_range(NAME, "min_steps", self.min_steps, 1, integer=True)
        check_range(NAME, "cache_interval", self.cache_interval, 1, integer=True)
        if self.coefficients is not None and not isinstance(self.coefficients, str):
            raise ValueError(f"{NAME}.coefficients: must be None or a path/name string, "
                             f"got {self.coefficients!r}")


# -- model outputs ------------------------------------------------------------------------
def _main(out) -> torch.Tensor:
    """The prediction tensor in a denoiser output (tuple, output dataclass or tensor)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def _preds(out, k: int) -> list[torch.Tensor]:
    """The first ``k`` prediction tensors of a denoiser output (the family row's ``outputs``: LTX-2
    returns video and audio predictions, both batched alike)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return list(out[:k]) if isinstance(out, tuple) else list(out.values())[:k]


def _with_preds(out, preds: list[torch.Tensor]):
    """``out`` of the same type with its first ``len(preds)`` predictions replaced."""
    if isinstance(out, torch.Tensor):
        return preds[0]
    if isinstance(out, tuple):
        return tuple(preds) + tuple(out[len(preds):])
    return type(out)(**{**dict(out.items()), **dict(zip(out.keys(), preds))})


def _select(value, n: int, index: torch.Tensor):
    """Rows ``index`` of every tensor (nested in dicts/lists/tuples) whose batch dim is ``n``."""
    if isinstance(value, torch.Tensor):
        if value.ndim >= 1 and value.shape[0] == n:
            return value.index_select(0, index.to(value.device))
        return value
    if isinstance(value, dict):
        return type(value)((k, _select(v, n, index)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_select(v, n, index) for v in value)
    return value


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


# -- LinearAG coefficients ----------------------------------------------------------------
def model_fingerprint(denoiser: torch.nn.Module) -> str:
    """Class and config of the denoiser, hashed: coefficients are fitted per model."""
    config = {k: v for k, v in dict(getattr(denoiser, "config", {})).items()
              if not k.startswith("_")}   # private keys (e.g. an unordered set) vary per process
    text = json.dumps({"class": type(denoiser).__name__, "config": config},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_coefficients(name_or_path: str) -> dict:
    """A coefficient file by path, or by name among the shipped ones."""
    path = Path(name_or_path)
    if not path.exists():
        path = DATA_DIR / (name_or_path if name_or_path.endswith(".json") else name_or_path + ".json")
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in DATA_DIR.glob("*.json"))) or "none"
        raise ValueError(f"{NAME}.coefficients: {name_or_path!r} is neither a file nor a shipped "
                         f"name; shipped: {shipped}")
    return json.loads(path.read_text())


def find_coefficients(denoiser: torch.nn.Module, scheduler) -> list[dict]:
    """Shipped coefficient files fitted for this model and scheduler class."""
    fp, sched = model_fingerprint(denoiser), type(scheduler).__name__
    found = []
    for path in sorted(DATA_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("fingerprint") == fp and data.get("scheduler") == sched:
            found.append(data)
    return found


# -- the controller -----------------------------------------------------------------------
class _Generation:
    """What one generation has decided so far."""

    def __init__(self):
        self.layout: str | None = None   # "batched" | "separate" | "single" (no CFG seen)
        self.batch = 0                   # B: samples per branch
        self.switched: list[int | None] = []   # per sample: first step without uncond eval
        self.gammas: list[list[float]] = []    # per guided step, per sample
        self.last_guided: list[int | None] = []  # per sample: last step with a real uncond eval
        self.guided_count: list[int] = []        # per sample: steps with a real uncond eval
        self.cond_out = None             # separate layout: this step's cond output
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None  # linear: (eps_c, eps_u) of t-1
        self.estimated = 0               # linear, cache: uncond predictions estimated
        self.diff: list[torch.Tensor] | None = None   # cache: uncond - cond (per prediction) at the last evaluated step
        self.diff_step = 0
        self.linear_off: str | None = None
        self.unrecognised = False


class _Controller:
    def __init__(self, ctx: PatchContext, config: Config, linear: dict | None):
        self.ctx, self.state, self.config, self.linear = ctx, ctx.state, config, linear
        self.gen = _Generation()
        self.recording: list | None = [] if config.record else None
        self.outputs = ctx.family.outputs

    def _preds(self, out) -> list[torch.Tensor]:
        return _preds(out, self.outputs)

    def reset(self) -> None:
        self.gen = _Generation()
        if self.recording is not None:
            self.recording = []

    # which rows need what at this step ----------------------------------------------------
    def _cfg_window(self) -> bool:
        p = self.state.progress
        if self.config.mode == "truncation":
            return p < self.config.cfg_fraction
        if self.config.mode == "interval":
            lo, hi = self.config.interval
            return lo <= p < hi
        return True

    def _plan(self) -> tuple[list[int], list[int]]:
        """(samples whose uncond is evaluated, samples whose uncond is estimated) this step."""
        gen, step = self.gen, self.state.step
        if not self._cfg_window():
            return [], []
        guided = [i for i in range(gen.batch) if gen.switched[i] is None or step < gen.switched[i]]
        if self.config.mode == "cache":
            due = gen.diff is None or step - gen.diff_step >= self.config.cache_interval
            return (guided, []) if due else ([], guided)
        if self.config.mode == "linear" and self.linear is not None and gen.linear_off is None:
            if step in self._replace and gen.prev is not None:
                return [], guided
        return guided, []

    @property
    def _replace(self) -> set[int]:
        return set(self.linear["replace"]) if self.linear else set()

    def _start(self, layout: str, batch: int) -> None:
        gen = self.gen
        gen.layout, gen.batch, gen.switched = layout, batch, [None] * batch
        gen.last_guided, gen.guided_count = [None] * batch, [0] * batch
        if self.linear is not None and self.state.num_steps != self.linear["steps"]:
            gen.linear_off = (f"coefficients fitted for {self.linear['steps']} steps, this "
                              f"generation runs {self.state.num_steps}: AG only")
            warnings.warn(f"accelerate_diffusion: guidance: LinearAG {gen.linear_off}", stacklevel=4)

    def _layout(self, args, kwargs) -> str:
        """'batched', 'cond', 'uncond' or 'single' (run untouched) for this call."""
        gen, call = self.gen, self.state.call_in_step
        if gen.layout == "batched":
            return "batched" if call == 1 else "single"   # extra calls (SD3 skip-layer): untouched
        name = getattr(self._context._context, "name", None)
        name = GUIDER_CONTEXTS.get(name, name)
        if name in ("cond", "uncond"):
            return name                                   # diffusers' cache_context says which
        if gen.layout is None and call == 1 and self.state.cfg_flag and self.ctx.family.cfg == "batched":
            # The pipeline's own CFG flag (its property, or the flag it gave encode_prompt) and the
            # family's layout say the batch is [uncond, cond]; never inferred from the values.
            sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
            if isinstance(sample, torch.Tensor) and sample.shape[0] % 2 == 0:
                return "batched"
        return {1: "cond", 2: "uncond"}.get(call, "single")

    # the hook body: before the denoiser runs (which rows), after (fill and observe) ------
    def before(self, args, kwargs):
        layout = self._layout(args, kwargs)
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        n = sample.shape[0] if isinstance(sample, torch.Tensor) else 0
        gen = self.gen
        if layout == "batched":
            if gen.layout is None:
                self._start("batched", n // 2)
            return self._batched(args, kwargs, n)
        if layout == "uncond":
            if gen.layout != "separate":
                self._start("separate", n)
            return self._uncond_call(args, kwargs, n)
        self.state.count("guidance_nfe", n)
        return False, None, args, kwargs, ("plain", layout, n)

    def after(self, out, token):
        kind = token[0]
        if kind == "plain":
            if token[1] == "cond":
                self.gen.cond_out = out
                if self.gen.layout is None:
                    self.gen.layout, self.gen.batch = "single", token[2]
            return out
        if kind == "batched":
            b = token[1]
            preds = self._preds(out)
            self._observe([p[b:] for p in preds], [p[:b] for p in preds], list(range(b)))
            return out
        if kind == "batched_rows":
            evaluated, estimated = token[1], token[2]
            preds = self._preds(out)
            conds = [p[len(evaluated):] for p in preds]
            unconds = self._fill(conds, [p[:len(evaluated)] for p in preds], evaluated, estimated)
            self._observe(conds, unconds, evaluated)
            return _with_preds(out, [torch.cat([u, c]) for u, c in zip(unconds, conds)])
        if kind == "uncond":
            self._observe(token[1], self._preds(out), token[2])
            return out
        if kind == "uncond_rows":
            conds, evaluated, estimated = token[1], token[2], token[3]
            unconds = self._fill(conds, self._preds(out), evaluated, estimated)
            self._observe(conds, unconds, evaluated)
            return _with_preds(out, unconds)
        return out      # "unpaired"

    def step_end(self) -> None:
        """After step 0: CFG on but no layout we know is loud, not silent."""
        if self.state.step == 0 and self.gen.layout == "single" and self.state.cfg_flag:
            self.gen.unrecognised = True
            warnings.warn("accelerate_diffusion: guidance: the pipeline uses classifier-free "
                          "guidance but its denoiser calls match no known layout ([uncond, cond] "
                          "batch or a cond call then an uncond call); running full CFG.",
                          stacklevel=2)

    def _batched(self, args, kwargs, n):
        b = n // 2
        evaluated, estimated = self._plan()
        run = evaluated + list(range(b, n))
        self.state.count("guidance_nfe", len(run))
        self.state.count("guidance_nfe_saved", n - len(run))
        if len(run) == n:
            return False, None, args, kwargs, ("batched", b)
        index = torch.tensor(run)
        return False, None, _select(args, n, index), _select(kwargs, n, index), ("batched_rows", evaluated, estimated)

    def _uncond_call(self, args, kwargs, n):
        gen = self.gen
        if gen.cond_out is None or _main(gen.cond_out).shape[0] != n:
            self.state.count("guidance_nfe", n)   # no cond output of this step to pair with
            return False, None, args, kwargs, ("unpaired",)
        conds = self._preds(gen.cond_out)
        evaluated, estimated = self._plan()
        self.state.count("guidance_nfe", len(evaluated))
        self.state.count("guidance_nfe_saved", n - len(evaluated))
        if len(evaluated) == n:
            return False, None, args, kwargs, ("uncond", conds, evaluated)
        if evaluated:
            index = torch.tensor(evaluated)
            return (False, None, _select(args, n, index), _select(kwargs, n, index),
                    ("uncond_rows", conds, evaluated, estimated))
        unconds = self._fill(conds, [c[:0] for c in conds], evaluated, estimated)
        self._observe(conds, unconds, evaluated)
        return True, _with_preds(gen.cond_out, unconds), args, kwargs, None

    def _fill(self, conds, reals, evaluated, estimated) -> list[torch.Tensor]:
        """The full uncond predictions (one per output): real rows, estimated rows, cond copies elsewhere."""
        if not evaluated and not estimated:
            return list(conds)
        out = []
        for k, (cond, real) in enumerate(zip(conds, reals)):
            uncond = cond.clone()
            if evaluated:
                uncond[evaluated] = real.to(cond.dtype)
            if estimated:
                uncond[estimated] = self._estimate(cond, estimated, k).to(cond.dtype)
            out.append(uncond)
        if estimated:
            self.gen.estimated += len(estimated)
            self.state.count("guidance_uncond_estimated", len(estimated))
        return out

    def _estimate(self, cond, rows, k: int = 0) -> torch.Tensor:
        """Uncond predictions not evaluated: cond + the cached difference (CFG caching), or
        LinearAG's a*eps_c[t] + b*eps_c[t-1] + c*eps_u[t-1] (one prediction: refused at apply otherwise)."""
        if self.config.mode == "cache":
            return cond[rows] + self.gen.diff[k][rows]
        a, b, c = self.linear["coefficients"][self.state.step]
        prev_c, prev_u = self.gen.prev
        return a * cond[rows] + b * prev_c[rows] + c * prev_u[rows]

    def _observe(self, conds, unconds, evaluated) -> None:
        """After a step's predictions: AG decisions, LinearAG history, recording (on the first
        prediction; CFG caching keeps every prediction's difference)."""
        gen, step = self.gen, self.state.step
        if self.config.mode == "cache" and evaluated and len(evaluated) == gen.batch:
            gen.diff, gen.diff_step = [(u - c).detach() for c, u in zip(conds, unconds)], step
        cond, uncond = conds[0], unconds[0]
        if self.recording is not None and len(evaluated) == gen.batch:
            self.recording.append((cond.detach().cpu().clone(), uncond.detach().cpu().clone()))
        if self.linear is not None:
            gen.prev = (cond.detach(), uncond.detach())
        for i in evaluated:
            gen.last_guided[i] = step
            gen.guided_count[i] += 1
        if not evaluated or self.config.mode not in ("adaptive", "linear"):
            return
        gamma = _cosine(cond[evaluated], uncond[evaluated]).tolist()
        row = [float("nan")] * gen.batch
        for i, g in zip(evaluated, gamma):
            row[i] = g
        gen.gammas.append(row)
        crossed = [i for i, g in zip(evaluated, gamma) if g >= self.config.threshold]
        if not self.config.per_sample:
            still = [i for i in range(gen.batch) if gen.switched[i] is None]
            crossed = still if set(still) <= set(crossed) else []
        for i in crossed:
            if gen.switched[i] is None:
                gen.switched[i] = step + 1

    # report -------------------------------------------------------------------------------
    def details(self) -> dict:
        """Per step cos(eps_c, eps_u) of each guided sample, the switch steps, and (``record``)
        the (cond, uncond) predictions of every fully guided step of the last generation."""
        gen = self.gen
        out = {"gammas": [list(row) for row in gen.gammas], "switched": list(gen.switched)}
        if self.recording is not None:
            out["trajectory"] = list(self.recording)
        return out

    def stats(self) -> dict:
        gen, counters = self.gen, self.state.counters
        if self.state.generation == 0 or gen.layout is None:
            return {"status": "no generation run yet"}
        if gen.layout == "single":
            why = ("inactive: the pipeline ran without classifier-free guidance "
                   "(guidance_scale <= 1, or true_cfg_scale <= 1 / no negative prompt)")
            if gen.unrecognised:
                why = "inactive: CFG is on but its call layout is not recognised; full CFG ran"
            return {"status": why}
        steps = self.state.num_steps
        nfe, saved = counters.get("guidance_nfe", 0), counters.get("guidance_nfe_saved", 0)
        # per sample: the step after its last real uncond evaluation, None if it ran to the end
        first = [None if s is not None and s + 1 >= steps else (0 if s is None else s + 1)
                 for s in gen.last_guided]
        out = {"status": f"active ({self.config.mode}, {gen.layout} CFG)",
               "switch_step_per_sample": first,
               "guided_steps_per_sample": list(gen.guided_count),
               "nfe": f"{nfe} of {nfe + saved} sample-evaluations ({saved} saved, "
                      f"{100 * saved / max(nfe + saved, 1):.1f}%)"}
        if self.linear is not None:
            out["linear"] = gen.linear_off or f"{gen.estimated} uncond predictions estimated"
        if self.config.mode == "cache":
            out["cache"] = (f"uncond evaluated every {self.config.cache_interval} steps; {gen.estimated} uncond "
                            f"predictions = cond + the last evaluated (uncond - cond)")
        return out


class _GuidanceHook(TechniqueHook):
    _is_stateful = True   # so diffusers' cache_context("cond"/"uncond") reaches us

    def __init__(self, controller: _Controller):
        from diffusers.hooks.hooks import StateManager

        super().__init__(controller.state)
        self.controller = controller
        self.context = StateManager(dict)
        controller._context = self.context

    def before(self, module, args, kwargs):
        return self.controller.before(args, kwargs)

    def after(self, module, output, token):
        return self.controller.after(output, token)

    def reset_state(self, module):
        return module   # pipelines reset cache hooks after the loop; the report must survive


def apply(ctx: PatchContext, config: Config) -> PatchHandle:
    linear = None
    if config.mode == "linear" and ctx.family.outputs > 1:
        raise NotApplicable(f"{NAME}.mode='linear': LinearAG's coefficients are fitted on one prediction; this "
                            f"{ctx.family.name} denoiser returns {ctx.family.outputs} (use truncation, adaptive "
                            f"or cache)")
    if config.mode == "linear":
        if config.coefficients is not None:
            linear = load_coefficients(config.coefficients)
            fp = model_fingerprint(ctx.denoiser)
            if linear.get("fingerprint") != fp:
                raise NotApplicable(f"LinearAG coefficients {config.coefficients!r} were fitted for "
                                    f"another model ({linear.get('denoiser')}); refit with "
                                    f"accelerate_diffusion.schedules.linear_ag.fit_pipeline")
        else:
            found = find_coefficients(ctx.denoiser, ctx.pipe.scheduler)
            if not found:
                raise NotApplicable(f"no LinearAG coefficients fitted for this "
                                    f"{type(ctx.denoiser).__name__} with "
                                    f"{type(ctx.pipe.scheduler).__name__}; fit them with "
                                    f"accelerate_diffusion.schedules.linear_ag.fit_pipeline")
            linear = found[0]
        if linear.get("scheduler") != type(ctx.pipe.scheduler).__name__:
            raise NotApplicable(f"LinearAG coefficients were fitted with {linear.get('scheduler')}, "
                                f"the pipeline uses {type(ctx.pipe.scheduler).__name__}")
    controller = _Controller(ctx, config, linear)
    ctx.on_reset(controller.reset)
    ctx.on_step_end(controller.step_end)
    ctx.hook(ctx.denoiser, _GuidanceHook(controller), HOOK)
    return PatchHandle(NAME, targets=[ctx.denoiser_attr], stats=controller.stats, details=controller.details)
