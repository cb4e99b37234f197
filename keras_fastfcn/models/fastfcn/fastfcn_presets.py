"""The released FastFCN models, as presets: the authors' six and mmsegmentation's twelve.

Each entry names its checkpoint, what it is (head, encoder, classes, dataset), the
mIoU its source reports (`miou` single scale, `miou_ms_flip` multi-scale + flip, None
where not reported), the protocol that number was measured with, and `inference`: the
`Predictor` options of that protocol, which `keras-fastfcn evaluate/predict --model
NAME` apply unless flags override them. `FastFCNImageSegmenter.from_preset(name)`
downloads the checkpoint into the Keras cache, converts it once (PyTorch needed for
that step only) and caches the converted model.

- The authors' (wuhuikai/FastFCN README): PyTorch state dicts of the official code with
  the deep-stem ResNets (`resnet50s`, `resnet101s`) on Google Drive (`drive_id`). No
  checksum is published for them: a download is checked by converting it, which fails
  on anything but a checkpoint with exactly the expected keys and shapes.
- mmsegmentation's (open-mmlab/mmsegmentation `configs/fastfcn/metafile.yaml`):
  ResNetV1c-50 (`resnet50_v1c`) with JPU and PSP, ASPP or Enc heads on Cityscapes and
  ADE20K (`"format": "mmseg"`, `keras_fastfcn.convert.mmseg`). mmcv's publishing script
  names each file after the first 8 hex digits of its SHA-256 (`..._053722-5d1a2648.pth`),
  which is checked after the download (`sha256_prefix`). Cityscapes has two models per
  head, trained with batch 8 (4 GPUs x 2, "512x1024_80k" in the URL) and batch 16
  (4 x 4, "4x4_512x1024_80k"): the metafile names both "4xb2-80k", so the names here
  say `_b8` / `_b16`; ADE20K has two schedules, `_80k` / `_160k`.

`download_mb` is the file's size in MB (10^6 bytes), computed from the parameter
count: mmsegmentation's files hold the float32 weights only; the authors' also the
optimizer's momentum and the ImageNet classifier (the one size on record,
`deeplab_jpu_res50_pcontext.pth.tar`, 488 MiB = 511.9 MB, matches).
"""

# The official test script's options: `--base-size 520 --crop-size 480`, sliding window.
_OFFICIAL_INFERENCE = {"mode": "slide", "base_size": 520, "crop_size": 480}

PRESETS = {
    "fastfcn_encnet_jpu_resnet50_pcontext": {
        "drive_id": "1Hy_GWVnTyJBNv4Hejwh5LKa8S_ph27y0",
        "head": "encnet", "encoder": "resnet50s", "upsampler": "jpu",
        "num_classes": 59, "dataset": "pascal_context", "miou": 51.05,
        "protocol": "Pascal Context val, single scale", "download_mb": 396,
    },
    "fastfcn_psp_jpu_resnet50_pcontext": {
        "drive_id": "1fJItp7B7uz6s69fmquqtm18A72EJE5jm",
        "head": "psp", "encoder": "resnet50s", "upsampler": "jpu",
        "num_classes": 59, "dataset": "pascal_context", "miou": 50.89,
        "protocol": "Pascal Context val, single scale", "download_mb": 567,
    },
    "fastfcn_deeplab_jpu_resnet50_pcontext": {
        "drive_id": "11s20bUkPrZXXmFqYpwC_h1G57CB8g2u9",
        "head": "deeplab", "encoder": "resnet50s", "upsampler": "jpu",
        "num_classes": 59, "dataset": "pascal_context", "miou": 50.07,
        "protocol": "Pascal Context val, single scale", "download_mb": 512,
    },
    "fastfcn_encnet_jpu_resnet101_pcontext": {
        "drive_id": "1GOIma8cXTKfTa2qSIcDO8EmctyoDzHuV",
        "head": "encnet", "encoder": "resnet101s", "upsampler": "jpu",
        "num_classes": 59, "dataset": "pascal_context", "miou_ms_flip": 54.03,
        "protocol": "Pascal Context val, multi-scale + flip", "download_mb": 548,
    },
    "fastfcn_encnet_jpu_resnet50_ade20k": {
        "drive_id": "1EdHDjNDtPmVgSD7RYjeyXy7SSYpTzYyN",
        "head": "encnet", "encoder": "resnet50s", "upsampler": "jpu",
        "num_classes": 150, "dataset": "ade20k", "miou_ms_flip": 42.75,
        "protocol": "ADE20K val, multi-scale + flip", "download_mb": 397,
    },
    "fastfcn_encnet_jpu_resnet101_ade20k": {
        "drive_id": "1WFkbf8OWJmLGnOz5M_IxIZtiHKn2_bEp",
        "head": "encnet", "encoder": "resnet101s", "upsampler": "jpu",
        "num_classes": 150, "dataset": "ade20k", "miou_ms_flip": 44.34,
        "protocol": "ADE20K val, multi-scale + flip", "download_mb": 549,
    },
}
for _entry in PRESETS.values():
    _entry["inference"] = dict(_OFFICIAL_INFERENCE)

SOURCE = "wuhuikai/FastFCN (the authors' release)"
LICENSE = "MIT (wuhuikai/FastFCN)"

# ------------------------------------------------------------------ mmsegmentation

MMSEG_SOURCE = "open-mmlab/mmsegmentation"
MMSEG_LICENSE = "Apache-2.0"
_MMSEG_URL = "https://download.openmmlab.com/mmsegmentation/v0.5/fastfcn/"
# mmsegmentation's test pipelines: `Resize(scale=(2048, 1024), keep_ratio=True)` for
# Cityscapes, `(2048, 512)` for ADE20K; whole-image inference (test_cfg mode='whole').
MMSEG_FIT = {"cityscapes": (2048, 1024), "ade20k": (2048, 512)}
_MMSEG_PROTOCOL = {
    "cityscapes": "Cityscapes val, whole image resized to fit 2048x1024 (mmsegmentation's "
                  "test pipeline); MS+flip: that scale x 0.5-1.75, flipped, softmax averaged",
    "ade20k": "ADE20K val, whole image resized to fit 2048x512 (mmsegmentation's test "
              "pipeline); MS+flip: that scale x 0.5-1.75, flipped, softmax averaged",
}
# The heads' names in mmsegmentation's file names -> (preset name, registry head,
# file size in MB by dataset: the float32 weights of the 19 / 150 class model).
_MMSEG_HEADS = {"psp": ("psp", "psp", {"cityscapes": 275, "ade20k": 276}),
                "aspp": ("aspp", "mmseg_aspp", {"cityscapes": 352, "ade20k": 352}),
                "enc": ("encnet", "mmseg_encnet", {"cityscapes": 223, "ade20k": 223})}
# (the folder under _MMSEG_URL, the file's date and SHA-256 prefix, mIoU, mIoU MS+flip),
# as configs/fastfcn/metafile.yaml lists them.
_MMSEG_RELEASES = [
    ("fastfcn_r50-d32_jpu_psp_512x1024_80k_cityscapes", "20210928_053722-57749bed",
     79.26, 80.86),
    ("fastfcn_r50-d32_jpu_psp_4x4_512x1024_80k_cityscapes", "20210925_061841-77e87b0a",
     78.76, 80.03),
    ("fastfcn_r50-d32_jpu_aspp_512x1024_80k_cityscapes", "20210928_053722-5d1a2648",
     79.12, 80.58),
    ("fastfcn_r50-d32_jpu_aspp_4x4_512x1024_80k_cityscapes", "20210924_214357-72220849",
     79.52, 80.91),
    ("fastfcn_r50-d32_jpu_enc_512x1024_80k_cityscapes", "20210928_030036-78da5046",
     77.97, 79.92),
    ("fastfcn_r50-d32_jpu_enc_4x4_512x1024_80k_cityscapes", "20210926_093217-e1eb6dbb",
     78.6, 80.25),
    ("fastfcn_r50-d32_jpu_psp_512x512_80k_ade20k", "20210930_225137-993d07c8", 41.4, 42.12),
    ("fastfcn_r50-d32_jpu_psp_512x512_160k_ade20k", "20211008_105455-e8f5a2fd", 42.63, 43.71),
    ("fastfcn_r50-d32_jpu_aspp_512x512_80k_ade20k", "20211013_190619-3aa40f2d", 41.88, 42.91),
    ("fastfcn_r50-d32_jpu_aspp_512x512_160k_ade20k", "20211008_152246-27036aee",
     43.58, 44.92),
    ("fastfcn_r50-d32_jpu_enc_512x512_80k_ade20k", "20210930_225214-65aef6dd", 40.88, 42.36),
    ("fastfcn_r50-d32_jpu_enc_512x512_160k_ade20k", "20211008_105456-d875ce3c", 42.5, 44.21),
]


def _mmseg_entry(folder, stamp, miou, miou_ms_flip):
    """A preset name and entry from one row of `_MMSEG_RELEASES`."""
    parts = folder.split("_")  # fastfcn r50-d32 jpu HEAD [4x4] SIZE SCHEDULE DATASET
    name, head, size_mb = _MMSEG_HEADS[parts[3]]
    dataset = parts[-1]
    variant = ("b16" if "4x4" in parts else "b8") if dataset == "cityscapes" else parts[-2]
    file_name = f"{folder}_{stamp}.pth"
    return f"fastfcn_{name}_jpu_resnet50_v1c_{dataset}_{variant}", {
        "format": "mmseg", "url": f"{_MMSEG_URL}{folder}/{file_name}", "file_name": file_name,
        "sha256_prefix": stamp.rsplit("-", 1)[1],
        "head": head, "encoder": "resnet50_v1c", "upsampler": "jpu",
        "num_classes": {"cityscapes": 19, "ade20k": 150}[dataset], "dataset": dataset,
        "miou": miou, "miou_ms_flip": miou_ms_flip, "protocol": _MMSEG_PROTOCOL[dataset],
        "inference": {"protocol": "mmseg", "keep_ratio_fit": MMSEG_FIT[dataset]},
        # What the converter builds (`convert.mmseg.build_mmseg_segmenter`), for
        # `from_preset(name, load_weights=False)`.
        "align_corners": False, "aux_weight": 0.4,
        "source": MMSEG_SOURCE, "license": MMSEG_LICENSE, "download_mb": size_mb[dataset],
    }


PRESETS.update(_mmseg_entry(*release) for release in _MMSEG_RELEASES)


def describe(name, entry):
    """The public description of preset `name` (what `list_presets()` and the classes'
    `.presets` show): what it is, its data, reported metrics and where it comes from."""
    head, encoder = entry["head"], entry["encoder"]
    upsampler = entry.get("upsampler", "jpu")
    dataset = entry.get("dataset")
    miou, ms_flip = entry.get("miou"), entry.get("miou_ms_flip")
    return {
        "description": (f"{head} head on {encoder} with {upsampler or 'a dilated encoder'}, "
                        f"{entry['num_classes']} classes"
                        + (f", trained on {dataset}" if dataset else "")),
        "head": head, "encoder": encoder, "upsampler": upsampler,
        "num_classes": entry["num_classes"], "dataset": dataset,
        "metrics": {"mIoU": miou, "mIoU_ms_flip": ms_flip, "protocol": entry.get("protocol")},
        # The one number the source reports first (before `metrics` had both).
        "paper_miou": miou if miou is not None else ms_flip,
        "inference": dict(entry.get("inference") or {}),
        "source": entry.get("source", SOURCE),
        "license": entry.get("license", LICENSE),
        "file": file_name(name, entry),
        "url": download_page(entry),
        "download_mb": entry.get("download_mb"),
    }


def file_name(name, entry):
    """The checkpoint's file name in the download cache (and for the manual step)."""
    return entry.get("file_name") or f"{name}.pth.tar"


def download_page(entry):
    """Where a person downloads the checkpoint by hand."""
    if "url" in entry:
        return entry["url"]
    return f"https://drive.google.com/open?id={entry['drive_id']}"
