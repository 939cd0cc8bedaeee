"""Export an hf_mim model folder as Hub remote code, so that it loads in plain transformers without hf_mim.

transformers loads community models from the files next to the weights (`auto_map` in `config.json` /
`preprocessor_config.json`, `trust_remote_code=True`), but it only copies sibling modules imported with one dot
(`from .x import y`, see `transformers.dynamic_module_utils.get_relative_imports`), and it refuses files that import a
package the environment lacks. hf_mim's modules import each other package-relatively (`from ...layers import
Attention`), so they cannot be shipped as they are. `export_remote_code` generates the bundle from the installed
package's own source at export time (there is no second, hand-kept copy):

* it starts from the modules that define the exported classes (the config, the `Auto*` model classes registered for
  the config's `model_type`, the image processor) and follows their hf_mim imports;
* every name imported from a package (`from ...layers import Attention`) is traced to the module that defines it, so
  the bundle holds only the modules the exported classes need, not whole packages;
* each module becomes one flat file (`hf_mim/layers/attention.py` -> `hf_mim_layers_attention.py`; a model's own
  modules keep their names, `modeling_capi.py`) whose hf_mim imports are rewritten to single-dot sibling imports;
* `auto_map` is added to `config.json` and, if present, `preprocessor_config.json`.

With hf_mim installed the same folder loads natively (transformers prefers a registered class when
`trust_remote_code` is not given). Absolute `hf_mim` imports are allowed only inside `try` blocks (transformers'
import check skips those): they are the optional hooks that need the installed package, e.g. re-exporting.
"""

import ast
import importlib.util
import json
import sys
from pathlib import Path

from .._version import __version__
from .install import INSTALL_COMMAND

PACKAGE = __name__.split(".")[0]  # "hf_mim"
CONFIG_FILE, PROCESSOR_FILE = "config.json", "preprocessor_config.json"

# Auto classes in the order auto_map lists them; filled by `auto_registration.register_model`.
AUTO_CLASS_NAMES = (
    "AutoConfig",
    "AutoModel",
    "AutoModelForImageClassification",
    "AutoModelForPreTraining",
    "AutoBackbone",
    "AutoImageProcessor",
)
REMOTE_CODE_CLASSES: dict[str, dict[str, type]] = {}

# Packages a Hub user of transformers already has (transformers' own requirements and the image stack it uses);
# a bundled module importing anything else would fail transformers' import check there.
ALLOWED_THIRD_PARTY = frozenset(
    {"torch", "torchvision", "transformers", "numpy", "PIL", "safetensors", "huggingface_hub"}
)


def register_remote_code_classes(model_type: str, classes: dict[str, type]) -> None:
    unknown = set(classes) - set(AUTO_CLASS_NAMES)
    if unknown:
        raise ValueError(f"Unknown Auto classes {sorted(unknown)}; expected some of {AUTO_CLASS_NAMES}.")
    REMOTE_CODE_CLASSES[model_type] = dict(classes)


# ----------------------------------------------------------------------------------------------------------------
# Module graph
# ----------------------------------------------------------------------------------------------------------------


def _spec(module: str):
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _is_package(module: str) -> bool:
    spec = _spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def _source(module: str) -> str:
    spec = _spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"Cannot locate the source of {module}.")
    return Path(spec.origin).read_text(encoding="utf-8")


def _absolute_target(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module
    package = module if _is_package(module) else module.rpartition(".")[0]
    return importlib.util.resolve_name("." * node.level + (node.module or ""), package)


def _in_package(name: str | None) -> bool:
    return name is not None and (name == PACKAGE or name.startswith(PACKAGE + "."))


def flat_module_name(module: str) -> str:
    """`hf_mim.models.capi.modeling_capi` -> `modeling_capi`; `hf_mim.layers.attention` -> `hf_mim_layers_attention`."""
    parts = module.split(".")
    if len(parts) >= 4 and parts[1] == "models":
        return parts[-1]
    return "_".join(parts)


def _defining_module(module: str, name: str, trail: tuple = ()) -> tuple[str, str]:
    """Follow re-exports until the module whose top level defines `name` (def / class / assignment)."""
    if (module, name) in trail:
        raise ImportError(f"Import cycle while resolving {name} in {module}: {trail}")
    tree = ast.parse(_source(module))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return module, name
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return module, name
        if isinstance(node, ast.ImportFrom):
            target = _absolute_target(module, node)
            for alias in node.names:
                if (alias.asname or alias.name) == name and _in_package(target):
                    return _defining_module(target, alias.name, trail + ((module, name),))
    raise ImportError(f"{module} does not define or re-export {name!r}.")


def _inside_try(tree: ast.AST) -> set[int]:
    """ids of the import nodes that sit in a `try` block (transformers' import check ignores those)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    found.add(id(child))
    return found


def _rewrite(module: str) -> tuple[str, set[str]]:
    """Source of `module` with its hf_mim imports as sibling imports; returns (source, hf_mim modules it needs)."""
    source = _source(module)
    tree = ast.parse(source)
    in_try = _inside_try(tree)
    lines = source.splitlines(keepends=True)
    replacements, needed = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(_in_package(alias.name) for alias in node.names) and id(node) not in in_try:
                raise ImportError(f"{module}:{node.lineno} imports {PACKAGE} absolutely outside a try block.")
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        target = _absolute_target(module, node)
        if not _in_package(target):
            continue
        if node.level == 0:
            if id(node) not in in_try:
                raise ImportError(f"{module}:{node.lineno}: `from {target} import ...` outside a try block.")
            continue  # an optional hook that needs the installed package
        by_module: dict[str, list[str]] = {}
        for alias in node.names:
            if alias.name == "*":
                raise ImportError(f"{module}:{node.lineno}: star imports cannot be bundled.")
            if _spec(f"{target}.{alias.name}") is not None:
                raise ImportError(
                    f"{module}:{node.lineno}: imports the module {target}.{alias.name}; import names from it instead."
                )
            defining, original = _defining_module(target, alias.name)
            bound = alias.asname or alias.name
            by_module.setdefault(defining, []).append(original if bound == original else f"{original} as {bound}")
            needed.add(defining)
        indent = " " * node.col_offset
        new = "".join(
            f"{indent}from .{flat_module_name(m)} import {', '.join(names)}\n" for m, names in by_module.items()
        )
        replacements.append((node.lineno, node.end_lineno, new))
    for start, end, new in sorted(replacements, reverse=True):
        lines[start - 1 : end] = [new]
    return "".join(lines), needed


def bundle_sources(modules: list[str]) -> dict[str, str]:
    """Flat file name -> rewritten source for `modules` and every hf_mim module they need (transitively)."""

    files, owners, queue = {}, {}, list(modules)
    while queue:
        module = queue.pop()
        name = flat_module_name(module) + ".py"
        if name in files:
            if owners[name] != module:
                raise ValueError(f"{owners[name]} and {module} would both be bundled as {name}.")
            continue
        source, needed = _rewrite(module)
        relative = module.replace(".", "/") + ("/__init__.py" if _is_package(module) else ".py")
        header = (
            f"# Generated by {PACKAGE} {__version__} from {relative} for transformers' remote code"
            " (trust_remote_code=True).\n"
            f"# Do not edit: with {PACKAGE} installed (from a clone: `{INSTALL_COMMAND}`) this folder loads natively;"
            " re-export to update.\n"
        )
        files[name], owners[name] = header + source, module
        queue.extend(sorted(needed))
    return files


def third_party_imports(source: str) -> set[str]:
    """Top-level packages a bundled file imports outside `try` blocks (what transformers' check would require)."""
    tree = ast.parse(source)
    in_try = _inside_try(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in in_try:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names}


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------


def remote_code_classes(model_type: str) -> dict[str, type]:
    if model_type not in REMOTE_CODE_CLASSES:
        raise ValueError(
            f"model_type {model_type!r} is not an {PACKAGE} model; exportable types: {sorted(REMOTE_CODE_CLASSES)}."
        )
    return REMOTE_CODE_CLASSES[model_type]


def auto_map_for(model_type: str) -> tuple[dict[str, str], dict[str, str]]:
    """(config.json auto_map, preprocessor_config.json auto_map) for a registered model type."""
    classes = remote_code_classes(model_type)
    reference = {auto: f"{flat_module_name(cls.__module__)}.{cls.__name__}" for auto, cls in classes.items()}
    processor = {k: v for k, v in reference.items() if k == "AutoImageProcessor"}
    return {k: v for k, v in reference.items() if k != "AutoImageProcessor"}, processor


def _update_json(path: Path, **entries) -> None:
    data = json.loads(path.read_text())
    data.update(entries)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def export_remote_code(save_directory: str | Path) -> list[str]:
    """Write the remote-code bundle for the model saved in `save_directory` and add `auto_map` to its configs.

    Call it after `save_pretrained` of the model (and of the image processor, whose `preprocessor_config.json` gets
    its own `auto_map`). Returns the names of the files written."""
    directory = Path(save_directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: save the model before exporting its remote code.")
    model_type = json.loads(config_path.read_text()).get("model_type")
    classes = remote_code_classes(model_type)
    files = bundle_sources(sorted({cls.__module__ for cls in classes.values()}))
    bad = {name: third_party_imports(source) - ALLOWED_THIRD_PARTY for name, source in files.items()}
    bad = {name: sorted(packages) for name, packages in bad.items() if packages}
    if bad:
        raise ImportError(f"Bundled modules import packages a transformers user may lack: {bad}")
    for name, source in files.items():
        (directory / name).write_text(source, encoding="utf-8")
    model_map, processor_map = auto_map_for(model_type)
    _update_json(config_path, auto_map=model_map)
    if processor_map and (directory / PROCESSOR_FILE).is_file():
        _update_json(directory / PROCESSOR_FILE, auto_map=processor_map)
    return sorted(files)


def remove_auto_map(save_directory: str | Path) -> None:
    """Drop `auto_map` from a folder's configs (a save without remote code must not point at files it lacks)."""
    for name in (CONFIG_FILE, PROCESSOR_FILE):
        path = Path(save_directory, name)
        if path.is_file():
            data = json.loads(path.read_text())
            if data.pop("auto_map", None) is not None:
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
