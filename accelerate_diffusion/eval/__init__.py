"""Evaluation: counted MACs, fidelity to the unaccelerated output, and reports.

``evaluate(pipe_or_name, prompts, presets, steps, seeds, out_dir)`` runs every preset
from the same seeds and writes the report (see :mod:`.runner`).
"""

_LAZY = {"evaluate": "runner", "EvalConfig": "runner", "EvalReport": "report"}


def __getattr__(name):
    # Lazy: api.py imports eval.macs, and the runner imports api.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
