"""`from_preset` of a released model, against a local HTTP server on 127.0.0.1.

The server plays Google Drive (the file directly, or its "can't scan for viruses" page
with a download form first) and serves a checkpoint the test generates with the
official module tree (keras_fastfcn/benchmark/torch_reference.py): download, conversion, the
cache, a corrupt download and a refused one are all exercised offline.
"""

import http.server
import io
import os
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
    mode = "direct"  # "direct", "confirm" (warning page first), "quota", "corrupt"
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
