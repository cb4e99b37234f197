"""Registers keras_fastfcn's Keras classes once Keras is imported, without importing it.

`import keras_fastfcn` must stay light: `keras-fastfcn --help` and the TF Serving
client (`keras_fastfcn.serving.client`) must not load TensorFlow. Yet
`keras.models.load_model("model.keras")` after `import keras_fastfcn` needs every
class of the package registered with Keras, which finds custom classes only by their
registered names. So registration follows Keras:

- if Keras is already imported, `install()` imports the registering modules at once;
- otherwise a finder on `sys.meta_path` watches for the first import of `keras`
  (and of keras_fastfcn's own modules) and imports the registering modules as soon
  as Keras is imported and no keras_fastfcn import is half done (importing them
  while one of their own dependencies is half imported would fail). The finder
  removes itself then; it changes nothing about how modules load.
"""

import importlib
import importlib.abc
import sys
import warnings

# The modules that define the registered classes (layers, models, optimizer, metrics).
MODULES = ("keras_fastfcn.layers", "keras_fastfcn.models", "keras_fastfcn.optimizers",
           "keras_fastfcn.metrics")

_state = {"registered": False, "depth": 0}


def register():
    """Imports the registering modules (once)."""
    if _state["registered"]:
        return
    _state["registered"] = True
    _uninstall()
    try:
        for name in MODULES:
            importlib.import_module(name)
    except Exception as err:  # never break the user's `import keras`
        _state["registered"] = False
        warnings.warn(f"keras_fastfcn could not register its Keras classes ({err}); "
                      "import keras_fastfcn.models before loading its models.", stacklevel=2)


def _keras_imported():
    module = sys.modules.get("keras")
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then registers if that ended the last import in progress."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        _state["depth"] += 1
        try:
            self._loader.exec_module(module)
        finally:
            _state["depth"] -= 1
        # Keras itself is still marked as initializing here, though it has run.
        if _state["depth"] == 0 and (module.__name__ == "keras" or _keras_imported()):
            register()

    def __getattr__(self, name):  # get_source, get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if _state["registered"] or not (fullname == "keras"
                                        or fullname.startswith("keras_fastfcn.")):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


_FINDER = _Finder()


def install():
    """Registers now if Keras is imported, else when it is (see the module docstring)."""
    if _keras_imported():
        register()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _uninstall():
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
