"""The package's layers, as docs/DESIGN.md lists them, checked from the import statements:
no module imports a module of a higher layer, and no import cycle exists anywhere."""

import ast
import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "accelerate_diffusion"


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / PACKAGE).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Modules of the package that ``name`` imports (anywhere in the file, lazy imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(PACKAGE):
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & modules.keys()
            found |= subs
            if len(subs) < len(node.names) and target in modules:
                found.add(target)     # names taken from the module itself, not submodules
    found.discard(name)
    return found


def _layers() -> list[tuple[int, list[str]]]:
    """(layer, module patterns) from the layer table in docs/DESIGN.md."""
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    rows = re.findall(r"^\| (\d+) [^|]*\| ([^|]+) \|", text, flags=re.M)
    assert rows, "docs/DESIGN.md has no layer table"
    return [(int(n), re.findall(r"`([^`]+)`", cell)) for n, cell in rows]


def _layer_of(name: str, layers) -> int:
    short = name[len(PACKAGE) + 1:] if name != PACKAGE else PACKAGE
    matches = [n for n, patterns in layers for p in patterns if fnmatch.fnmatchcase(short, p)]
    assert matches, f"{name} is in no layer of docs/DESIGN.md"
    return max(matches)


def test_every_import_goes_to_the_same_or_a_lower_layer():
    modules = _modules()
    layers = _layers()
    upward = []
    for name, path in modules.items():
        mine = _layer_of(name, layers)
        for target in _imports(name, path, modules):
            if _layer_of(target, layers) > mine:
                upward.append(f"{name} (layer {mine}) imports {target} (layer {_layer_of(target, layers)})")
    assert upward == []


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # Tarjan's strongly connected components
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []
