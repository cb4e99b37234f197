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

SOURCE = "wuhuikai/FastFCN (the authors' release)"
LICENSE = "MIT (wuhuikai/FastFCN)"


def describe(name, entry):
    """The public description of preset `name` (what `list_presets()` and the classes'
    `.presets` show): what it is, its data, reported metrics and where it comes from."""
    head, encoder = entry["head"], entry["encoder"]
    upsampler = entry.get("upsampler", "jpu")
    dataset = entry.get("dataset")
    return {
        "description": (f"{head} head on {encoder} with {upsampler or 'a dilated encoder'}, "
                        f"{entry['num_classes']} classes"
                        + (f", trained on {dataset}" if dataset else "")),
        "head": head, "encoder": encoder, "upsampler": upsampler,
        "num_classes": entry["num_classes"], "dataset": dataset,
        "metrics": {"mIoU": entry.get("paper_miou"), "protocol": entry.get("protocol")},
        "paper_miou": entry.get("paper_miou"),
        "source": entry.get("source", SOURCE),
        "license": entry.get("license", LICENSE),
        "file": file_name(name, entry),
        "url": download_page(entry),
    }


def file_name(name, entry):
    """The checkpoint's file name in the download cache (and for the manual step)."""
    return entry.get("file_name") or f"{name}.pth.tar"


def download_page(entry):
    """Where a person downloads the checkpoint by hand."""
    if "url" in entry:
        return entry["url"]
    return f"https://drive.google.com/open?id={entry['drive_id']}"
