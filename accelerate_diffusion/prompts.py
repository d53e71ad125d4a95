"""Prompts files, read in one place for ``generate``, ``eval`` and ``search``.

A .txt file has one prompt per line; a .jsonl or .csv file has one request per row with the
fields of :class:`Item`. Every error names the file, the line and the field.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

ITEM_FIELDS = ("prompt", "negative_prompt", "seed", "height", "width", "steps", "guidance")
LIMITS = {"height": (8, 1_048_576), "width": (8, 1_048_576), "steps": (1, 1000), "guidance": (0.0, 100.0)}


@dataclass
class Item:
    """One generation request; ``index`` is its row in the input, which names its files."""

    index: int
    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None

    def key(self, image: int) -> str:
        return f"{self.index:05d}_{image:02d}"


def parse_row(row: dict, where: str) -> dict:
    """Validate one row's fields and types; errors name the row (line) and the field."""
    unknown = sorted(set(row) - set(ITEM_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(ITEM_FIELDS)}")
    out: dict[str, Any] = {}
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: 'prompt' must be a non-empty string")
    out["prompt"] = prompt.strip()
    if row.get("negative_prompt") not in (None, ""):
        out["negative_prompt"] = str(row["negative_prompt"])
    for name, kind in (("seed", int), ("height", int), ("width", int), ("steps", int), ("guidance", float)):
        value = row.get(name)
        if value in (None, ""):
            continue
        try:
            number = kind(value)
            if kind is int and float(value) != number:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{where}: '{name}' must be {'an integer' if kind is int else 'a number'}, "
                             f"got {value!r}") from None
        if name in LIMITS and not LIMITS[name][0] <= number <= LIMITS[name][1]:
            raise ValueError(f"{where}: '{name}' = {number} is out of range; allowed "
                             f"[{LIMITS[name][0]}, {LIMITS[name][1]}]")
        out[name] = number
    return out


def read_prompts(path: str | os.PathLike) -> list[Item]:
    """Read a prompts file: .txt (one prompt per line; blank lines and lines starting with # are
    skipped), .jsonl (one JSON object per line) or .csv (a header row naming the columns)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts: file not found: {path}")
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict]] = []
    with open(path, newline="", encoding="utf-8") as f:
        if suffix == ".jsonl":
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path.name} line {line_no}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path.name} line {line_no}: expected a JSON object")
                rows.append((line_no, row))
        elif suffix == ".csv":
            reader = csv.DictReader(f)
            if not reader.fieldnames or "prompt" not in reader.fieldnames:
                raise ValueError(f"{path.name} line 1: the CSV header must include 'prompt'")
            for row in reader:
                if None in row:
                    raise ValueError(f"{path.name} line {reader.line_num}: more values than header columns")
                rows.append((reader.line_num, row))
        else:
            rows = [(n, {"prompt": line.rstrip("\n")}) for n, line in enumerate(f, 1)
                    if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise ValueError(f"prompts: no prompt in {path} (one prompt per line, or rows with a 'prompt' field)")
    return [Item(index=i, **parse_row(row, f"{path.name} line {line_no}")) for i, (line_no, row) in enumerate(rows)]


def prompt_texts(prompts: str | os.PathLike | Sequence[str], use: str = "eval") -> list[str]:
    """The prompt texts of a prompts file (any of the formats above) or of a list. Per-row settings
    (seed, steps, size, ...) are refused: ``use`` (eval, search) sets those for every prompt."""
    if isinstance(prompts, (str, os.PathLike)):
        items = read_prompts(prompts)
        for item in items:
            fixed = [name for name in ITEM_FIELDS[1:] if getattr(item, name) is not None]
            if fixed:
                raise ValueError(f"{Path(prompts).name} row {item.index + 1}: {use} reads only 'prompt'; "
                                 f"{', '.join(fixed)} per row is for generate (use {use}'s own options)")
        return [item.prompt for item in items]
    prompts = [str(p) for p in prompts]
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("prompts: expected a non-empty list of non-empty prompts")
    return prompts
