"""Every docstring Example in the package runs as written and shows what it prints.

Examples may use the standard imports `np` (numpy), `keras`, `tf` (tensorflow) and
`keras_fastfcn` without importing them, as keras-hub's do; every other name they use is defined in the
example or imported by its module. Each runs in a fresh temporary folder (files they
write go there). An example that needs what a test cannot have (a TF Serving server,
ImageNet weights, a released checkpoint, minutes of training) marks those lines
`# doctest: +SKIP`.

TensorFlow prints shapes as `TensorShape([1, 64, 64, 3])`; the examples of layers and
models show the tuple that JAX and PyTorch print, `(1, 64, 64, 3)`, and the check reads
them as equal (tf.data examples show TensorFlow's form).
"""

import doctest
import importlib
import pathlib
import re

import numpy as np
import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_fastfcn"
MODULES = sorted(
    ".".join(("keras_fastfcn",) + path.relative_to(PACKAGE).with_suffix("").parts)
    .removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
    if path.name != "__main__.py" and ">>>" in path.read_text(encoding="utf-8")
)
_TENSOR_SHAPE = re.compile(r"TensorShape\(\[([^\]]*)\]\)")


def _as_tuple(match):
    dims = match.group(1)
    return f"({dims},)" if dims and "," not in dims else f"({dims})"


class _Checker(doctest.OutputChecker):
    def check_output(self, want, got, optionflags):
        return (super().check_output(want, got, optionflags)
                or super().check_output(want, _TENSOR_SHAPE.sub(_as_tuple, got), optionflags))


def test_every_module_with_examples_is_collected():
    assert "keras_fastfcn.layers.jpu" in MODULES and "keras_fastfcn.layers" in MODULES
    assert len(MODULES) > 50


# Modules whose examples need an optional runtime (an extra, not in `.[test]`).
NEEDS = {"keras_fastfcn.serving.openvino": "openvino"}


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module, tmp_path, monkeypatch):
    import keras
    import tensorflow as tf

    import keras_fastfcn

    if module in NEEDS:
        pytest.importorskip(NEEDS[module], reason=f"{module}'s examples need {NEEDS[module]}")
    mod = importlib.import_module(module)
    tests = [t for t in doctest.DocTestFinder().find(mod, module)
             if t.examples and t.name.startswith(module)]
    assert tests, f"{module} has '>>>' but no example doctest finds"
    failures = []
    for i, test in enumerate(tests):
        folder = tmp_path / str(i)  # a fresh folder for each example
        folder.mkdir()
        monkeypatch.chdir(folder)
        test.globs.update(np=np, keras=keras, tf=tf, keras_fastfcn=keras_fastfcn)
        report = []
        runner = doctest.DocTestRunner(
            checker=_Checker(), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        # Fresh layer-name counters (examples print names); no gc.collect(), which
        # took 44 of the 166 s that the examples take in one process.
        keras.utils.clear_session(free_memory=False)
        keras.utils.set_random_seed(0)
        if runner.run(test, out=report.append).failed:
            failures.append("".join(report))
    assert not failures, "\n".join(failures)
