"""The authors' released FastFCN models (wuhuikai/FastFCN README), as presets.

Each entry names the official checkpoint (a Google Drive file id), what it is (head,
encoder, classes, dataset) and the paper's mIoU for it. The checkpoints are PyTorch
state dicts of the official code with the deep-stem ResNets (`resnet50s`,
`resnet101s`); `FastFCNImageSegmenter.from_preset(name)` downloads one into the Keras
cache, converts it once (`keras_fastfcn.convert`, PyTorch needed for that step only)
and caches the converted model. No SHA-256 is published for these files, so
`sha256` is None: a download is checked by converting it, which fails on anything
but a checkpoint with exactly the expected keys and shapes.
"""

PRESETS = {
    "fastfcn_encnet_jpu_resnet50_pcontext": {
        "drive_id": "1Hy_GWVnTyJBNv4Hejwh5LKa8S_ph27y0",
        "head": "encnet", "encoder": "resnet50s", "upsampler": "jpu",
        "num_classes": 59, "dataset": "pascal_context",
        "paper_miou": 51.05, "protocol": "Pascal Context val, single scale",
    },
    "fastfcn_psp_jpu_resnet50_pcontext": {
        "drive_id": "1fJItp7B7uz6s69fmquqtm18A72EJE5jm",
        "head": "psp", "encoder": "resnet50s", "upsampler": "jpu",
        "num_classes": 59, "dataset": "pascal_context",
        "paper_miou": 50.89, "protocol": "Pascal Context val, single scale",
    },
    "fastfcn_deeplab_jpu_resnet50_pcontext": {
        "drive_id": "11s20bUkPrZXXmFqYpwC_h1G57CB8g2u9",
        "head": "deeplab", "encoder": "resnet50s", "upsampler": "jpu",
        "num_classes": 59, "dataset": "pascal_context",
        "paper_miou": 50.07, "protocol": "Pascal Context val, single scale",
    },
    "fastfcn_encnet_jpu_resnet101_pcontext": {
        "drive_id": "1GOIma8cXTKfTa2qSIcDO8EmctyoDzHuV",
        "head": "encnet", "encoder": "resnet101s", "upsampler": "jpu",
        "num_classes": 59, "dataset": "pascal_context",
        "paper_miou": 54.03, "protocol": "Pascal Context val, multi-scale + flip",
    },
    "fastfcn_encnet_jpu_resnet50_ade20k": {
        "drive_id": "1EdHDjNDtPmVgSD7RYjeyXy7SSYpTzYyN",
        "head": "encnet", "encoder": "resnet50s", "upsampler": "jpu",
        "num_classes": 150, "dataset": "ade20k",
        "paper_miou": 42.75, "protocol": "ADE20K val, multi-scale + flip",
    },
    "fastfcn_encnet_jpu_resnet101_ade20k": {
        "drive_id": "1WFkbf8OWJmLGnOz5M_IxIZtiHKn2_bEp",
        "head": "encnet", "encoder": "resnet101s", "upsampler": "jpu",
        "num_classes": 150, "dataset": "ade20k",
        "paper_miou": 44.34, "protocol": "ADE20K val, multi-scale + flip",
    },
}
