#!/usr/bin/env python
"""Train FastFCN from a YAML config: the same as `keras-fastfcn train`.

Examples:
    python training/train.py --config demo
    python training/train.py --config training/configs/camvid.yaml --strategy mirrored
    python training/train.py --config ade20k_encnet_jpu_r50 --set train.batch_size=8
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_fastfcn.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train"] + sys.argv[1:]))
