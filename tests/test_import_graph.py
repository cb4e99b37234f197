"""The package's imports flow one way (CONTRIBUTING.md, ../shared/DESIGN.md): no circle,
and no module imports one of a higher tier, neither at the top nor inside a function."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_fastfcn"

# Tier of each top-level module or subpackage; imports go to the same tier or lower.
TIERS = {
    "version": 0, "_keras_private": 0, "_registration": 0, "fileio": 0, "images": 0,
    "layers": 1, "losses": 1, "metrics": 1, "optimizers": 1, "data": 1,
    "models": 2, "precision": 2,
    "train": 3, "inference": 3, "evaluation": 3, "visualize": 3,
    "serving": 4, "convert": 4,
    "benchmark": 5,
    "cli": 6, "__main__": 6,
}
ROOT_TIER = 7  # keras_fastfcn/__init__.py: the lazy public API over everything


def _modules():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("keras_fastfcn",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported(module, path, node, modules):
    """The keras_fastfcn modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if path.name != "__init__.py":
                package = package[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                 for alias in node.names]
    found = []
    for name in names:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in modules and name != module and name.startswith("keras_fastfcn"):
            found.append(name)
    return found


def _graph():
    modules = _modules()
    edges = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges[module] = {target for node in ast.walk(tree)
                         if isinstance(node, (ast.Import, ast.ImportFrom))
                         for target in _imported(module, path, node, modules)}
    return edges


def _tier(module):
    parts = module.split(".")
    return ROOT_TIER if len(parts) == 1 else TIERS.get(parts[1])


def test_every_module_has_a_tier():
    assert [m for m in _graph() if _tier(m) is None] == []


def test_no_import_goes_up_a_tier():
    upward = [f"{m} -> {t}" for m, targets in _graph().items() for t in sorted(targets)
              if _tier(t) > _tier(m)]
    assert upward == []


def test_no_import_circle():
    edges = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert circles == []


# Imports inside a function are for keeping a heavy dependency lazy, and for nothing
# else: a backend or an optional runtime (below), or anything at all in the modules that
# `keras-fastfcn --help`, every command's parser and the TF Serving client load, which
# must not load Keras or TensorFlow (their import is what makes `--help` instant).
HEAVY = ("tensorflow", "tensorflow_datasets", "torch", "onnx", "onnxruntime", "tf2onnx",
         "jax", "keras.src.backend.tensorflow", "openvino", "nncf")
LIGHT_ENTRY_POINTS = """
import importlib, json, sys
import keras_fastfcn, keras_fastfcn.cli, keras_fastfcn.serving.client, keras_fastfcn.images
from keras_fastfcn.data import palettes
for command in keras_fastfcn.cli.COMMANDS:
    importlib.import_module("keras_fastfcn.cli." + command)
print(json.dumps({"modules": sorted(m for m in sys.modules if m.startswith("keras_fastfcn")),
                  "heavy": sorted(m for m in ("keras", "tensorflow") if m in sys.modules)}))
"""


def _light_modules():
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
    proc = subprocess.run([sys.executable, "-c", LIGHT_ENTRY_POINTS], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], result["heavy"]  # the light modules stay light
    return set(result["modules"])


def test_imports_inside_functions_only_keep_heavy_dependencies_lazy():
    light = _light_modules()
    modules = _modules()
    offenders = []
    for module, path in modules.items():
        if module in light:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""] if not node.level else ["."]
                else:
                    continue
                for name in names:
                    if not any(name == h or name.startswith(h + ".") for h in HEAVY):
                        offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} "
                                         f"imports {name} inside {function.name}()")
    assert offenders == []
