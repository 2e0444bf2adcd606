"""The package's layers point one way: every import between top-level packages of ``src/cen``
(function-local ones too) goes from a higher layer to a lower one, so there is no cycle.

    ground      errors, atomic
    core        the method
    data, models, nn (nn re-exports core's modules)
    tasks       the task contract and the tasks
    train       the engine
    analysis, export
    cli
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cen"
LAYERS = {
    "errors": 0,
    "atomic": 0,
    "core": 1,
    "nn": 2,  # a facade re-exporting the modality modules of core
    "data": 2,
    "models": 2,
    "tasks": 3,
    "train": 4,
    "analysis": 5,
    "export": 5,
    "cli": 6,
}
#: The package's own entry points, above every layer (``cen.load_model`` is imported lazily there).
TOP = {"__init__", "__main__"}


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "cen" else None


def imports() -> dict[tuple[str, str], str]:
    """``{(importing unit, imported unit): first file}`` over every import statement of ``src/cen``."""
    found: dict[tuple[str, str], str] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts)
        unit = _unit(module.removesuffix(".__init__")) or "__init__"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = rel.parts[: len(rel.parts) - node.level]
                    targets = [".".join([*base, *([node.module] if node.module else [])])]
                else:
                    targets = [node.module or ""]
            else:
                continue
            for target in targets:
                other = _unit(target)
                if other and other != unit:
                    found.setdefault((unit, other), str(path.relative_to(SRC)))
    return found


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or p.is_dir()}
    units = {u for u in units if not u.startswith("__") and u != "cen.egg-info"}
    assert units == set(LAYERS), f"new top-level modules need a layer here: {sorted(units ^ set(LAYERS))}"


def test_imports_point_down_and_form_no_cycle():
    edges = imports()
    assert len(edges) > 15  # the walk sees the package's imports
    upward = [
        f"{a} -> {b} ({where})" for (a, b), where in edges.items() if a not in TOP and LAYERS[a] <= LAYERS[b] and a != b
    ]
    same_layer_pairs = [f"{a} <-> {b}" for (a, b) in edges if a not in TOP and (b, a) in edges]
    assert not upward, "imports that point up or sideways into a layer that may import back:\n" + "\n".join(upward)
    assert not same_layer_pairs


def test_the_walk_finds_function_local_imports():
    # cen/__init__.py imports the engine inside a function (cen.load_model): the walk must see it
    assert ("__init__", "train") in imports()
