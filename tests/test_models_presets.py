"""`from_preset` of a released model, against a local HTTP server on 127.0.0.1.

The server plays Google Drive (the file directly, or its "can't scan for viruses" page
with a download form first) and serves a checkpoint the test generates with the
official module tree (keras_fastfcn/benchmark/torch_reference.py): download, conversion, the
cache, a corrupt download and a refused one are all exercised offline. It also plays
download.openmmlab.com for a registered preset of format "mmseg" (an mmsegmentation
state dict made from the converter's key mapping, JPU width 64), whose file name
carries the first 8 hex digits of its SHA-256, as mmcv publishes them.
"""

import hashlib
import http.server
import io
import os
import re
import threading
import urllib.parse

import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="the PyTorch parity tests need PyTorch")

import keras_fastfcn as kf
from keras_fastfcn.benchmark import torch_reference as ref
from keras_fastfcn.models import presets

DRIVE_ID = "test-drive-id"


class FakeDrive(http.server.BaseHTTPRequestHandler):
    """`/uc?export=download&id=ID` and the `download` form target of the warning page."""

    checkpoint = b""
    mode = "direct"  # "direct", "confirm" (warning page first), "quota", "corrupt", "refuse"
    requests = []

    def do_GET(self):  # noqa: N802 (http.server API)
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        type(self).requests.append(self.path)
        if url.path == "/uc" and self.mode in ("confirm", "quota"):
            form = ('<form id="download-form" action="/download" method="get">'
                    f'<input type="hidden" name="id" value="{query.get("id")}">'
                    '<input type="hidden" name="confirm" value="t">'
                    '<input type="hidden" name="uuid" value="abc"></form>')
            page = ("<html><body>Google Drive can't scan this file for viruses. "
                    + (form if self.mode == "confirm" else "Quota exceeded") + "</body></html>")
            return self._send(page.encode(), "text/html; charset=utf-8")
        if url.path.startswith("/files/"):  # a plain URL (download.openmmlab.com)
            if self.mode == "refuse":
                return self.send_error(403, "Forbidden")
            data = self.checkpoint
            if self.mode == "corrupt":  # one byte changed, same length
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            return self._send(data, "application/octet-stream")
        if url.path in ("/uc", "/download"):
            if url.path == "/download" and query.get("confirm") != "t":
                return self._send(b"<html>bad confirm</html>", "text/html")
            data = b"not a checkpoint at all" if self.mode == "corrupt" else self.checkpoint
            return self._send(data, "application/octet-stream")
        self.send_error(404)

    def _send(self, data, content_type):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def checkpoint(tiny_backbone):
    torch_model = ref.randomize_(ref.SegmentationModel(
        "fcn", 5, layers=(1, 1, 1, 1), jpu="JPU", aux=True, se_loss=False, width=64), 0)
    buffer = io.BytesIO()
    torch.save(torch_model.eval().state_dict(), buffer)
    return buffer.getvalue(), torch_model


@pytest.fixture
def drive(checkpoint, tmp_path, monkeypatch, tiny_backbone):
    FakeDrive.checkpoint, FakeDrive.mode, FakeDrive.requests = checkpoint[0], "direct", []
    server = http.server.HTTPServer(("127.0.0.1", 0), FakeDrive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(presets, "DRIVE_URL", f"http://127.0.0.1:{server.server_port}/uc")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    name = "test_fcn_jpu_tiny"
    monkeypatch.setitem(presets.PRESETS, name, {
        "drive_id": DRIVE_ID, "head": "fcn", "encoder": tiny_backbone, "upsampler": "jpu",
        "num_classes": 5, "dataset": None, "paper_miou": None, "protocol": "test"})
    yield name
    server.shutdown()
    server.server_close()


def _cache_files(tmp_path):
    root = tmp_path / "keras_home"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("mode", ["direct", "confirm"])
def test_downloads_converts_once_then_uses_the_cache(drive, checkpoint, tmp_path, mode):
    FakeDrive.mode = mode
    seg = kf.models.FastFCNImageSegmenter.from_preset(drive)
    assert seg.num_classes == 5 and seg.head_name == "fcn"
    x = np.random.RandomState(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = checkpoint[1](torch.from_numpy(((x / 255 - mean) / std).astype("float32"))
                                 .permute(0, 3, 1, 2))[0].permute(0, 2, 3, 1).numpy()
    got = seg.predict(x, verbose=0)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.999
    assert len(FakeDrive.requests) == (1 if mode == "direct" else 2)
    cached = _cache_files(tmp_path)
    assert f"keras_fastfcn/presets/{drive}/model.weights.h5" in cached
    # The second call is served from the converted cache: no request at all.
    again = kf.models.FastFCNImageSegmenter.from_preset(drive)
    assert len(FakeDrive.requests) == (1 if mode == "direct" else 2)
    np.testing.assert_allclose(again.predict(x, verbose=0), got, atol=1e-5)
    assert isinstance(kf.models.FastFCNBackbone.from_preset(drive), kf.models.FastFCNBackbone)


def test_corrupt_download_is_refused_and_nothing_is_cached(drive, tmp_path):
    FakeDrive.mode = "corrupt"
    with pytest.raises(presets.PresetError, match="is not the expected model.*Nothing was cached"):
        kf.models.FastFCNImageSegmenter.from_preset(drive)
    assert _cache_files(tmp_path) == []


def test_drive_refusal_names_the_manual_step(drive, tmp_path, checkpoint):
    FakeDrive.mode = "quota"
    with pytest.raises(presets.PresetError,
                       match=f"Download {drive}.pth.tar in a browser from "
                             f".*open\\?id={DRIVE_ID}.*checkpoint='path/to/{drive}.pth.tar'"):
        kf.models.FastFCNImageSegmenter.from_preset(drive)
    assert _cache_files(tmp_path) == []
    # The manual step: the file downloaded by hand.
    path = tmp_path / "by_hand.pth.tar"
    path.write_bytes(checkpoint[0])
    seg = kf.models.FastFCNImageSegmenter.from_preset(drive, checkpoint=str(path))
    assert seg.num_classes == 5 and path.exists()


def test_checkpoint_argument_is_used_even_when_the_preset_is_cached(drive, tmp_path):
    """A checkpoint passed by hand (a fine-tuned one, say) was ignored once the preset
    was cached from another file: the cache is used only for the file it was
    converted from (its SHA-256 is in metadata.json)."""
    seg = kf.models.FastFCNImageSegmenter.from_preset(drive)  # cached from the download
    other_model = ref.randomize_(ref.SegmentationModel(
        "fcn", 5, layers=(1, 1, 1, 1), jpu="JPU", aux=True, se_loss=False, width=64), 11)
    other = tmp_path / "fine_tuned.pth"
    torch.save(other_model.eval().state_dict(), other)
    x = np.random.RandomState(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = other_model(torch.from_numpy(((x / 255 - mean) / std).astype("float32"))
                               .permute(0, 3, 1, 2))[0].permute(0, 2, 3, 1).numpy()
    tuned = kf.models.FastFCNImageSegmenter.from_preset(drive, checkpoint=str(other))
    got = tuned.predict(x, verbose=0)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, atol=1e-4 * scale)
    assert np.abs(got - seg.predict(x, verbose=0)).max() > 1e-2 * scale
    # Now cached from that file: no request, the same model.
    requests = len(FakeDrive.requests)
    again = kf.models.FastFCNImageSegmenter.from_preset(drive, checkpoint=str(other))
    np.testing.assert_allclose(again.predict(x, verbose=0), got, atol=1e-5 * scale)
    assert len(FakeDrive.requests) == requests


def test_wrong_checkpoint_by_hand_says_what_does_not_match(drive, tmp_path):
    wrong = ref.randomize_(ref.SegmentationModel(
        "fcn", 7, layers=(1, 1, 1, 1), jpu="JPU", aux=True, se_loss=False, width=64), 0)
    path = tmp_path / "wrong.pth"
    torch.save(wrong.eval().state_dict(), path)
    with pytest.raises(presets.PresetError) as err:
        kf.models.FastFCNImageSegmenter.from_preset(drive, checkpoint=str(path))
    message = str(err.value)
    assert "wrong.pth is not the released model" in message
    assert "7" in message and "in a browser" not in message
    assert _cache_files(tmp_path) == []


def test_sha256_is_verified(drive, tmp_path, monkeypatch):
    monkeypatch.setitem(presets.PRESETS[drive], "sha256", "0" * 64)
    with pytest.raises(presets.PresetError, match="SHA-256 .* expected 0000"):
        kf.models.FastFCNImageSegmenter.from_preset(drive)
    assert _cache_files(tmp_path) == []


def test_released_models_are_listed():
    listed = kf.models.list_presets()
    assert {"fastfcn_encnet_jpu_resnet50_pcontext", "fastfcn_psp_jpu_resnet50_pcontext",
            "fastfcn_deeplab_jpu_resnet50_pcontext", "fastfcn_encnet_jpu_resnet101_pcontext",
            "fastfcn_encnet_jpu_resnet50_ade20k", "fastfcn_encnet_jpu_resnet101_ade20k"} <= set(listed)
    entry = listed["fastfcn_encnet_jpu_resnet50_pcontext"]
    assert (entry["num_classes"], entry["encoder"], entry["paper_miou"]) == (59, "resnet50s", 51.05)
    assert os.environ.get("KERAS_HOME") != "~"  # listing needs no network or cache


# ------------------------------------------------------------------ mmsegmentation


@pytest.fixture(scope="module")
def mmseg_checkpoint():
    """An mmsegmentation PSP FastFCN checkpoint (19 Cityscapes classes, JPU width 64, so
    a quarter of the released size) as saved bytes, their SHA-256 prefix, the state."""
    import mmseg_support
    from keras_fastfcn.convert.mmseg import build_mmseg_segmenter
    from keras_fastfcn.data import palettes

    state = mmseg_support.mmseg_state_dict(build_mmseg_segmenter("psp", 19, width=64))
    buffer = io.BytesIO()
    torch.save({"meta": {"dataset_meta": {"classes": tuple(palettes.CITYSCAPES_CLASSES)}},
                "state_dict": {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}},
               buffer)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()[:8], state


@pytest.fixture
def openmmlab(mmseg_checkpoint, tmp_path, monkeypatch):
    """A registered preset of format "mmseg" served from 127.0.0.1 (KERAS_HOME in tmp)."""
    data, prefix, _ = mmseg_checkpoint
    FakeDrive.checkpoint, FakeDrive.mode, FakeDrive.requests = data, "direct", []
    server = http.server.HTTPServer(("127.0.0.1", 0), FakeDrive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    name = "test_mmseg_psp_w64"
    file_name = f"fastfcn_r50-d32_jpu_psp_test_20210928_053722-{prefix}.pth"
    entry = dict(presets.PRESETS["fastfcn_psp_jpu_resnet50_v1c_cityscapes_b8"],
                 url=f"http://127.0.0.1:{server.server_port}/files/{file_name}",
                 file_name=file_name, sha256_prefix=prefix, width=64)
    monkeypatch.setitem(presets.PRESETS, name, entry)
    yield name, entry
    server.shutdown()
    server.server_close()


def test_mmseg_preset_downloads_verifies_converts_once(openmmlab, mmseg_checkpoint, tmp_path,
                                                       capsys):
    from keras_fastfcn.convert.mmseg import build_mmseg_segmenter

    name, entry = openmmlab
    data, _, state = mmseg_checkpoint
    # The architecture alone: offline, and what the converter builds.
    arch = kf.models.FastFCNImageSegmenter.from_preset(name, load_weights=False)
    assert FakeDrive.requests == [] and _cache_files(tmp_path) == []
    expected = build_mmseg_segmenter("psp", 19, width=64, class_names=arch.class_names,
                                     dataset="cityscapes")
    assert arch.get_config() == expected.get_config()
    assert (arch.align_corners, arch.aux_weight, arch.se_loss) == (False, 0.4, False)

    seg = kf.models.FastFCNImageSegmenter.from_preset(name)
    assert len(FakeDrive.requests) == 1
    assert f"{len(data)}/{len(data)}" in capsys.readouterr().out  # the progress bar
    np.testing.assert_array_equal(np.asarray(seg.head_layer.classifier.bias),
                                  state["decode_head.conv_seg.bias"])
    assert seg.dataset == "cityscapes" and not seg.align_corners
    assert _cache_files(tmp_path) == sorted(
        [f"keras_fastfcn/downloads/{entry['file_name']}"]
        + [f"keras_fastfcn/presets/{name}/{f}" for f in
           ("config.json", "metadata.json", "model.weights.h5")])
    # Converted once: the second call reads the cache, without a request.
    again = kf.models.FastFCNImageSegmenter.from_preset(name)
    assert len(FakeDrive.requests) == 1
    for a, b in zip(seg.weights, again.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mmseg_preset_corrupt_download_is_refused(openmmlab, mmseg_checkpoint, tmp_path):
    name, entry = openmmlab
    data, prefix, _ = mmseg_checkpoint
    FakeDrive.mode = "corrupt"
    with pytest.raises(presets.PresetError) as info:
        kf.models.FastFCNImageSegmenter.from_preset(name)
    message = str(info.value)
    actual = hashlib.sha256(data[:100] + bytes([data[100] ^ 1]) + data[101:]).hexdigest()
    for fragment in (f"downloaded from {entry['url']}", f"is {actual[:8]}, expected {prefix}",
                     "Nothing was cached", f"Download {entry['file_name']} in a browser from "
                     f"{entry['url']}", f"checkpoint='path/to/{entry['file_name']}'"):
        assert fragment in message, message
    assert _cache_files(tmp_path) == []
    # The same corrupt file passed by hand: refused before conversion, and left alone.
    by_hand = tmp_path / "by_hand.pth"
    by_hand.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(presets.PresetError, match=re.escape(f"expected {prefix}")):
        kf.models.FastFCNImageSegmenter.from_preset(name, checkpoint=str(by_hand))
    assert by_hand.exists() and _cache_files(tmp_path) == []


def test_mmseg_preset_refused_download_names_url_and_manual_step(openmmlab, tmp_path):
    name, entry = openmmlab
    FakeDrive.mode = "refuse"
    with pytest.raises(presets.PresetError) as info:
        kf.models.FastFCNImageSegmenter.from_preset(name)
    message = str(info.value)
    assert message.startswith(f"Could not download {entry['url']}: Forbidden."), message
    assert (f"Download {entry['file_name']} in a browser from {entry['url']} and pass the "
            f"file: FastFCNImageSegmenter.from_preset('{name}', checkpoint='path/to/"
            f"{entry['file_name']}')") in message
    # The commands' route: the file where the download would have gone.
    downloads = tmp_path / "keras_home" / "keras_fastfcn" / "downloads"
    assert f"for the keras-fastfcn commands, save it as {downloads / entry['file_name']}." \
        in message
    assert _cache_files(tmp_path) == []


def test_mmseg_presets_are_listed_with_their_protocol():
    listed = kf.models.list_presets()
    mmseg = {n: e for n, e in listed.items() if e["source"] == "open-mmlab/mmsegmentation"}
    assert len(mmseg) == 12 and len(listed) >= 18
    entry = listed["fastfcn_aspp_jpu_resnet50_v1c_cityscapes_b8"]
    assert entry["metrics"]["mIoU"] == 79.12 and entry["metrics"]["mIoU_ms_flip"] == 80.58
    assert entry["license"] == "Apache-2.0" and entry["head"] == "mmseg_aspp"
    assert entry["inference"] == {"protocol": "mmseg", "keep_ratio_fit": (2048, 1024)}
    assert entry["file"].endswith("_20210928_053722-5d1a2648.pth")
    assert entry["url"] == ("https://download.openmmlab.com/mmsegmentation/v0.5/fastfcn/"
                            "fastfcn_r50-d32_jpu_aspp_512x1024_80k_cityscapes/" + entry["file"])
    raw = presets.PRESETS["fastfcn_aspp_jpu_resnet50_v1c_cityscapes_b8"]
    assert raw["sha256_prefix"] == "5d1a2648" and raw["format"] == "mmseg"
    for name, e in mmseg.items():
        assert presets.PRESETS[name]["sha256_prefix"] == e["file"][-12:-4], name
        assert (e["num_classes"], e["dataset"]) in ((19, "cityscapes"), (150, "ade20k"))
        assert e["metrics"]["mIoU"] < e["metrics"]["mIoU_ms_flip"]
    assert {n[len("fastfcn_"):].split("_jpu_")[0] for n in mmseg} == {"psp", "aspp", "encnet"}
    ade = listed["fastfcn_encnet_jpu_resnet50_v1c_ade20k_160k"]
    assert ade["inference"]["keep_ratio_fit"] == (2048, 512) and ade["head"] == "mmseg_encnet"
    # The authors' keep their one reported number (single scale or MS+flip).
    r101 = listed["fastfcn_encnet_jpu_resnet101_pcontext"]
    assert r101["metrics"]["mIoU"] is None and r101["metrics"]["mIoU_ms_flip"] == 54.03
    assert r101["inference"] == {"mode": "slide", "base_size": 520, "crop_size": 480}
