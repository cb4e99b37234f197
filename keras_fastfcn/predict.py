"""`keras-fastfcn predict`: class maps, colour masks and overlays for images.

For each input image `NAME.ext` it writes into the output folder:

- `NAME_labels.png`: the class index of every pixel (8-bit grayscale, mode L; 16-bit
  when the model has more than 256 classes), at the image's size;
- `NAME_color.png`: the class map in the dataset's palette (RGB);
- `NAME_overlay.png`: the photo with the colour mask blended on it and, on the
  right, a legend of the classes present (largest area first).

Inputs: one image file or a folder (its top-level `.jpg .jpeg .png .bmp .webp .tif
.tiff` files, hidden files skipped). JPEG/PNG of any size; EXIF orientation is
applied; grayscale, RGBA and other modes are converted to RGB with a warning.

Bad input policy: every input is opened and decoded *before* the first prediction;
if any fails (not an image, truncated, unreadable), the command names it and exits
with status 1 without creating the output folder or writing anything. Outputs are
written per image through temporary files and renamed into place, so an image's
files either all appear complete or not at all; if the run stops part-way (e.g. out
of memory), the images finished before it keep their outputs.

Example:
    keras-fastfcn predict --model m.keras --input photos/ --output predictions/ --ms
"""

import contextlib
import os
import sys

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from keras_fastfcn import inference, visualize
from keras_fastfcn.fileio import atomic_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
OUTPUT_SUFFIXES = ("_labels.png", "_color.png", "_overlay.png")

_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def read_image(path):
    """Reads an image file as uint8 RGB `(H, W, 3)`.

    Returns:
        `(array, note)`: `note` is None, or a sentence saying how the image was
        converted to RGB (grayscale, alpha dropped, 16-bit scaled, ...).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not a readable image.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated or corrupt files fail here
            img = ImageOps.exif_transpose(img)
            mode = img.mode
            if mode == "RGB":
                return np.asarray(img, np.uint8), None
            if mode in _GRAY_MODES and mode not in ("1", "L", "LA"):
                # 16-bit / 32-bit / float grayscale: scale 16-bit ranges to 8 bits.
                gray = np.asarray(img, np.float64)
                if gray.max(initial=0) > 255:
                    gray = gray / 257.0
                arr = np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None], 3, -1)
                return arr, f"{mode} grayscale image converted to 8-bit RGB"
            has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
                mode == "P" and "transparency" in img.info)
            arr = np.asarray(img.convert("RGB"), np.uint8)
    except UnidentifiedImageError as err:
        raise ValueError(f"{path} is not an image file PIL can read.") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path} is not a readable image: {err}") from err
    if mode in _GRAY_MODES:
        note = f"grayscale image (mode {mode}) converted to RGB"
        if has_alpha:
            note += ", alpha channel dropped"
        return arr, note
    if has_alpha:
        return arr, f"image with transparency (mode {mode}) converted to RGB, alpha dropped"
    if mode == "P":
        return arr, None  # a colour image stored with a palette: nothing lost
    return arr, f"mode {mode} image converted to RGB"


def collect_inputs(path):
    """The image files named by `--input` (a file, or a folder's image files), sorted."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Input not found: {path}")
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ValueError(f"Input {path} is neither a file nor a folder.")
    files = sorted(
        os.path.join(path, name) for name in os.listdir(path)
        if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        and os.path.isfile(os.path.join(path, name)))
    if not files:
        raise ValueError(
            f"No images in folder {path} (looked for {' '.join(IMAGE_EXTENSIONS)} files).")
    return files


def _output_names(files):
    stems = {}
    for f in files:
        stems.setdefault(os.path.splitext(os.path.basename(f))[0], []).append(f)
    clashes = [v for v in stems.values() if len(v) > 1]
    if clashes:
        raise ValueError(
            "Inputs with the same name would write the same outputs: "
            + "; ".join(" and ".join(os.path.basename(p) for p in c) for c in clashes[:3]))
    return {f: os.path.splitext(os.path.basename(f))[0] for f in files}


def _validate(files):
    """Decodes every input once; returns the conversion notes, raises on a bad input."""
    bad, notes = [], []
    for f in files:
        try:
            _, note = read_image(f)
        except (ValueError, FileNotFoundError) as err:
            bad.append(str(err))
            continue
        if note:
            notes.append(f"{f}: {note}")
    if bad:
        more = f" ({len(bad) - 1} more bad input(s))" if len(bad) > 1 else ""
        raise ValueError(f"{bad[0].rstrip('.')}{more}; nothing was written.")
    return notes


def palette_and_names(model):
    """The colour palette `(C, 3)` and class names for a model's predictions.

    The palette is `data.palettes.get_palette(model.dataset, C)` (Pascal, ADE20K,
    CamVid, ... or a generated one); names come from the model config, else the
    dataset's names, else `class i`.
    """
    from keras_fastfcn.data import palettes

    palette = np.asarray(palettes.get_palette(model.dataset, model.num_classes), np.uint8)
    names = model.class_names
    if names is None and model.dataset:
        try:
            names = palettes.class_names(model.dataset)
        except (KeyError, ValueError):
            names = None
        if names is not None and len(names) != model.num_classes:
            names = None
    if names is None:
        names = [f"class {i}" for i in range(model.num_classes)]
    return palette, list(names)


def label_image(labels):
    """Class map -> PIL image: 8-bit (mode L) up to 256 classes, else 16-bit."""
    if labels.max(initial=0) < 256:
        return Image.fromarray(labels.astype(np.uint8))  # mode L
    return Image.fromarray(labels.astype(np.uint16))


def write_images(items):
    """Writes `[(path, PIL image)]` as PNG through temporary files, renamed only once all
    of them are written (a failure leaves none of them behind)."""
    with contextlib.ExitStack() as stack:
        for path, img in items:
            img.save(stack.enter_context(atomic_path(path)), format="PNG")


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="a .keras file saved from a keras_fastfcn FastFCN model")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="an image file or a folder of images")
    parser.add_argument("--output", required=True, metavar="FOLDER",
                        help="folder for NAME_labels.png, NAME_color.png, NAME_overlay.png "
                             "(created if missing)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="opacity of the colour mask in the overlay (default 0.5)")
    inference.add_inference_arguments(parser)


def _warn(message):
    print(f"keras-fastfcn predict: warning: {message}", file=sys.stderr)


def run(args):
    import tensorflow as tf

    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}.")
    files = collect_inputs(args.input)
    names = _output_names(files)
    out_dir = os.fspath(args.output)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"--output {out_dir} exists and is not a folder.")
    if os.path.isdir(args.input) and os.path.isdir(out_dir) \
            and os.path.samefile(args.input, out_dir):
        raise ValueError("--output must not be the input folder (the outputs would be read as "
                         "inputs next time).")
    if not os.path.exists(args.model):
        raise FileNotFoundError(f"Model file not found: {args.model}")
    notes = _validate(files)
    model = inference.load_model(args.model)
    predictor = inference.predictor_from_args(model, args)
    palette, class_names = palette_and_names(model)
    for note in notes:  # only once the command is going to run
        _warn(note)

    os.makedirs(out_dir, exist_ok=True)
    print(f"Predicting {len(files)} image(s) with {args.model}: "
          f"{inference.describe_predictor(predictor)}")
    for f in files:
        image, _ = read_image(f)
        scores = predictor(image[None])
        labels = tf.argmax(scores, axis=-1, output_type=tf.int32).numpy()[0]
        stem = os.path.join(out_dir, names[f])
        write_images([
            (stem + OUTPUT_SUFFIXES[0], label_image(labels)),
            (stem + OUTPUT_SUFFIXES[1], Image.fromarray(visualize.colorize(labels, palette))),
            (stem + OUTPUT_SUFFIXES[2],
             visualize.overlay(image, labels, palette, class_names, alpha=args.alpha)),
        ])
        present = visualize.legend_entries(labels, class_names, palette)
        summary = ", ".join(f"{name} {visualize.percent_text(frac)}"
                            for name, _, frac in present[:4])
        print(f"{f} -> {stem}_{{labels,color,overlay}}.png  ({summary})")
    return 0
