"""`keras-fastfcn train` (with the test encoder) that kills itself at a chosen write.

For the fault-injection test: with `KERAS_FASTFCN_TEST_KILL="REGEX@N"` the process
sends itself SIGKILL just before the N-th `os.replace` onto a file or folder whose
name matches REGEX (every write of the package is a temporary + `os.replace`), so the
kill lands between two named write phases. For a checkpoint folder (`ckpt-...`) the
weights file inside the temporary is first cut in half, as a kill in the middle of
writing it would leave it.

    KERAS_FASTFCN_TEST_KILL='^best\\.keras$@1' python tests/fault_train.py train --config demo ...

With `KERAS_FASTFCN_TEST_NO_TF=1`, `import tensorflow` fails in the process, as on a
host that has JAX and no TensorFlow.
"""

import os
import re
import signal
import sys

import tiny_encoder


def _install(spec):
    pattern, count = spec.rsplit("@", 1)
    pattern, count, seen = re.compile(pattern), int(count), [0]
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if pattern.search(os.path.basename(os.fspath(dst))):
            seen[0] += 1
            if seen[0] == count:
                weights = os.path.join(src, "model.weights.h5")
                if os.path.isfile(weights):
                    os.truncate(weights, os.path.getsize(weights) // 2)
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace


if __name__ == "__main__":
    if os.environ.get("KERAS_FASTFCN_TEST_NO_TF"):
        # A host without TensorFlow (the JAX GPU machines): imports of it fail.
        sys.modules["tensorflow"] = None
    from keras_fastfcn.cli import main

    if os.environ.get("KERAS_FASTFCN_TEST_KILL"):
        _install(os.environ["KERAS_FASTFCN_TEST_KILL"])
    tiny_encoder.register()
    sys.exit(main(sys.argv[1:]))
