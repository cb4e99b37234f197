"""A small TF Serving REST client for exported FastFCN SavedModels.

Sends encoded images to the `serving_image_bytes` signature through TF
Serving's REST `:predict` endpoint and turns the response into class maps and
colour masks. Only the standard library (urllib, json, base64), numpy and Pillow
are used (no TensorFlow). Image files are read with the package's one decoding
policy (`keras_fastfcn.images`): EXIF orientation applied before sending.

The request body (TF Serving row format; binary values go in `{"b64": ...}`
objects, and a signature with one input takes the values directly):

    {"signature_name": "serving_image_bytes",
     "instances": [{"b64": "<base64 of the JPEG/PNG file>"}]}

Command line:

    python -m keras_fastfcn.serving.client street.jpg --model fastfcn \\
        --url http://localhost:8501 --output-dir masks/

Example:
>>> from keras_fastfcn.serving import client
>>> results = client.predict("http://localhost:8501", "fastfcn", ["street.jpg"])
>>> mask = client.colorize(results[0]["class_map"])
"""

import argparse
import base64
import io
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np

DEFAULT_URL = "http://localhost:8501"
DEFAULT_SIGNATURE = "serving_image_bytes"


def _read_bytes(image):
    """The bytes to send for an image: the file itself when the graph decodes it as an
    image viewer shows it (a plain RGB JPEG/PNG without EXIF rotation), else the pixels
    of `keras_fastfcn.images.read_image` (EXIF applied, 16-bit/gray/RGBA to RGB) as PNG:
    the SavedModel's `tf.io.decode_image` ignores EXIF orientation."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    from PIL import Image

    from keras_fastfcn.images import read_image

    path = os.fspath(image)
    pixels, _ = read_image(path)  # raises ImageError naming the file
    with Image.open(path) as img:
        plain = (img.format in ("JPEG", "PNG") and img.mode == "RGB"
                 and img.getexif().get(0x0112, 1) == 1)
    if plain:
        with open(path, "rb") as f:
            return f.read()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def build_predict_request(images, signature=DEFAULT_SIGNATURE):
    """The JSON body (a dict) of a `:predict` request for encoded images.

    Args:
        images: a list of encoded images, each `bytes` or a file path
            (JPEG, PNG, GIF or BMP; RGB; all of the same size within one request).
        signature: the signature to call (`serving_image_bytes`).

    Returns:
        `{"signature_name": signature, "instances": [{"b64": ...}, ...]}`.

    Example:
    >>> build_predict_request([b"\\x89PNG..."])["instances"][0].keys()
    dict_keys(['b64'])
    """
    if isinstance(images, (bytes, bytearray, str, os.PathLike)):
        images = [images]
    images = list(images)
    if not images:
        raise ValueError("build_predict_request needs at least one image.")
    instances = [{"b64": base64.b64encode(_read_bytes(image)).decode("ascii")}
                 for image in images]
    return {"signature_name": signature, "instances": instances}


def predict_url(url, model_name, version=None):
    """`URL/v1/models/NAME[/versions/VERSION]:predict`.

    Example:
    >>> predict_url("http://localhost:8501", "fastfcn", 2)
    'http://localhost:8501/v1/models/fastfcn/versions/2:predict'
    """
    if not model_name:
        raise ValueError("A model name is needed (TF Serving's --model_name).")
    path = f"{url.rstrip('/')}/v1/models/{model_name}"
    if version is not None:
        path += f"/versions/{int(version)}"
    return path + ":predict"


def parse_predictions(response):
    """Turns a `:predict` response (a dict) into one dict of numpy arrays per image.

    Handles the row format (`"predictions"`) and the columnar one (`"outputs"`),
    and a model with a single output (TF Serving then drops the output's name;
    here it is `class_map`).

    Returns:
        A list of dicts with `"class_map"` int32 `(H, W)` and, when exported,
        `"probabilities"` float32 `(H, W, C)` and `"class_names"` (list of str).
    """
    if "error" in response:
        raise RuntimeError(f"TF Serving returned an error: {response['error']}")
    if "predictions" in response:
        rows = response["predictions"]
    elif "outputs" in response:
        outputs = response["outputs"]
        if not isinstance(outputs, dict):
            outputs = {"class_map": outputs}
        batch = len(outputs["class_map"])
        rows = [{key: value[i] for key, value in outputs.items()} for i in range(batch)]
    else:
        raise ValueError(f"Not a TF Serving predict response: keys {sorted(response)}.")
    results = []
    for row in rows:
        if not isinstance(row, dict):
            row = {"class_map": row}
        if "class_map" not in row:
            raise ValueError(f"The response has no class_map output (outputs: {sorted(row)}); "
                             "is this a keras_fastfcn export?")
        result = {"class_map": np.asarray(row["class_map"], dtype=np.int32)}
        if "probabilities" in row:
            result["probabilities"] = np.asarray(row["probabilities"], dtype=np.float32)
        if "class_names" in row:
            result["class_names"] = [
                name["b64"] if isinstance(name, dict) else name for name in row["class_names"]]
        results.append(result)
    return results


def predict(url, model_name, images, version=None, signature=DEFAULT_SIGNATURE, timeout=120):
    """Sends `images` to TF Serving and returns the parsed predictions.

    Args:
        url: the REST base URL, e.g. `http://localhost:8501`.
        model_name: the served model's name.
        images: list of encoded images (bytes or file paths), same size each.
        version: optional model version (default: the latest).
        signature: the signature to call.
        timeout: seconds.

    Returns:
        See `parse_predictions`.

    Raises:
        RuntimeError: the server answered with an error (its message included),
            or could not be reached.
    """
    body = json.dumps(build_predict_request(images, signature)).encode("utf-8")
    request = urllib.request.Request(
        predict_url(url, model_name, version), data=body,
        headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            response = json.loads(reply.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        raise RuntimeError(f"TF Serving answered HTTP {err.code}: {detail}") from err
    except urllib.error.URLError as err:
        raise RuntimeError(f"Could not reach TF Serving at {url}: {err.reason}") from err
    return parse_predictions(response)


def get_palette(num_classes, dataset=None):
    """The dataset's palette (`keras_fastfcn.data.palettes`), or the generated VOC-style one."""
    from keras_fastfcn.data import palettes

    try:
        return np.asarray(palettes.get_palette(dataset, num_classes), dtype=np.uint8)
    except (KeyError, ValueError):
        return np.asarray(palettes.get_palette(None, num_classes), dtype=np.uint8)


def colorize(class_map, num_classes=None, palette=None, dataset=None):
    """A colour mask uint8 `(H, W, 3)` for an int class map `(H, W)`.

    Args:
        class_map: int array `(H, W)`.
        num_classes: palette size (default: the largest id + 1).
        palette: optional uint8 `(C, 3)` array; overrides `dataset`.
        dataset: optional dataset name for `keras_fastfcn.data.palettes`.

    Example:
    >>> colorize(np.array([[0, 1], [2, 1]])).shape
    (2, 2, 3)
    """
    class_map = np.asarray(class_map)
    if class_map.ndim != 2:
        raise ValueError(f"class_map must be 2-D (H, W), got shape {class_map.shape}.")
    if num_classes is None:
        num_classes = int(class_map.max()) + 1 if class_map.size else 1
    if palette is None:
        palette = get_palette(num_classes, dataset)
    palette = np.asarray(palette, dtype=np.uint8)
    if class_map.size and (class_map.min() < 0 or class_map.max() >= len(palette)):
        raise ValueError(f"class ids {class_map.min()}..{class_map.max()} do not fit a palette "
                         f"of {len(palette)} colours.")
    return palette[class_map]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_fastfcn.serving.client",
        description="Segment images with a FastFCN model served by TF Serving (REST).")
    parser.add_argument("images", nargs="+", help="JPEG/PNG files (one request each)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"REST base URL (default {DEFAULT_URL})")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--signature", default=DEFAULT_SIGNATURE)
    parser.add_argument("--dataset", default=None, help="palette name (e.g. camvid)")
    parser.add_argument("--output-dir", default="masks")
    args = parser.parse_args(argv)

    from PIL import Image

    os.makedirs(args.output_dir, exist_ok=True)
    try:
        for path in args.images:
            (result,) = predict(args.url, args.model, [path], args.version, args.signature)
            names = result.get("class_names")
            mask = colorize(result["class_map"], len(names) if names else None,
                            dataset=args.dataset)
            stem = os.path.splitext(os.path.basename(path))[0]
            out = os.path.join(args.output_dir, f"{stem}_mask.png")
            Image.fromarray(mask).save(out)
            ids, counts = np.unique(result["class_map"], return_counts=True)
            present = ", ".join(
                f"{names[i] if names else i}: {c / result['class_map'].size:.1%}"
                for i, c in zip(ids, counts))
            print(f"{path} -> {out} ({present})")
    except (RuntimeError, FileNotFoundError, ValueError) as err:
        print(f"keras_fastfcn.serving.client: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
