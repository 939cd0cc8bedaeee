"""hf_mim's modules only import downwards (ARCHITECTURE.md, "Layers"): a module may import from its own floor or a
lower one, never from a floor above. Every `import` in src/hf_mim counts, also one inside a function: a lazy import
is still a dependency, and the few that stay lazy do so for an optional package or the cost of importing, not to hide
an upward edge (the rare exception is listed in ALLOWED_UPWARD with its reason)."""

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "hf_mim"

# floor -> the top-level modules / packages of hf_mim on it (ARCHITECTURE.md keeps the same table)
FLOORS = {
    0: {"_version", "layers", "masking", "optim", "losses", "image_processing_utils", "allocator", "zero3",
        "training_defaults"},
    1: {"data", "teacher", "hub"},
    2: {"models", "modeling_utils", "backbone_utils", "auto_registration", "presets"},
    3: {"trainers", "evaluation", "finetuning"},
    4: {"__init__"},  # the package root re-exports everything
}  # fmt: skip
FLOOR_OF = {unit: floor for floor, units in FLOORS.items() for unit in units}

# (importing module, imported unit): why the edge may point up. Keep this empty where possible.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def _module_name(path: Path, source: Path) -> str:
    parts = path.relative_to(source.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def hf_mim_imports(path: Path, source: Path) -> list[tuple[str, int]]:
    """(imported hf_mim module, line) for every import statement in the file, relative ones resolved."""
    module = _module_name(path, source)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "hf_mim":
                continue
            if node.module is None or target == "hf_mim":  # `from . import x` / `from hf_mim import x`: x counts
                found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "hf_mim"]
    return found


def upward_imports(source: Path) -> list[str]:
    """Every import in the package at `source` that points to a higher floor, as 'file:line: ...'."""
    upward = []
    for path in sorted(source.rglob("*.py")):
        module = _module_name(path, source)
        floor = FLOOR_OF[_unit(module)]
        for target, line in hf_mim_imports(path, source):
            unit = _unit(target)
            if unit in FLOOR_OF and FLOOR_OF[unit] > floor and (module, unit) not in ALLOWED_UPWARD:
                upward.append(f"{path.relative_to(source.parent)}:{line}: {module} (floor {floor}) imports {target} "
                              f"(floor {FLOOR_OF[unit]})")  # fmt: skip
    return upward


def test_every_module_has_a_floor():
    units = {_unit(_module_name(path, SOURCE)) for path in SOURCE.rglob("*.py")}
    assert units - FLOOR_OF.keys() == set(), "put new top-level modules on a floor in FLOORS and ARCHITECTURE.md"


def test_imports_only_point_down():
    upward = upward_imports(SOURCE)
    assert not upward, "imports pointing up a floor:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check itself: a layers module importing from the trainers is reported, also inside a function, and a
    downward import is not."""
    fake = tmp_path / "hf_mim"
    (fake / "layers").mkdir(parents=True)
    (fake / "layers" / "__init__.py").write_text("from ..losses import x\n")
    (fake / "layers" / "bad.py").write_text("def f():\n    from ..trainers.arguments import x\n    return x\n")
    assert upward_imports(fake) == [
        "hf_mim/layers/bad.py:2: hf_mim.layers.bad (floor 0) imports hf_mim.trainers.arguments (floor 3)"
    ]
