"""Colour masks, overlays and legends for class maps (numpy + PIL).

Palettes come from `keras_fastfcn.data.palettes` (`get_palette(name, num_classes)`);
the functions here take any `(num_classes, 3)` uint8 palette.
"""

import contextlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from keras_fastfcn.data import palettes
from keras_fastfcn.fileio import atomic_path


def _check_palette(palette, labels=None):
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"palette must be (num_classes, 3) RGB, got shape {palette.shape}.")
    palette = palette.astype(np.uint8)
    if labels is not None and labels.size and int(labels.max()) >= len(palette):
        raise ValueError(
            f"class id {int(labels.max())} has no colour: the palette has {len(palette)} entries.")
    return palette


def colorize(labels, palette):
    """Class map `(H, W)` -> RGB image `(H, W, 3)` uint8 with `palette[label]`.

    Args:
        labels: integer array `(H, W)` of class ids `0..len(palette)-1`.
        palette: `(num_classes, 3)` uint8 RGB colours.

    Example:
    >>> colorize(np.array([[0, 1]]), [[0, 0, 0], [255, 0, 0]])[0, 1].tolist()
    [255, 0, 0]
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D class map (H, W), got shape {labels.shape}.")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}.")
    palette = _check_palette(palette, labels)
    return palette[labels]


def blend(image, labels, palette, alpha=0.5):
    """The photo with the colour mask blended on top: `(1 - alpha) * image + alpha * colour`.

    Args:
        image: uint8 RGB `(H, W, 3)`.
        labels: class map `(H, W)`.
        palette: `(num_classes, 3)` uint8 colours.
        alpha: weight of the colour mask, in [0, 1].
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB (H, W, 3), got shape {image.shape}.")
    if image.shape[:2] != np.shape(labels):
        raise ValueError(
            f"image {image.shape[:2]} and labels {np.shape(labels)} differ in size.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    colour = colorize(labels, palette)
    out = np.empty_like(colour)
    # In bands of rows: float temporaries of a whole 100-megapixel photo would take GBs.
    rows = max(1, (1 << 20) // max(1, image.shape[1]))
    for top in range(0, image.shape[0], rows):
        band = slice(top, top + rows)
        mixed = (1.0 - alpha) * image[band].astype(np.float32) + alpha * colour[band]
        out[band] = np.clip(np.rint(mixed), 0, 255)
    return out


def _font(size):
    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except TypeError:
        return ImageFont.load_default()


def legend_entries(labels, class_names, palette):
    """`[(name, colour, fraction)]` of the classes present, largest area first."""
    labels = np.asarray(labels)
    palette = _check_palette(palette, labels)
    counts = np.bincount(labels.ravel(), minlength=len(palette))
    total = max(int(counts.sum()), 1)
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    names = list(class_names) if class_names is not None else []
    return [(names[i] if i < len(names) else f"class {i}", tuple(int(v) for v in palette[i]),
             counts[i] / total) for i in order]


def percent_text(fraction):
    """An area fraction as text for legends: `0.123` -> `"12.3%"`, tiny -> `"<0.1%"`."""
    return "<0.1%" if 0 < fraction < 0.0005 else f"{100.0 * fraction:.1f}%"


def draw_legend(image, entries, font_size=None):
    """`image` with a legend panel on its right: a swatch, name and area per entry.

    The panel sits beside the picture (not on it), so small images stay readable;
    the canvas grows in height if the legend is taller than the image.

    Args:
        image: PIL image or uint8 RGB array.
        entries: `[(name, (r, g, b), fraction)]`, e.g. from `legend_entries`.
        font_size: pixels; default scales with the image height (11..24).

    Returns:
        A PIL RGB image.
    """
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, np.uint8))
    image = image.convert("RGB")
    w, h = image.size
    size = font_size or int(np.clip(h // 28, 11, 24))
    font = _font(size)
    pad = max(4, size // 2)
    swatch = size
    row = size + pad
    texts = [f"{name}  {percent_text(frac)}" for name, _, frac in entries]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max([probe.textbbox((0, 0), t, font=font)[2] for t in texts] + [0])
    panel_w = pad + swatch + pad + text_w + pad
    panel_h = pad + row * len(entries)
    canvas = Image.new("RGB", (w + panel_w, max(h, panel_h)), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, ((_, colour, _), text) in enumerate(zip(entries, texts)):
        y = pad + k * row
        x = w + pad
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=colour, outline=(0, 0, 0))
        draw.text((x + swatch + pad, y + swatch // 2), text, fill=(0, 0, 0), font=font,
                  anchor="lm")
    return canvas


def overlay(image, labels, palette, class_names=None, alpha=0.5):
    """The blended overlay with a legend of the classes present (PIL image).

    Example:
    >>> img = np.zeros((64, 64, 3), np.uint8); lab = np.zeros((64, 64), int); lab[:, 32:] = 1
    >>> overlay(img, lab, [[255, 0, 0], [0, 0, 255]], ["a", "b"]).size[1]
    64
    """
    blended = blend(image, labels, palette, alpha)
    return draw_legend(blended, legend_entries(labels, class_names, palette))


def palette_and_names(num_classes, class_names=None, dataset=None):
    """The colour palette `(C, 3)` and class names for a model's predictions.

    The palette is `data.palettes.get_palette(dataset, C)` (Pascal, ADE20K, CamVid,
    ... or a generated one); names are `class_names`, else the dataset's names, else
    `class i`.

    Example:
    >>> palette, names = palette_and_names(3)
    >>> palette.shape, names
    ((3, 3), ['class 0', 'class 1', 'class 2'])
    """
    palette = np.asarray(palettes.get_palette(dataset, num_classes), np.uint8)
    names = class_names
    if names is None and dataset:
        try:
            names = palettes.class_names(dataset)
        except (KeyError, ValueError):
            names = None
        if names is not None and len(names) != num_classes:
            names = None
    if names is None:
        names = [f"class {i}" for i in range(num_classes)]
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
