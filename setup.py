from setuptools import find_packages, setup

setup(
    name="keras_fastfcn",
    version="0.1.0",
    description="FastFCN (Joint Pyramid Upsampling) semantic segmentation for Keras 3 / TensorFlow",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_fastfcn", "keras_fastfcn.*"]),
    include_package_data=True,
    package_data={"keras_fastfcn": ["data/*.txt", "data/*.json", "configs/*.yaml"]},
    install_requires=[
        "tensorflow>=2.16; platform_machine!='x86_64'",
        "tensorflow-cpu>=2.16; platform_machine=='x86_64'",
        "keras>=3.3",
        "tensorflow-datasets>=4.9",
        "numpy",
        "pillow",
        "pyyaml",
    ],
    extras_require={
        "export": ["tf2onnx>=1.16", "onnxruntime", "onnx"],
        "convert": ["torch>=2.5"],
        "test": ["pytest", "tf2onnx>=1.16", "onnxruntime", "onnx", "torch==2.13.0"],
        "bench": ["matplotlib"],
    },
    entry_points={"console_scripts": ["keras-fastfcn=keras_fastfcn.cli:main"]},
)
