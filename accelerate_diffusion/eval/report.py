"""Scoring the configurations and writing the report: Markdown, JSON, CSV, plots.

Every number says what produced it (``EvalReport.metrics``); a metric whose model is
not available offline is reported as skipped with the reason, never estimated.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

from .fidelity import _as_images, per_frame, per_image, psnr, ssim
from ..macs import format_macs
from .models import ClipAdapter, ClipImageFeatures, InceptionFeatures, RandomFeatures, Unavailable

COLUMNS = ("label", "preset", "time_s", "time_spread_s", "baseline_s", "speedup", "denoiser_speedup", "macs",
           "macs_ratio", "peak_memory_mib", "psnr", "ssim", "lpips", "fid", "clip_score")


def _spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / 2 if xs else float("nan")


def _mean(xs: list[float]) -> float:
    return float("inf") if xs and all(math.isinf(x) for x in xs) else (
        statistics.mean(x for x in xs if math.isfinite(x)) if any(math.isfinite(x) for x in xs)
        else float("nan"))


def _load_reference_dir(path: str) -> list[torch.Tensor]:
    import numpy as np
    from PIL import Image

    files = sorted(f for f in os.listdir(path)
                   if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp")))
    if len(files) < 2:
        raise ValueError(f"reference_dir: need at least 2 images in {path}, found {len(files)}")
    return [torch.from_numpy(np.asarray(Image.open(os.path.join(path, f)).convert("RGB")).copy())
            .permute(2, 0, 1).float() / 255 for f in files]


def _resolve_clip(clip, model: str | None) -> tuple[ClipAdapter | None, str]:
    from .models import load_clip

    if clip == "auto":
        if model and str(model).startswith("demo-"):
            clip = "demo"
        else:
            return None, "no local CLIP model given (pass clip=<local CLIP dir> or 'demo')"
    try:
        return load_clip(clip), ""
    except Unavailable as exc:
        return None, str(exc)


def _resolve_fid(fid_features, adapter: ClipAdapter | None, clip_reason: str):
    """(extractor, reason-if-none)."""
    from .models import find_inception_weights

    if isinstance(fid_features, torch.nn.Module):
        if not hasattr(fid_features, "description"):
            fid_features.description = f"user extractor {type(fid_features).__name__}"
        return fid_features, ""
    if fid_features == "random":
        return RandomFeatures(), ""
    reasons = []
    if fid_features in ("auto", "inception"):
        try:
            return InceptionFeatures(find_inception_weights()), ""
        except Unavailable as exc:
            reasons.append(str(exc))
    if fid_features in ("auto", "clip"):
        if adapter is not None:
            return ClipImageFeatures(adapter), ""
        reasons.append(f"no CLIP image encoder either: {clip_reason}")
    if fid_features not in ("auto", "inception", "clip"):
        raise ValueError(f"fid_features: unknown {fid_features!r}; allowed: auto, inception, "
                         f"clip, random, or an nn.Module")
    return None, "; ".join(reasons)


def compute_metrics(results: list[dict], images: dict[str, torch.Tensor], prompts: list[str],
                    model: str | None, reference_dir: str | None = None,
                    fid_features: Any = "auto", clip: Any = "auto", lpips_net: str | None = None,
                    progress: bool = False) -> dict:
    """Rows of figures per configuration, and per metric what produced it (or why skipped)."""
    from tqdm.auto import tqdm

    from . import quality

    base = results[0]
    reference = images[base["label"]]
    video = reference.ndim == 5
    frames = reference.shape[1] if video else 1
    frame_prompts = [p for p in prompts for _ in range(frames)]
    info: dict[str, dict] = {
        "time_s": {"by": "wall clock, median of repeats (see timing)"},
        "macs": {"by": "torch.utils.flop_counter on denoiser calls, mean per generation"},
        "psnr": {"by": "torchmetrics PSNR (data_range 1) vs the off output of the same prompt "
                       "and seed, mean over images" + (" (frames of a video scored together)" if video else "")},
        "ssim": {"by": "torchmetrics SSIM (data_range 1, kernel <= 11) vs off, mean over images"},
    }

    adapter, clip_reason = _resolve_clip(clip, model)
    info["clip_score"] = ({"by": f"torchmetrics CLIPScore with {adapter.description}"
                                 + (", mean over frames" if video else "")}
                          if adapter else {"skipped": clip_reason})

    lpips_metric = None
    if lpips_net is not None:          # opt-in: not computable with the documented install
        from .models import load_lpips
        try:
            lpips_metric = load_lpips(lpips_net)
            info["lpips"] = {"by": lpips_metric.description + " vs off, mean over images"}
        except Unavailable as exc:
            info["lpips"] = {"skipped": str(exc)}

    extractor, fid_reason = _resolve_fid(fid_features, adapter, clip_reason)
    fid = None
    if extractor is not None:
        if reference_dir:
            ref_set, ref_name = _load_reference_dir(reference_dir), f"images in {reference_dir}"
        else:
            ref_set, ref_name = reference, "the off outputs"
        n_ref = len(ref_set) * (frames if not reference_dir else 1)
        if n_ref < 2 or len(reference) * frames < 2:
            info["fid"] = {"skipped": f"FID needs at least 2 images per set (have {n_ref} reference, "
                                      f"{len(reference) * frames} per configuration)"}
        else:
            fid = quality.FID(extractor, ref_set)
            info["fid"] = {"by": f"torchmetrics FrechetInceptionDistance on features of "
                                 f"{extractor.description}",
                           "reference": f"{ref_name} ({fid.n_reference} images)",
                           "note": "few images give a biased, high-variance FID: compare "
                                   "configurations with each other, not with published figures"}
    else:
        info["fid"] = {"skipped": fid_reason}

    rows = []
    for result in tqdm(results, desc="metrics", disable=not progress):
        label = result["label"]
        imgs = images[label]
        times, baseline = result["times_s"], result["baseline_s"]
        row: dict[str, Any] = {
            "label": label, "preset": result["preset"], "overrides": result.get("overrides", {}),
            "time_s": statistics.median(times), "time_spread_s": _spread(times),
            "baseline_s": statistics.median(baseline), "times_s": times, "baseline_times_s": baseline,
            "denoiser_times_s": result.get("denoiser_s"), "baseline_denoiser_times_s": result.get("baseline_denoiser_s"),
            "macs": result.get("macs"), "peak_memory_mib": None if result.get("peak_memory") is None
            else result["peak_memory"] / 2**20, "n_images": len(imgs),
            "resumed": result.get("resumed", False), "run_started": result.get("run_started"),
            "warnings": result.get("warnings", []),
            "applied": [a["technique"] for a in result["acceleration"]["applied"]],
            "skipped_techniques": result["acceleration"]["skipped"],
        }
        row["speedup"] = 1.0 if label == base["label"] else row["baseline_s"] / row["time_s"]
        # the same pairing, time inside the denoiser only (absent from results saved before it was measured)
        den, den_base = result.get("denoiser_s"), result.get("baseline_denoiser_s")
        row["denoiser_speedup"] = (1.0 if label == base["label"] else
                                   statistics.median(den_base) / statistics.median(den)) if den and den_base else None
        row["macs_ratio"] = (base["macs"] / row["macs"]) if row["macs"] and base.get("macs") else None
        per_psnr = per_image(psnr, reference, imgs)
        row["psnr"], row["psnr_per_image"] = _mean(per_psnr), per_psnr
        row["ssim"] = statistics.mean(per_image(ssim, reference, imgs))
        if video:
            row["per_frame"] = {"psnr": per_frame(psnr, reference, imgs),
                                "ssim": per_frame(ssim, reference, imgs)}
        flat = _as_images(imgs)[:, :3]
        row["lpips"] = (statistics.mean(quality.lpips(_as_images(reference)[:, :3], flat, lpips_metric))
                        if lpips_metric is not None else None)
        if fid is None:
            row["fid"] = None
        elif label == base["label"] and not reference_dir:
            row["fid"] = 0.0          # the reference set itself: identical features
        else:
            row["fid"] = fid(flat)
        row["clip_score"] = quality.clip_score(flat, frame_prompts, adapter) if adapter else None
        rows.append(row)
    return {"rows": rows, "info": info}


# -- formatting ------------------------------------------------------------------------------

def _fmt(value, spec: str, missing: str = "skipped") -> str:
    if value is None:
        return missing
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and abs(value) < 1e-6:
        value = 0.0                       # float noise around an exact zero (e.g. FID of a set with itself)
    text = format(value, spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text   # no "-0.00"


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


@dataclass
class EvalReport:
    """Figures per configuration (``rows``), what produced each metric (``metrics``), run facts."""

    meta: dict
    rows: list[dict]
    metrics: dict
    images: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    labels: list[str] = field(default_factory=list)

    def row(self, label: str) -> dict:
        return next(r for r in self.rows if r["label"] == label)

    def to_dict(self) -> dict:
        return _jsonable({"meta": self.meta, "metrics": self.metrics, "rows": self.rows})

    def table(self) -> str:
        # LPIPS is a column only when it was computed (it needs torchvision, outside every extra).
        with_lpips = any(r.get("lpips") is not None for r in self.rows)
        head = ("| config | wall s (median ± half-range) | off s (paired) | speedup | denoiser speedup | MACs "
                "| MACs ratio | peak mem MiB | PSNR dB | SSIM |" + (" LPIPS |" if with_lpips else "") + " FID | CLIP |")
        lines = [head, "|" + "|".join(["---"] * (13 if with_lpips else 12)) + "|"]
        for r in self.rows:
            lines.append("| " + " | ".join([c for c in [
                r["label"] + (" *" if r["resumed"] else ""),
                f"{r['time_s']:.3f} ± {r['time_spread_s']:.3f}", f"{r['baseline_s']:.3f}",
                f"{r['speedup']:.2f}x",
                _fmt(r.get("denoiser_speedup"), ".2f", "n/a") + ("x" if r.get("denoiser_speedup") else ""),
                format_macs(r["macs"]) if r["macs"] is not None else "n/a",
                _fmt(r["macs_ratio"], ".2f", "n/a") + ("x" if r["macs_ratio"] else ""),
                _fmt(r["peak_memory_mib"], ".1f", "n/a"),
                _fmt(r["psnr"], ".2f"), _fmt(r["ssim"], ".4f"),
                _fmt(r["lpips"], ".4f") if with_lpips else None,
                _fmt(r["fid"], ".2f" if r["fid"] is None or abs(r["fid"]) >= 1 else ".3g"),
                _fmt(r["clip_score"], ".2f"),
            ] if c is not None]) + " |")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        m = self.meta
        out = [f"# Evaluation: {m['model']}", "",
               f"{m['pipeline']}, {m['steps']} steps, {len(m['prompts'])} prompt(s) x "
               f"{len(m['seeds'])} seed(s) {m['seeds']}, device {m['device']} "
               f"({m['torch_threads']} threads), torch {m['torch']}, {m['date']}", "",
               self.table(), ""]
        if any(r["resumed"] for r in self.rows):
            out += ["\\* loaded from an earlier run in this folder (resume); its timings are paired "
                    "within that run.", ""]
        out += ["## How each figure was made", "",
                f"- timing: {m['timing']}; {m['repeats']} repeats, {m['warmup']} warm-up",
                f"- peak memory: {m['memory']}"]
        for name in ("macs", "psnr", "ssim", "lpips", "fid", "clip_score"):
            if name not in self.metrics:
                continue                    # not asked for (LPIPS unless lpips_net is given)
            entry = self.metrics[name]
            if "skipped" in entry:
                out.append(f"- {name}: **skipped**: {entry['skipped']}")
            else:
                extra = "".join(f"; {k}: {v}" for k, v in entry.items() if k != "by")
                out.append(f"- {name}: {entry.get('by', '')}{extra}")
        notes = []
        for r in self.rows:
            applied = ", ".join(r["applied"]) or "nothing"
            line = f"- {r['label']}: applied {applied}"
            if r["skipped_techniques"]:
                line += "; skipped " + ", ".join(f"{s['technique']} ({s['reason']})"
                                                 for s in r["skipped_techniques"])
            reasons = [s["reason"] for s in r["skipped_techniques"]]
            for w in r["warnings"]:
                if not any(reason in w for reason in reasons):      # not said twice
                    line += f"; warning: {w.splitlines()[0]}"
            notes.append(line)
        out += ["", "## Configurations", ""] + notes
        video = [r for r in self.rows if "per_frame" in r]
        if video:
            out += ["", "## Per-frame PSNR (dB) vs off", ""]
            n = len(video[0]["per_frame"]["psnr"])
            out.append("| config | " + " | ".join(f"f{i}" for i in range(n)) + " |")
            out.append("|" + "---|" * (n + 1))
            for r in video:
                out.append(f"| {r['label']} | " + " | ".join(_fmt(v, ".1f") for v in r["per_frame"]["psnr"]) + " |")
        return "\n".join(out) + "\n"

    def write(self, out_dir: str, plots: bool = True) -> None:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "report.md"), "w") as f:
            f.write(self.to_markdown())
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(self.to_dict(), f, indent=1, default=str)
        with open(os.path.join(out_dir, "report.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for r in self.rows:
                writer.writerow(["" if r.get(c) is None else r.get(c) for c in COLUMNS])
        if plots:
            from . import plots as plotting

            plotting.pareto(self.rows, os.path.join(out_dir, "pareto.png"), title=self.meta["model"])
            plotting.grids(self, out_dir)
