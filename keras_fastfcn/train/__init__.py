"""Training: the official FastFCN recipe with `model.fit`, from a YAML config or from Python.

Example:
>>> from keras_fastfcn import train
>>> cfg = train.load_config("demo", ["train.epochs=1", "output_dir=runs/demo"])
>>> cfg["train"]["epochs"], cfg["data"]["source"]
(1, 'demo')
>>> results = train.run(cfg)  # what the CLI does (minutes on a CPU)  # doctest: +SKIP
>>> results = train.run(cfg, callbacks=[  # doctest: +SKIP
...     keras.callbacks.EarlyStopping("val_score", mode="max")])

Pieces for a loop of your own: `build_segmenter`, `compile_segmenter` (the official
optimizer and schedule), `datasets` (the official augmentation), the callbacks in
`keras_fastfcn.train.callbacks`, and `make_strategy`.
"""

from keras_fastfcn.train import callbacks
from keras_fastfcn.train.config import (CONFIG_DIR, DEFAULTS, effective_lr, load_config,
                                        resolve_config_path)
from keras_fastfcn.models.batchnorm import synchronize_batchnorm
from keras_fastfcn.train.distribute import STRATEGIES, Replicas, is_chief, make_strategy
from keras_fastfcn.train.runner import (build_segmenter, compile_segmenter, datasets,
                                        final_evaluation, input_loader, run)

__all__ = ["CONFIG_DIR", "DEFAULTS", "Replicas", "STRATEGIES", "build_segmenter", "callbacks",
           "compile_segmenter", "datasets", "effective_lr", "final_evaluation", "input_loader",
           "is_chief",
           "load_config", "make_strategy", "resolve_config_path", "run",
           "synchronize_batchnorm"]
