"""Counting multiply-accumulates of the denoiser with ``torch.utils.flop_counter``.

``FlopCounterMode`` counts everything run inside it (its module argument does not
restrict it) and has no formula for the CPU attention kernel, so: register one, and
open the counter only around denoiser calls (the clock hook does that).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

_registered = False


def register_cpu_attention_flops() -> None:
    """Teach FlopCounterMode the CPU flash-attention kernel (same cost as the CUDA one)."""
    global _registered
    if _registered:
        return
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        from torch.utils.flop_counter import flop_registry

        if op not in flop_registry and op.default not in flop_registry:
            @register_flop_formula(op)
            def _cpu_flash_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
                return sdpa_flop_count(query, key, value)  # shapes, passed by the decorator
    _registered = True


class MacCounter:
    """Context manager that adds the MACs run inside it to ``self.macs``."""

    def __init__(self):
        register_cpu_attention_flops()
        self.macs = 0
        self._mode = None

    def __enter__(self):
        self._mode = FlopCounterMode(display=False)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        self.macs += self._mode.get_total_flops() // 2
        self._mode = None
        return False


def format_macs(macs: float | None) -> str:
    if macs is None:
        return "n/a"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= scale:
            return f"{macs / scale:.2f}{unit}"
    return f"{macs:.0f}"
