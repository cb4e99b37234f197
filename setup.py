from setuptools import find_packages, setup

setup(
    name="keras_fastfcn",
    version="0.2.0",
    description="FastFCN (Joint Pyramid Upsampling) semantic segmentation for Keras 3 / TensorFlow",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_fastfcn", "keras_fastfcn.*"]),
    include_package_data=True,
    package_data={"keras_fastfcn": ["py.typed", "data/*.txt", "data/*.json",
                                    "train/configs/*.yaml"]},
    install_requires=[
        # The full `tensorflow` (GPU support on Linux): `tensorflow-cpu` would hand GPU
        # users a CPU-only TensorFlow and clash with packages that need `tensorflow`.
        "tensorflow>=2.16",
        # Tested up to 3.15; keras_fastfcn/_keras_private.py names the private hooks a
        # new minor version could change (tests/test_package.py checks them).
        "keras>=3.3,<3.16",
        "tensorflow-datasets>=4.9",
        # The training command writes TensorBoard logs; TensorFlow 2.21 no longer
        # installs tensorboard itself.
        "tensorboard",
        "numpy",
        "pillow",
        "pyyaml",
    ],
    extras_require={
        "export": ["tf2onnx>=1.16", "onnxruntime", "onnx"],
        "convert": ["torch>=2.5"],
        # pytest-xdist: pytest.ini runs the tests on up to 4 cores (each worker holds
        # a TensorFlow), one worker per test file.
        # jax[cpu]: the JAX-backend training tests (tests/test_train_jax.py).
        "test": ["pytest", "pytest-xdist", "tf2onnx>=1.16", "onnxruntime", "onnx",
                 "torch==2.13.0", "jax[cpu]"],
        "jax": ["jax"],
        # keras-fastfcn export --format openvino (the IR is converted from the ONNX export)
        "openvino": ["openvino>=2026.4", "nncf>=3.4", "tf2onnx>=1.16", "onnx"],
        # The mmsegmentation parity tests (tests/test_convert_mmseg.py; skipped without
        # it). Their declared dependencies pull opencv-python, matplotlib and 7 more
        # packages, which the model code never uses; the light way (5.6 MB of wheels,
        # 35 MB installed, no OpenCV) is
        #   pip install --no-deps mmengine==0.10.7 mmcv-lite==2.1.0 mmsegmentation==1.2.2 \
        #       addict yapf platformdirs ftfy regex wcwidth
        # (mmseg 1.2.2 asserts mmcv < 2.2; ftfy and regex are imported by mmseg.utils but
        # not declared).
        "mmseg": ["torch>=2.5", "mmengine==0.10.7", "mmcv-lite==2.1.0",
                  "mmsegmentation==1.2.2", "ftfy", "regex"],
    },
    entry_points={"console_scripts": ["keras-fastfcn=keras_fastfcn.cli:main"]},
)
