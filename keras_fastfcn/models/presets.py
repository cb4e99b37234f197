"""Presets: saved models as folders, and the released models by name.

A preset folder (written by `FastFCNImageSegmenter.save_to_preset`) holds
`config.json` (the model's Keras config), `model.weights.h5` and `metadata.json`
(versions, parameter count). `from_preset` takes such a folder, or the name of a
released model (`list_presets()`: the FastFCN authors' six and mmsegmentation's
twelve, `fastfcn_presets.py`), which is resolved like this:

1. `KERAS_HOME/keras_fastfcn/presets/NAME/` (default `~/.keras/...`): the converted
   model of an earlier call, used as is;
2. else the released checkpoint is downloaded into `KERAS_HOME/keras_fastfcn/
   downloads/` (from its URL, or from Google Drive with its "can't scan this file for
   viruses" confirmation step; a progress bar; written to a temporary file and
   renamed), verified (its SHA-256, or the SHA-256 prefix mmcv puts in the file name,
   where one is known) and converted by the reader of the entry's `"format"` (PyTorch
   needed for this step only); only a model that converted cleanly is cached. Any
   failure leaves nothing in the cache and says what to do: without internet, or
   where the server refuses the download (quota, sign-in), download the file in a
   browser (`list_presets()[name]["url"]`) and pass it:
   `from_preset(name, checkpoint="path/to/file.pth")`.

`from_preset(name, load_weights=False)` builds the released model's architecture
with random weights and never touches the network (nor PyTorch).

Example:
>>> from keras_fastfcn.models import FastFCNImageSegmenter
>>> seg = FastFCNImageSegmenter.from_preset("fastfcn_encnet_jpu_resnet50_pcontext",
...                                         load_weights=False)  # no download
>>> seg.save_to_preset("my_model")
'my_model'
>>> FastFCNImageSegmenter.from_preset("my_model").class_names[:3]
['aeroplane', 'bag', 'bed']
"""

import hashlib
import html.parser
import importlib
import inspect
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request

import keras

from keras_fastfcn.data import palettes
from keras_fastfcn.fileio import atomic_path, scratch_folder
from keras_fastfcn.models import registry
from keras_fastfcn.version import __version__
from keras_fastfcn.models.fastfcn.fastfcn_presets import PRESETS, describe, download_page, file_name

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
DRIVE_URL = "https://drive.google.com/uc"


class PresetError(ValueError):
    """A preset that cannot be found, downloaded, verified or converted."""


def list_presets():
    """The released models: name -> what it is (`description`, `head`, `encoder`,
    `num_classes`, `dataset`, reported `metrics`: `mIoU` single scale and
    `mIoU_ms_flip`, None where the source reports none, and their `protocol`; the
    `inference` options of that protocol; `source`, `license`, the checkpoint's `file`
    name, download `url` and `download_mb`). Also `FastFCNImageSegmenter.presets`.

    Example:
    >>> sorted(list_presets())[0]
    'fastfcn_aspp_jpu_resnet50_v1c_ade20k_160k'
    """
    return {name: describe(name, entry) for name, entry in PRESETS.items()}


class ClassPresets:
    """`cls.presets` (keras-hub's class attribute): `list_presets()` on access."""

    def __get__(self, instance, owner):
        return list_presets()


def register_preset(name, entry):
    """Adds a released model: `entry` as in `fastfcn_presets.PRESETS`, with either
    `drive_id` (Google Drive) or `url`, and optionally `sha256` or `sha256_prefix`."""
    if not ("drive_id" in entry or "url" in entry):
        raise ValueError("A preset entry needs a 'drive_id' or a 'url'.")
    PRESETS[name] = dict(entry)


def cache_dir():
    """`KERAS_HOME/keras_fastfcn` (`~/.keras/keras_fastfcn` by default)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "keras_fastfcn")


# ------------------------------------------------------------------ folders


def save_segmenter(model, preset_dir, metadata=None):
    """Writes `model` as a preset folder; returns the folder.

    A new folder appears whole (written beside it, then renamed). Into an existing
    folder (one with a README for a model hub, say) the three preset files are
    written and nothing else is touched, as keras-hub does: each file is renamed into
    place, `metadata.json` last and removed first, so that a write cut short leaves a
    folder `from_preset` refuses instead of new weights under an old config.

    Args:
        model: the model.
        preset_dir: the folder.
        metadata: extra entries for `metadata.json` (e.g. the source checkpoint).
    """
    preset_dir = os.fspath(preset_dir)
    if os.path.exists(preset_dir) and not os.path.isdir(preset_dir):
        raise NotADirectoryError(f"{preset_dir} exists and is not a folder.")
    metadata = {
        "keras_fastfcn_version": __version__,
        "keras_version": keras.__version__,
        "class": type(model).__name__,
        "parameter_count": int(model.count_params()),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(metadata or {}),
    }

    def write(folder):
        with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(keras.saving.serialize_keras_object(model), f, indent=2)
        model.save_weights(os.path.join(folder, WEIGHTS_FILE))
        with open(os.path.join(folder, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)

    if not os.path.isdir(preset_dir):
        with atomic_path(preset_dir, is_dir=True) as tmp:
            write(tmp)
        return preset_dir
    with scratch_folder(os.path.join(preset_dir, METADATA_FILE)) as tmp:
        write(tmp)
        marker = os.path.join(preset_dir, METADATA_FILE)
        if os.path.exists(marker):
            os.remove(marker)
        for name in (WEIGHTS_FILE, CONFIG_FILE, METADATA_FILE):
            os.replace(os.path.join(tmp, name), os.path.join(preset_dir, name))
    return preset_dir


def is_preset_dir(path):
    """Whether `path` is a folder written by `save_to_preset`."""
    return all(os.path.isfile(os.path.join(path, name))
               for name in (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE))


def load_segmenter(cls, preset, load_weights=True, checkpoint=None, **overrides):
    """`cls.from_preset(preset, ...)`: see the module docstring."""
    preset = os.fspath(preset)
    if checkpoint is not None and preset not in PRESETS:
        raise PresetError(f"checkpoint= is for a released model ({', '.join(sorted(PRESETS))}), "
                          f"not {preset!r}.")
    if os.path.isdir(preset):
        if not is_preset_dir(preset):
            raise PresetError(f"{preset} is not a preset folder: it needs {CONFIG_FILE}, "
                              f"{WEIGHTS_FILE} and {METADATA_FILE} (written by save_to_preset).")
        folder = preset
    elif preset in PRESETS:
        cached = _cached_folder(preset)
        if not load_weights and not is_preset_dir(cached):
            return _check_class(_architecture(preset, **overrides), cls, preset)
        folder = materialize(preset, checkpoint=checkpoint)
    else:
        raise PresetError(
            f"Unknown preset {preset!r}: not a folder, nor a released model "
            f"({', '.join(sorted(PRESETS))}).")
    path = os.path.join(folder, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
            raise ValueError("not a Keras model config (no 'config' object)")
    except ValueError as err:  # JSONDecodeError included
        raise PresetError(f"{path} is broken: {err}. Save the preset again "
                          "(save_to_preset).") from None
    if overrides:
        _check_overrides(cls, config, overrides)
        config = dict(config, config=dict(config["config"], **overrides))
    model = _check_class(keras.saving.deserialize_keras_object(config), cls, preset)
    if load_weights:
        path = os.path.join(folder, WEIGHTS_FILE)
        try:
            model.load_weights(path)
        except Exception as err:  # h5py's and Keras' many errors for broken or foreign files
            raise PresetError(f"{path} does not hold the weights of {folder}'s model "
                              f"({_first_line(err)}): a broken or foreign file. Save the "
                              "preset again (save_to_preset).") from None
    return model


def _check_overrides(cls, config, overrides):
    """A `TypeError` naming the overrides that are not arguments of the preset's
    model: Keras' model constructors take (and drop) any keyword."""
    known = (set(config.get("config", {})) | {"name", "dtype", "trainable"}) - {
        "self", "kwargs"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"{cls.__name__}.from_preset got unknown argument(s) "
                        f"{registry.with_hints(unknown, sorted(known))}: it takes the "
                        "model's arguments "
                        f"({', '.join(sorted(known))}).")


def _check_class(model, cls, preset):
    if not isinstance(model, cls):
        raise PresetError(f"{preset} holds a {type(model).__name__}, not a {cls.__name__}.")
    return model


def _architecture(name, **overrides):
    """Released model `name` with random weights, built from its entry alone (no
    download, no PyTorch): the structure `materialize` converts the checkpoint into.
    Every released model was trained with the auxiliary head and, where the head has
    one, the SE loss; the authors' resize with `align_corners=True` and weigh the
    auxiliary loss 0.2, mmsegmentation's with False and 0.4 (the entry's
    `align_corners`, `aux_weight`, `se_loss` where they differ from those defaults).
    Built from a config naming the registered classes, as a saved preset is, so this
    module imports no model class."""
    entry = PRESETS[name]
    dataset = entry.get("dataset")
    names = palettes.class_names(dataset) if dataset else None
    if names is not None and len(names) != entry["num_classes"]:
        names = None
    backbone = _registered("FastFCNBackbone", {
        "encoder": entry["encoder"], "upsampler": entry.get("upsampler", "jpu"),
        "width": entry.get("width", 512), "preprocessing": "torch",
        "align_corners": entry.get("align_corners", True)})
    config = {"backbone": backbone, "num_classes": entry["num_classes"],
              "head": entry["head"], "aux": True,
              "se_loss": entry.get("se_loss", registry.head(entry["head"]).se_loss),
              "aux_weight": entry.get("aux_weight", 0.2),
              "class_names": names, "dataset": dataset, "name": f"fastfcn_{entry['head']}"}
    segmenter = keras.saving.get_registered_object("keras_fastfcn>FastFCNImageSegmenter")
    _check_overrides(segmenter, {"config": dict.fromkeys(
        inspect.signature(segmenter.__init__).parameters)}, overrides)
    config.update(overrides)
    return keras.saving.deserialize_keras_object(_registered("FastFCNImageSegmenter", config))


def _registered(class_name, config):
    return {"class_name": class_name, "registered_name": f"keras_fastfcn>{class_name}",
            "module": None, "config": config}


def load_backbone(cls, preset, load_weights=True, checkpoint=None):
    """`cls.from_preset(preset)` of a backbone: the backbone of the preset's segmenter."""
    model = load_segmenter(keras.Model, preset, load_weights=load_weights,
                           checkpoint=checkpoint)
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, cls):
        raise PresetError(f"{preset} holds no {cls.__name__}.")
    return backbone


# ---------------------------------------------------------------- released


# Checkpoint readers by format: `reader(checkpoint_path, entry) -> segmenter`. The
# converter registers its own (`register_checkpoint_reader`); a format's module is
# named here and imported the first time a preset of that format is converted, so the
# models never import the converter (which imports the models).
CHECKPOINT_FORMATS = {"official": "keras_fastfcn.convert",
                      "mmseg": "keras_fastfcn.convert.mmseg"}
_READERS = {}


def register_checkpoint_reader(fmt, reader, module=None):
    """Registers `reader(checkpoint_path, preset_entry) -> model` for checkpoints of
    format `fmt` (a preset entry's `"format"`, `"official"` by default)."""
    _READERS[fmt] = reader
    if module:
        CHECKPOINT_FORMATS[fmt] = module


def _checkpoint_reader(fmt):
    if fmt not in _READERS and fmt in CHECKPOINT_FORMATS:
        importlib.import_module(CHECKPOINT_FORMATS[fmt])  # registers itself
    if fmt not in _READERS:
        raise PresetError(f"No reader for checkpoints of format {fmt!r} "
                          f"(known: {', '.join(sorted(CHECKPOINT_FORMATS))}).")
    return _READERS[fmt]


def materialize(name, checkpoint=None):
    """The cached preset folder of released model `name`, made on first use.

    Released models are PyTorch checkpoints until converted once, by the reader
    registered for the entry's `"format"` (`register_checkpoint_reader`).
    """
    entry = PRESETS[name]
    folder = _cached_folder(name)
    digest = None  # the checkpoint's SHA-256, read once (files of hundreds of MB)
    if is_preset_dir(folder):
        if checkpoint is None:
            return folder
        if os.path.isfile(checkpoint):
            digest = file_sha256(checkpoint)
            if _cached_from(folder) == digest:
                return folder
        # checkpoint= names another file than the cached model was converted from (a
        # fine-tuned one, say): convert it, replacing the cache.
    try:
        import torch  # noqa: F401
    except ImportError as err:
        raise PresetError(
            f"Preset {name!r} is converted from its PyTorch checkpoint once, which "
            "needs PyTorch: pip install 'keras_fastfcn[convert]' (afterwards the converted "
            "model is cached and PyTorch is not needed).") from err
    in_cache = checkpoint is None
    downloaded = False
    if in_cache:
        checkpoint = os.path.join(cache_dir(), "downloads", file_name(name, entry))
        if not os.path.isfile(checkpoint):
            download(entry, checkpoint, name=name)
            downloaded = True
    elif not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"Checkpoint not found: {checkpoint}")
    where = f" downloaded from {download_page(entry)}" if downloaded else ""
    expected = entry.get("sha256") or entry.get("sha256_prefix")
    digest = digest or file_sha256(checkpoint)
    try:
        if expected:
            verify_sha256(checkpoint, expected, actual=digest)
    except PresetError as err:
        if in_cache:  # a bad download must not stay in the cache
            os.remove(checkpoint)
        raise PresetError(f"Preset {name!r}: the file {checkpoint}{where} is not the released "
                          f"checkpoint: {err} Nothing was cached. "
                          + manual_step(name, entry)) from None
    try:
        model = _checkpoint_reader(entry.get("format", "official"))(checkpoint, entry)
    except Exception as err:
        if in_cache:
            os.remove(checkpoint)
            raise PresetError(f"Preset {name!r}: the checkpoint {checkpoint}{where} is not "
                              f"the expected model ({_first_line(err)}). Nothing was "
                              "cached. " + manual_step(name, entry)) from err
        # The user's own file: the whole mismatch (keys, class counts) is the answer.
        raise PresetError(f"Preset {name!r}: {checkpoint} is not the released model "
                          f"{file_name(name, entry)!r} ({describe(name, entry)['description']}"
                          f"): {err}") from err
    save_segmenter(model, folder, metadata={"checkpoint": os.path.basename(checkpoint),
                                            "checkpoint_sha256": digest})
    return folder


def _cached_from(folder):
    """The SHA-256 of the checkpoint the cached preset `folder` was converted from
    (None for caches written before it was recorded)."""
    try:
        with open(os.path.join(folder, METADATA_FILE), encoding="utf-8") as f:
            return json.load(f).get("checkpoint_sha256")
    except (OSError, ValueError):
        return None


def _cached_folder(name):
    return os.path.join(cache_dir(), "presets", name)


def manual_step(name, entry=None):
    """What to do when the download fails: the page and the `checkpoint=` call."""
    entry = entry or PRESETS[name]
    return (f"Download {file_name(name, entry)} in a browser from {download_page(entry)} and "
            f"pass the file: FastFCNImageSegmenter.from_preset({name!r}, "
            f"checkpoint='path/to/{file_name(name, entry)}'), or, for the keras-fastfcn "
            f"commands, save it as "
            f"{os.path.join(cache_dir(), 'downloads', file_name(name, entry))}.")


def file_sha256(path):
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path, expected, actual=None):
    """Raises `PresetError` unless the file's SHA-256 is `expected`, or starts with it:
    mmcv's publishing script names a released file after the first 8 hex digits of its
    SHA-256 (`..._20210928_053722-5d1a2648.pth`), the only checksum mmsegmentation
    publishes. `actual`: the file's SHA-256 where the caller has read it already.

    Example:
    >>> verify_sha256("fastfcn_..._053722-5d1a2648.pth", "5d1a2648")  # doctest: +SKIP
    """
    actual, expected = actual or file_sha256(path), expected.lower()
    if len(expected) < len(actual) and actual.startswith(expected):
        return
    if actual != expected:
        what = "SHA-256" if len(expected) == len(actual) else "SHA-256 prefix"
        raise PresetError(f"{what} of {os.path.basename(path)} is {actual[:len(expected)]}, "
                          f"expected {expected} (the download is corrupt or not the released "
                          "file).")


def download(entry, target, timeout=60, name=None):
    """Downloads a preset's checkpoint to `target` (atomic; progress bar on stdout).

    Every failure is a `PresetError` naming the URL and, for preset `name`, the
    manual step (the file's page and the `checkpoint=` argument)."""
    manual = manual_step(name, entry) if name else ""
    if "url" in entry:
        response = _open(entry["url"], timeout, manual)
    else:
        response = _open_drive(entry["drive_id"], timeout, manual)
    with atomic_path(target) as tmp, response:
        total = int(response.headers.get("Content-Length") or 0) or None
        progbar = keras.utils.Progbar(total, unit_name="byte")
        done = 0
        url = response.geturl()
        try:
            with open(tmp, "wb") as f:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
                    done += len(block)
                    progbar.update(done)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            raise PresetError(f"Download of {url} broke off after {done} bytes ({err}). "
                              f"{manual}".rstrip()) from err
        if total is not None and done != total:
            raise PresetError(f"Download of {url} stopped at {done} of {total} bytes. "
                              f"{manual}".rstrip())
    return target


def _open(url, timeout, manual=""):
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError) as err:
        raise PresetError(f"Could not download {url}: {getattr(err, 'reason', err)}. "
                          f"Is there internet access? {manual}".rstrip()) from err


class _FormParser(html.parser.HTMLParser):
    """The download form (action + hidden inputs) of Google Drive's warning page."""

    def __init__(self):
        super().__init__()
        self.action, self.fields, self._in_form = None, {}, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and "download" in (attrs.get("action") or ""):
            self.action, self._in_form = attrs["action"], True
        elif tag == "input" and self._in_form and attrs.get("name"):
            self.fields[attrs["name"]] = attrs.get("value", "")

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_form = False


def _is_html(response):
    return "text/html" in (response.headers.get("Content-Type") or "")


def _open_drive(drive_id, timeout, manual):
    """Google Drive's download flow: the file, or its confirmation form, then the file."""
    query = urllib.parse.urlencode({"export": "download", "id": drive_id})
    response = _open(f"{DRIVE_URL}?{query}", timeout, manual)
    if not _is_html(response):
        return response
    parser = _FormParser()
    parser.feed(response.read().decode("utf-8", "replace"))
    response.close()
    if parser.action is None:
        raise PresetError("Google Drive did not serve the file (a quota or sign-in page). "
                          + manual)
    url = urllib.parse.urljoin(DRIVE_URL, parser.action)
    response = _open(f"{url}?{urllib.parse.urlencode(parser.fields)}", timeout, manual)
    if _is_html(response):
        response.close()
        raise PresetError("Google Drive did not serve the file after its confirmation step. "
                          + manual)
    return response


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def clear_cache(name=None):
    """Removes the cached download and converted model of `name` (or of all presets)."""
    names = [name] if name else list(PRESETS)
    for n in names:
        shutil.rmtree(os.path.join(cache_dir(), "presets", n), ignore_errors=True)
        path = os.path.join(cache_dir(), "downloads", file_name(n, PRESETS[n]))
        if os.path.exists(path):
            os.remove(path)
