"""`keras-fastfcn predict`: class maps, colour masks and overlays for images.

For each input image `NAME.ext` it writes into the output folder:

- `NAME_labels.png`: the class index of every pixel (8-bit grayscale, mode L; 16-bit
  when the model has more than 256 classes), at the image's size;
- `NAME_color.png`: the class map in the dataset's palette (RGB);
- `NAME_overlay.png`: the photo with the colour mask blended on it and, on the
  right, a legend of the classes present (largest area first).

Inputs: one image file or a folder (its `.jpg .jpeg .png .bmp .webp .tif .tiff` files,
those of its subfolders too, whose outputs go to the same subfolders of the output
folder; hidden files and folders skipped), read with the package's one decoding policy
(`keras_fastfcn.images`: EXIF orientation applied; 16-bit, grayscale and RGBA
converted to 8-bit RGB with a warning).

Memory: `--max-pixels` bounds the network input. Larger images are shrunk to it; if
the scales (`--scales`, `--ms`), `--base-size` or, in slide mode, `--crop-size` (the
image padded to at least the window size) would make an image's network input larger,
the command says which option, the size and the budget, before the model loads.

Bad input policy: every input is opened and decoded *before* the first prediction;
if any fails (not an image, truncated, unreadable), the command names it and exits
with status 1 without creating the output folder or writing anything. Outputs are
written per image through temporary files and renamed into place, so an image's
files either all appear complete or not at all; if the run stops part-way (e.g. out
of memory), the images finished before it keep their outputs.

`--model` may name a released model (`kf.models.list_presets()`, downloaded and
converted on first use): it predicts with its protocol unless flags say otherwise
(mmsegmentation's: each image resized to fit 2048x1024 for Cityscapes, 2048x512 for
ADE20K, `--protocol mmseg`).

An exported `.onnx`, `.tflite` or OpenVINO `.xml` model (`keras-fastfcn export`, any
precision) predicts the same way, through ONNX Runtime / TFLite / OpenVINO
(`serving.runtime.ExportPredictor`), with the inference options it was exported with
(the inference flags are refused for it). A
fixed-size export (every TFLite file) gets each image resized to its input size, and
the class map is resized back to the image (nearest), with a warning.

Example:
    keras-fastfcn predict --model m.keras --input photos/ --output predictions/ --ms
    keras-fastfcn predict --model fastfcn_int8.tflite --input photos/ --output int8/
"""

import os
import sys

from keras_fastfcn.cli.common import (add_inference_arguments, check_model_arg,
                                      check_output_folder, inference_options, max_pixels,
                                      open_predictor, refuse_export_flags)
from keras_fastfcn.images import IMAGE_EXTENSIONS, ImageError, read_image

OUTPUT_SUFFIXES = ("_labels.png", "_color.png", "_overlay.png")


def collect_inputs(path, skip=None):
    """The image files named by `--input` (a file, or a folder's image files, its
    subfolders' too, but not the folder `skip`: the outputs), sorted."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Input not found: {path}")
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ValueError(f"Input {path} is neither a file nor a folder.")
    skip = os.path.realpath(skip) if skip else None
    files = []
    for here, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(here, d)) != skip)
        files += [os.path.join(here, name) for name in names
                  if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise ValueError(
            f"No images in folder {path} (looked for {' '.join(IMAGE_EXTENSIONS)} files).")
    return sorted(files)


def _output_names(files, root):
    """Each input's output name: its path under the input folder `root` without the
    extension (`seq01/0001`), so that a folder's subfolders are mirrored."""
    base = root if os.path.isdir(root) else os.path.dirname(root)
    names = {f: os.path.splitext(os.path.relpath(f, base))[0] for f in files}
    stems = {}
    for f, name in names.items():
        stems.setdefault(name, []).append(f)
    clashes = [v for v in stems.values() if len(v) > 1]
    if clashes:
        raise ValueError(
            "Inputs with the same name would write the same outputs: "
            + "; ".join(" and ".join(os.path.relpath(p, base) for p in c)
                        for c in clashes[:3]))
    return names


def _validate(files):
    """Decodes every input once; returns the conversion notes and each image's
    `(height, width)`, raises on a bad input."""
    bad, notes, sizes = [], [], {}
    for f in files:
        try:
            image, note = read_image(f)
        except ImageError as err:
            bad.append(str(err))
            continue
        sizes[f] = image.shape[:2]
        if note:
            notes.append(f"{f}: {note}")
    if bad:
        more = f" ({len(bad) - 1} more bad input(s))" if len(bad) > 1 else ""
        raise ValueError(f"{bad[0].rstrip('.')}{more}; nothing was written.")
    return notes, sizes


def _scales(args):
    from keras_fastfcn.inference import MS_SCALES

    if args.ms and args.scales is not None:
        raise ValueError("--ms and --scales are exclusive: --ms means --scales "
                         f"{','.join(str(s) for s in MS_SCALES)} --flip.")
    return MS_SCALES if args.ms else (args.scales or (1.0,))


def _check_sizes(files, sizes, args):
    """Raises, before the model loads, if the network input of an image (shrunk to
    `--max-pixels` as `_predict_labels` shrinks it) would exceed `--max-pixels` at
    some scale (in slide mode: the image padded to the window size), or be empty."""
    from keras_fastfcn.inference import fit_to_pixels
    from keras_fastfcn.inference.ensemble import check_network_input

    scales = _scales(args)
    options = inference_options(args)  # the flags, or --model PRESET's protocol
    names = {"scales": "--ms" if args.ms else "--scales", "base_size": "--base-size",
             "crop_size": "--crop-size", "keep_ratio_fit": "--keep-ratio-fit",
             "max_pixels": "--max-pixels", "no_limit": "--max-pixels 0",
             "whole": "--mode whole", "shrink": "lower --max-pixels"}
    for f in files:
        height, width = sizes[f]
        run_h, run_w = fit_to_pixels(height, width, args.max_pixels)
        try:
            check_network_input(run_h, run_w, scales, options["base_size"], options["mode"],
                                options["crop_size"], args.max_pixels, names,
                                options["protocol"], options["keep_ratio_fit"])
        except ValueError as err:
            shrunk = "" if (run_h, run_w) == (height, width) else f", run at {run_w}x{run_h}"
            raise ValueError(f"{f} ({width}x{height}{shrunk}): {err}") from None


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="PATH|PRESET",
                        help="a .keras segmentation model (keras_fastfcn or any Keras model "
                             "from images to logits), a save_to_preset folder, an .onnx / "
                             ".tflite / OpenVINO .xml export, or a released model's name "
                             "(kf.models.list_presets(); downloaded on first use)")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="an image file or a folder of images")
    parser.add_argument("--output", required=True, metavar="FOLDER",
                        help="folder for NAME_labels.png, NAME_color.png, NAME_overlay.png "
                             "(created if missing)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="opacity of the colour mask in the overlay (default 0.5)")
    parser.add_argument("--max-pixels", type=max_pixels, default=2048 * 2048, metavar="N",
                        help="the largest network input (height x width): larger images "
                             "are shrunk to N pixels (aspect kept) and the class map resized "
                             "back (nearest); --scales, --ms, --base-size or --crop-size that "
                             "would make the input larger are refused before the model loads. "
                             "0 = no limit (default 4194304 = 2048^2)")
    add_inference_arguments(parser)


def _warn(message):
    print(f"keras-fastfcn predict: warning: {message}", file=sys.stderr)


def _predict_labels(predictor, image, limit, name):
    """The class map of `image` at its size; the network runs at most `limit` pixels,
    or at the input size a fixed-size export was written for."""
    import numpy as np
    from PIL import Image

    from keras_fastfcn.evaluation import class_map
    from keras_fastfcn.inference import fit_to_pixels

    height, width = image.shape[:2]
    size = getattr(predictor, "input_size", None)
    if size is None:
        size = fit_to_pixels(height, width, limit)
        why = f"is over --max-pixels {limit}"
    else:
        why = "is not the export's fixed input size"
    if tuple(size) == (height, width):
        return class_map(predictor, image[None])[0]
    _warn(f"{name}: {height}x{width} (height x width) {why}; the network runs at "
          f"{size[0]}x{size[1]} and the class map is resized back (nearest).")
    small = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR,
                                                     reducing_gap=3.0))
    labels = class_map(predictor, small[None])[0]
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.int32
    return np.asarray(Image.fromarray(labels.astype(dtype)).resize((width, height),
                                                                     Image.NEAREST))


def run(args):
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}.")
    out_dir = os.fspath(args.output)
    files = collect_inputs(args.input, skip=out_dir)
    names = _output_names(files, os.fspath(args.input))
    check_output_folder(out_dir)
    if os.path.isdir(args.input) and os.path.isdir(out_dir) \
            and os.path.samefile(args.input, out_dir):
        raise ValueError("--output must not be the input folder (the outputs would be read as "
                         "inputs next time).")
    check_model_arg(args.model)
    refuse_export_flags(args)
    notes, sizes = _validate(files)
    from keras_fastfcn.serving.runtime import is_export

    if not is_export(args.model):  # an export runs at the sizes it was exported for
        _check_sizes(files, sizes, args)

    from PIL import Image

    from keras_fastfcn import inference, visualize

    predictor, info = open_predictor(args)
    if isinstance(predictor, inference.Predictor):  # the budget `_check_sizes` checked
        predictor.max_pixels = args.max_pixels
    # An export that did not record its class count (a TFLite file without the
    # probabilities output): the generated palette over every uint8 class index.
    palette, class_names = visualize.palette_and_names(info.num_classes or 256,
                                                       info.class_names, info.dataset)
    for note in notes:  # only once the command is going to run
        _warn(note)

    print(f"Predicting {len(files)} image(s) with {args.model}: {predictor.describe()}")
    for f in files:
        image, _ = read_image(f)
        labels = _predict_labels(predictor, image, args.max_pixels, f)
        stem = os.path.join(out_dir, names[f])
        # Created once the first outputs exist: a failed first image leaves no folder.
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        if labels.max(initial=0) >= len(palette):  # only where the class count is unknown
            palette, class_names = visualize.palette_and_names(int(labels.max()) + 1)
        visualize.write_images([
            (stem + OUTPUT_SUFFIXES[0], visualize.label_image(labels)),
            (stem + OUTPUT_SUFFIXES[1], Image.fromarray(visualize.colorize(labels, palette))),
            (stem + OUTPUT_SUFFIXES[2],
             visualize.overlay(image, labels, palette, class_names, alpha=args.alpha)),
        ])
        present = visualize.legend_entries(labels, class_names, palette)
        summary = ", ".join(f"{name} {visualize.percent_text(frac)}"
                            for name, _, frac in present[:4])
        print(f"{f} -> {stem}_{{labels,color,overlay}}.png  ({summary})")
    return 0
