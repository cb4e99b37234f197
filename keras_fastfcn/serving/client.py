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
        --url http://localhost:8501 --output-dir masks/ --timeout 120

Every failure is one clear error: a `ValueError` (a bad argument or image file, or
`BadAnswerError`: the server answered something that is not a usable prediction) or
an `OSError` (`ServerUnreachableError`, `ServerTimeoutError`, `ServerHTTPError`); the
command line prints it as one line and exits with status 1, having checked the
images and the output folder before the first request.

Example:
>>> from keras_fastfcn.serving import client
>>> results = client.predict("http://localhost:8501", "fastfcn",  # a running TF Serving
...                          ["street.jpg"])  # doctest: +SKIP
>>> mask = client.colorize(results[0]["class_map"])  # doctest: +SKIP
"""

import argparse
import base64
import binascii
import http.client
import io
import json
import math
import operator
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

DEFAULT_URL = "http://localhost:8501"
DEFAULT_SIGNATURE = "serving_image_bytes"
DEFAULT_TIMEOUT = 120.0
_SNIPPET = 300  # characters of a server's message or body quoted in an error


class ServingClientError(RuntimeError):
    """A request to TF Serving failed; the message says why in one line.

    Every concrete error is also a `ValueError` (`BadAnswerError`) or an `OSError`
    (`ServerUnreachableError`, `ServerTimeoutError`, `ServerHTTPError`), so the usual
    `except (ValueError, OSError)` catches them.
    """


class BadAnswerError(ServingClientError, ValueError):
    """The server answered, but not with a usable `:predict` response."""


class ServerUnreachableError(ServingClientError, ConnectionError):
    """Nothing answered: connection refused, closed without an answer, not HTTP."""


class ServerTimeoutError(ServingClientError, TimeoutError):
    """The server took longer than the timeout to connect or answer."""


class ServerHTTPError(ServingClientError, OSError):
    """The server answered with an HTTP error status (`status`), e.g. a bad request."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def _one_line(text, limit=_SNIPPET):
    """`text` with its whitespace collapsed and cut to `limit` characters: a server's
    message goes into a one-line error."""
    text = " ".join(str(text).split())
    # A non-HTTP answer (gRPC, TLS) is binary: keep the line printable.
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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

    Raises:
        ValueError: `url` is not an http(s) address, no model name, or a version
            that is not a whole number >= 0.

    Example:
    >>> predict_url("http://localhost:8501", "fastfcn", 2)
    'http://localhost:8501/v1/models/fastfcn/versions/2:predict'
    """
    url = str(url)
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 (parsing it is the check: "http://host:abc")
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"The TF Serving URL (--url) must be an http:// or https:// address "
                         f"such as {DEFAULT_URL}, got {url!r}.")
    if not model_name:
        raise ValueError("A model name is needed (TF Serving's --model_name).")
    path = f"{url.rstrip('/')}/v1/models/{urllib.parse.quote(str(model_name), safe='')}"
    if version is not None:
        try:
            # operator.index: ints and numpy ints, never floats (2.5 would pass int()).
            number = int(version) if isinstance(version, str) else operator.index(version)
        except (TypeError, ValueError):
            number = -1
        if number < 0:
            raise ValueError(f"The model version (--version) must be a whole number >= 0, "
                             f"got {version!r}.")
        path += f"/versions/{number}"
    return path + ":predict"


def _check_timeout(timeout):
    """`timeout` as float seconds; raises ValueError unless it is a positive finite number."""
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(timeout, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"The timeout must be a positive number of seconds, got {timeout!r}.")
    return seconds


def _where(index, count):
    return f" for image {index + 1} of {count}" if count > 1 else ""


def _array(value, what, where):
    """`value` (nested JSON lists) as a numpy array, or BadAnswerError saying what is wrong."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):  # numpy refuses nested lists of different lengths
        array = None
    if array is not None and array.dtype == object and any(v is None for v in array.flat):
        raise BadAnswerError(f"the server's answer has nulls in its {what}{where}; expected "
                             "numbers.")
    if array is None or array.dtype == object:
        raise BadAnswerError(
            f"the server's answer has a ragged {what}{where} (rows of different lengths, or "
            "nested objects); expected a rectangular array of numbers.")
    if array.dtype.kind == "U":
        example = next((v for v in array.flat if not v.lstrip("-").isdigit()), array.flat[0])
        raise BadAnswerError(f"the server's answer has strings in its {what}{where} "
                             f"(e.g. {str(example)[:40]!r}); expected numbers.")
    if array.dtype.kind == "b":
        raise BadAnswerError(f"the server's answer has true/false values in its {what}{where}; "
                             "expected numbers.")
    return array


def _class_ids(value, where):
    array = _array(value, "class_map", where)
    if array.ndim != 2 or 0 in array.shape:
        raise BadAnswerError(f"the server's answer has a class_map of shape {array.shape}{where}; "
                             "expected (height, width), both >= 1.")
    if array.dtype.kind == "f":
        fraction = ~np.isfinite(array) | (array != np.round(array))
        if fraction.any():
            raise BadAnswerError(
                f"the server's answer has non-integer values in its class_map{where} "
                f"(e.g. {array[fraction].flat[0]:g}); class ids are whole numbers.")
    low, high = array.min(), array.max()
    if low < 0:
        raise BadAnswerError(f"the server's answer has a negative class id ({low:g}) in its "
                             f"class_map{where}; class ids start at 0.")
    if high > np.iinfo(np.int32).max:
        raise BadAnswerError(f"the server's answer has class id {high:g} in its class_map{where}, "
                             "beyond any model's class count.")
    return array.astype(np.int32)


def _class_names(value, where):
    if not isinstance(value, list) or not value:
        raise BadAnswerError(f"the server's answer has class_names{where} of type "
                             f"{type(value).__name__}, not a list of strings.")
    names = []
    for name in value:
        if isinstance(name, dict) and isinstance(name.get("b64"), str):
            # TF Serving's JSON mapping for binary strings.
            try:
                name = base64.b64decode(name["b64"], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise BadAnswerError(f"the server's answer has a class name{where} that is not "
                                     "valid base64 of UTF-8 text.") from None
        if not isinstance(name, str):
            raise BadAnswerError(f"the server's answer has a non-string value "
                                 f"({_one_line(json.dumps(name), 40)}) among its class_names"
                                 f"{where}; expected strings.")
        names.append(name)
    return names


def _parse_row(row, index, count):
    where = _where(index, count)
    if not isinstance(row, dict):
        row = {"class_map": row}  # a model with a single output: TF Serving drops its name
    if "class_map" not in row:
        raise BadAnswerError(f"the server's answer has no class_map output{where} (its outputs: "
                             f"{', '.join(sorted(map(str, row)))}); is the served model a "
                             "keras_fastfcn export?")
    class_map = _class_ids(row["class_map"], where)
    result = {"class_map": class_map}
    num_classes = None
    if "class_names" in row:
        result["class_names"] = _class_names(row["class_names"], where)
        num_classes, source = len(result["class_names"]), "class_names"
    if "probabilities" in row:
        probabilities = _array(row["probabilities"], "probabilities", where)
        if probabilities.ndim != 3 or probabilities.shape[:2] != class_map.shape:
            raise BadAnswerError(
                f"the server's answer has probabilities of shape {probabilities.shape}{where}; "
                f"expected (height, width, classes) with (height, width) = {class_map.shape}, "
                "the class map's.")
        if num_classes is not None and probabilities.shape[-1] != num_classes:
            raise BadAnswerError(
                f"the server's answer has {probabilities.shape[-1]} probabilities per pixel"
                f"{where} but {num_classes} class_names.")
        result["probabilities"] = probabilities.astype(np.float32)
        num_classes, source = probabilities.shape[-1], "probabilities"
    if num_classes is not None and class_map.max() >= num_classes:
        raise BadAnswerError(
            f"the server's answer has class id {class_map.max()} in its class_map{where}, but its "
            f"model reports {num_classes} classes (ids 0..{num_classes - 1}, from its {source}).")
    return result


def _columns_to_rows(outputs):
    """The columnar format (`{"outputs": {name: [per image]}}`) as rows."""
    if not isinstance(outputs, dict):
        outputs = {"class_map": outputs}
    for key, value in outputs.items():
        if not isinstance(value, list):
            raise BadAnswerError(f"the server's answer has output {key!r} of type "
                                 f"{type(value).__name__}, not a list (one entry per image).")
    if "class_map" not in outputs:
        raise BadAnswerError(f"the server's answer has no class_map output (its outputs: "
                             f"{', '.join(sorted(map(str, outputs)))}); is the served model a "
                             "keras_fastfcn export?")
    sizes = {key: len(value) for key, value in outputs.items()}
    if len(set(sizes.values())) > 1:
        raise BadAnswerError("the server's answer has outputs for different numbers of images ("
                             + ", ".join(f"{k}: {n}" for k, n in sorted(sizes.items())) + ").")
    return [{key: value[i] for key, value in outputs.items()}
            for i in range(sizes["class_map"])]


def parse_predictions(response):
    """Turns a `:predict` response (a dict) into one dict of numpy arrays per image.

    Handles the row format (`"predictions"`) and the columnar one (`"outputs"`),
    and a model with a single output (TF Serving then drops the output's name;
    here it is `class_map`). Every value is checked: a class map must be a
    rectangle of whole numbers >= 0, below the class count the answer reports
    (its `class_names` or `probabilities`).

    Returns:
        A list of dicts with `"class_map"` int32 `(H, W)` and, when exported,
        `"probabilities"` float32 `(H, W, C)` and `"class_names"` (list of str).

    Raises:
        BadAnswerError: (a `ValueError`) the answer is an error message, or not a
            usable predict response; the message says what is wrong.

    Example:
    >>> parse_predictions({"predictions": [[[0, 1], [1, 0]]]})[0]["class_map"].shape
    (2, 2)
    """
    if not isinstance(response, dict):
        raise BadAnswerError(f"the server's answer is a JSON {type(response).__name__}, not an "
                             'object with "predictions" or "outputs".')
    if "error" in response:
        raise BadAnswerError(f"TF Serving answered with an error: {_one_line(response['error'])}")
    if "predictions" in response:
        rows = response["predictions"]
        if not isinstance(rows, list):
            raise BadAnswerError(f'the server\'s answer has "predictions" of type '
                                 f"{type(rows).__name__}, not a list (one entry per image).")
    elif "outputs" in response:
        rows = _columns_to_rows(response["outputs"])
    else:
        keys = ", ".join(sorted(map(str, response))) or "none"
        raise BadAnswerError('the server\'s answer has neither "predictions" nor "outputs" '
                             f"(its keys: {_one_line(keys, 80)}); is the URL TF Serving's REST "
                             "API?")
    return [_parse_row(row, i, len(rows)) for i, row in enumerate(rows)]


def _decode_answer(body, target):
    """The JSON of an HTTP 200 body, or BadAnswerError saying why it is none."""
    if not body.strip():
        raise BadAnswerError(f"the server's answer from {target} is empty; expected JSON.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadAnswerError(
            f"the server's answer from {target} is not UTF-8 text (byte {body[err.start]:#04x} "
            f"at position {err.start}); is the URL TF Serving's REST port (8501)?") from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise BadAnswerError(
            f"the server's answer from {target} is not JSON ({err.msg} at position "
            f"{err.pos}); it starts with {_one_line(text, 60)!r}.") from None


def _http_error(err, target):
    try:
        text = err.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        text = ""
    detail = text
    try:
        answer = json.loads(text)
        if isinstance(answer, dict) and "error" in answer:
            detail = answer["error"]
    except ValueError:
        pass
    detail = _one_line(detail) or "(no message)"
    hint = ""
    if err.code == 404:
        hint = " (is the model name, --model, or the version, --version, right?)"
    return ServerHTTPError(f"TF Serving answered HTTP {err.code} to {target}{hint}: {detail}",
                           err.code)


def _post(request, target, timeout):
    """The body of the server's HTTP 200 answer to `request`; one clear error otherwise."""
    slow = (f"no answer from {target} within {timeout:g} s; if the server is only slow (a cold "
            "model, a large image), give it longer with --timeout SECONDS (Python: "
            "predict(..., timeout=SECONDS)).")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.read()
    except urllib.error.HTTPError as err:
        raise _http_error(err, target) from err
    except urllib.error.URLError as err:  # connecting or sending failed
        if isinstance(err.reason, TimeoutError):
            raise ServerTimeoutError(slow) from err
        if isinstance(err.reason, ConnectionRefusedError):
            raise ServerUnreachableError(
                f"connection refused at {target}: nothing listens there; is TF Serving running "
                "with its REST API on that port (--rest_api_port)?") from err
        if isinstance(err.reason, ConnectionError):
            raise ServerUnreachableError(
                f"the server at {target} closed the connection while the request was being "
                f"sent ({_one_line(err.reason, 60)}); see its log.") from err
        raise ServerUnreachableError(f"could not reach TF Serving at {target}: "
                                     f"{_one_line(err.reason)}") from err
    except TimeoutError as err:  # connected, then no (complete) answer in time
        raise ServerTimeoutError(slow) from err
    except ConnectionError as err:  # includes http.client.RemoteDisconnected
        raise ServerUnreachableError(
            f"the server at {target} closed the connection without an answer; it may have "
            "crashed or run out of memory on this request (see its log).") from err
    except http.client.IncompleteRead as err:
        raise ServerUnreachableError(
            f"the server at {target} closed the connection in the middle of its answer "
            f"({len(err.partial)} bytes received, {err.expected} more expected).") from err
    except http.client.HTTPException as err:
        raise ServerUnreachableError(
            f"the server at {target} did not answer in HTTP ({type(err).__name__}: "
            f"{_one_line(err, 60)}); is the URL TF Serving's REST port (8501, not the gRPC port "
            "8500)?") from err
    except OSError as err:
        raise ServerUnreachableError(f"could not talk to TF Serving at {target}: "
                                     f"{_one_line(err)}") from err


def predict(url, model_name, images, version=None, signature=DEFAULT_SIGNATURE,
            timeout=DEFAULT_TIMEOUT):
    """Sends `images` to TF Serving and returns the parsed predictions.

    Args:
        url: the REST base URL, e.g. `http://localhost:8501`.
        model_name: the served model's name.
        images: list of encoded images (bytes or file paths), same size each.
        version: optional model version (default: the latest).
        signature: the signature to call.
        timeout: seconds to wait for the connection and for each part of the
            answer (default 120).

    Returns:
        See `parse_predictions`.

    Raises:
        ValueError: a bad argument, or an image file that cannot be read (it is
            named). `BadAnswerError` (a `ValueError`): the server answered something
            that is not a usable prediction (said what).
        OSError: the server could not be reached (`ServerUnreachableError`), did
            not answer in time (`ServerTimeoutError`), or answered with an HTTP
            error status (`ServerHTTPError`, with the server's message). All the
            errors raised for the server are also `ServingClientError`s
            (a `RuntimeError`).

    Example:
    >>> (result,) = predict("http://localhost:8501", "fastfcn", ["street.jpg"],
    ...                     timeout=30)  # doctest: +SKIP
    >>> result["class_map"].shape  # doctest: +SKIP
    (480, 640)
    """
    timeout = _check_timeout(timeout)
    target = predict_url(url, model_name, version)
    payload = build_predict_request(images, signature)
    count = len(payload["instances"])
    request = urllib.request.Request(
        target, data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json"}, method="POST")
    results = parse_predictions(_decode_answer(_post(request, target, timeout), target))
    if len(results) != count:
        raise BadAnswerError(f"the server's answer has {len(results)} predictions for the "
                             f"{count} image(s) sent.")
    return results


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


def _seconds(text):
    """argparse type: a positive number of seconds."""
    try:
        return _check_timeout(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive number of seconds, got {text!r}") from None


def _check_output_folder(path):
    """Fails, creating nothing, unless `path` is or can be made a writable folder."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"--output-dir {path} exists and is not a folder; give a "
                                 "folder for the masks.")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"--output-dir {path} cannot be created: {existing} is a file, "
                                 "not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"--output-dir {path}: cannot write into {existing}.")


def _mask_names(images, out_dir):
    """`{image: its mask path}`; refuses two images that would write the same mask."""
    paths = {}
    for image in images:
        stem = os.path.splitext(os.path.basename(image))[0]
        paths.setdefault(os.path.join(out_dir, f"{stem}_mask.png"), []).append(image)
    clashes = [v for v in paths.values() if len(v) > 1]
    if clashes:
        raise ValueError("Images with the same name would write the same mask: "
                         + "; ".join(" and ".join(c) for c in clashes[:3]))
    return {sources[0]: out for out, sources in paths.items()}


def _run(args):
    from PIL import Image

    from keras_fastfcn.fileio import atomic_path
    from keras_fastfcn.images import read_image

    # Everything that can be checked here fails before the first request, and before
    # anything (the output folder included) is created.
    out_dir = os.fspath(args.output_dir)
    _check_output_folder(out_dir)
    masks = _mask_names(args.images, out_dir)
    predict_url(args.url, args.model, args.version)
    for path in args.images:
        read_image(path)  # missing, unreadable or corrupt: ImageError naming the file
    for path in args.images:
        (result,) = predict(args.url, args.model, [path], args.version, args.signature,
                            timeout=args.timeout)
        names = result.get("class_names")
        classes = len(names) if names else None
        if "probabilities" in result:
            classes = result["probabilities"].shape[-1]
        mask = colorize(result["class_map"], classes, dataset=args.dataset)
        # A mask is complete or absent; those of the images before a failure stay.
        with atomic_path(masks[path]) as tmp:
            Image.fromarray(mask).save(tmp, format="PNG")
        ids, counts = np.unique(result["class_map"], return_counts=True)
        present = ", ".join(
            f"{names[i] if names else i}: {c / result['class_map'].size:.1%}"
            for i, c in zip(ids, counts))
        print(f"{path} -> {masks[path]} ({present})")
    return 0


def main(argv=None):
    """The command line: one request per image, one colour mask `NAME_mask.png` each.

    Returns 0, or 1 after one line `...: error: MESSAGE` on stderr (a bad option
    value, an unreadable image, an output folder that cannot be made, a server that
    is unreachable, slow, failing or answering nonsense).

    Example:
    >>> main(["street.jpg", "--model", "fastfcn", "--timeout", "30"])  # doctest: +SKIP
    0
    """
    parser = argparse.ArgumentParser(
        prog="python -m keras_fastfcn.serving.client",
        description="Segment images with a FastFCN model served by TF Serving (REST).")
    parser.add_argument("images", nargs="+", help="JPEG/PNG files (one request each)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"REST base URL (default {DEFAULT_URL})")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--signature", default=DEFAULT_SIGNATURE)
    parser.add_argument("--dataset", default=None, help="palette name (e.g. camvid)")
    parser.add_argument("--output-dir", "--output", dest="output_dir", default="masks",
                        metavar="FOLDER", help="where the masks go (default masks)")
    parser.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="how long to wait for the server to connect and to answer each "
                             f"request (default {DEFAULT_TIMEOUT:g})")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, OSError) as err:  # the ServingClientErrors are one or the other
        message = " ".join(str(err).splitlines())
        print(f"keras_fastfcn.serving.client: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
