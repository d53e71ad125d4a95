"""Figures of an evaluation (matplotlib, no screen): the quality-vs-speedup Pareto plot,
an image grid per prompt (off and each configuration), a frame strip per prompt for video."""

from __future__ import annotations

import math
import os

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher is better), by x."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def pareto(rows: list[dict], path: str, title: str = "") -> None:
    """PSNR vs off against wall speedup and against MACs ratio; identical outputs (PSNR inf)
    are drawn at the top edge and labelled so."""
    plt = _plt()
    finite = [r["psnr"] for r in rows if math.isfinite(r["psnr"])]
    top = (max(finite) + 5) if finite else 60.0
    ys = [r["psnr"] if math.isfinite(r["psnr"]) else top for r in rows]
    axes_x = [("wall-clock speedup vs off (x)", [r["speedup"] for r in rows])]
    if all(r.get("macs_ratio") for r in rows):
        axes_x.append(("MACs ratio vs off (x)", [r["macs_ratio"] for r in rows]))
    fig, axes = plt.subplots(1, len(axes_x), figsize=(5.5 * len(axes_x), 4.2), squeeze=False)
    for ax, (xlabel, xs) in zip(axes[0], axes_x):
        ax.scatter(xs, ys, zorder=3)
        labels: dict[tuple[float, float], list[str]] = {}
        for r, x, y in zip(rows, xs, ys):      # one label per point: coincident configs share it
            labels.setdefault((round(x, 3), round(y, 3)), []).append(r["label"])
        for (x, y), names in labels.items():
            ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if len(finite) < len(rows):
            ax.axhline(top, color="gray", lw=0.6, ls=":")
            ax.text(ax.get_xlim()[1], top, "identical to off (PSNR inf) ", fontsize=7,
                    ha="right", va="top", color="gray")
            ax.set_ylim(top=top + 2)
        front = pareto_front(list(zip(xs, ys)))
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="gray", zorder=2,
                label="Pareto front")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("PSNR vs off (dB, higher = closer)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"quality vs speedup: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _show(ax, image: torch.Tensor) -> None:
    ax.imshow(image[:3].clamp(0, 1).permute(1, 2, 0).float().numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def grids(report, out_dir: str) -> None:
    """``grids/prompt_XX.png``: rows = seeds, columns = configurations (off first);
    for video the middle frame, plus ``strips/prompt_XX.png`` with every frame (first seed)."""
    plt = _plt()
    meta, labels = report.meta, report.labels
    seeds, prompts = meta["seeds"], meta["prompts"]
    psnrs = {r["label"]: r["psnr_per_image"] for r in report.rows}
    os.makedirs(os.path.join(out_dir, "grids"), exist_ok=True)
    video = next(iter(report.images.values())).ndim == 5
    for p, prompt in enumerate(prompts):
        fig, axes = plt.subplots(len(seeds), len(labels), squeeze=False,
                                 figsize=(1.9 * len(labels), 1.9 * len(seeds) + 0.5))
        for s in range(len(seeds)):
            for c, label in enumerate(labels):
                i = p * len(seeds) + s
                image = report.images[label][i]
                _show(axes[s][c], image[image.shape[0] // 2] if video else image)
                value = psnrs[label][i]
                title = label if c == 0 else f"{label}\n{value:.1f} dB" if math.isfinite(value) \
                    else f"{label}\nidentical"
                axes[s][c].set_title(title, fontsize=8)
                if c == 0:
                    axes[s][c].set_ylabel(f"seed {seeds[s]}", fontsize=8)
        fig.suptitle(prompt[:90], fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "grids", f"prompt_{p:02d}.png"), dpi=100)
        plt.close(fig)
        if video:
            _strip(plt, report, p, prompt, os.path.join(out_dir, "strips"))


def _strip(plt, report, p: int, prompt: str, folder: str, max_frames: int = 8) -> None:
    os.makedirs(folder, exist_ok=True)
    labels, seeds = report.labels, report.meta["seeds"]
    n = report.images[labels[0]].shape[1]
    picks = sorted({round(k * (n - 1) / max(min(n, max_frames) - 1, 1)) for k in range(min(n, max_frames))})
    fig, axes = plt.subplots(len(labels), len(picks), squeeze=False,
                             figsize=(1.6 * len(picks), 1.7 * len(labels) + 0.4))
    for r, label in enumerate(labels):
        for c, f in enumerate(picks):
            _show(axes[r][c], report.images[label][p * len(seeds)][f])
            if r == 0:
                axes[r][c].set_title(f"frame {f}", fontsize=8)
            if c == 0:
                axes[r][c].set_ylabel(label, fontsize=8)
    fig.suptitle(f"{prompt[:80]} (seed {seeds[0]})", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"prompt_{p:02d}.png"), dpi=100)
    plt.close(fig)
