"""`tiny_resnet`: a small encoder for tests whose point is not the encoder.

The official deep-stem ResNet with one bottleneck block per stage keeps the real channel
widths (256/512/1024/2048), so every head and the JPU fit it, with a graph about ten
times smaller than ResNet-50's to trace, train and export on a 2-core CI machine.

Run as a script it is the `keras-fastfcn` command with `tiny_resnet` registered, for
the end-to-end tests that start the command in a subprocess:

    python tests/tiny_encoder.py train --config demo --set model.encoder=tiny_resnet
"""

import sys

NAME = "tiny_resnet"


def register():
    """Registers `tiny_resnet` with the encoder registry (once) and returns its name."""
    from keras_fastfcn.models import registry
    from keras_fastfcn.models.encoders.resnet_deepstem import build_resnet_deepstem

    if NAME not in registry.available("encoder"):
        registry.register_encoder(
            NAME, lambda output_stride, weights: build_resnet_deepstem(
                (1, 1, 1, 1), output_stride, weights, name=f"{NAME}_os{output_stride}"),
            "torch")
    return NAME


if __name__ == "__main__":
    from keras_fastfcn.cli import main

    register()
    sys.exit(main(sys.argv[1:]))
