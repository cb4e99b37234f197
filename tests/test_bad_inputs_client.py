"""Bad input and faults of the TF Serving REST client (`keras_fastfcn.serving.client`).

Real servers on 127.0.0.1 (ephemeral ports, one thread each) answer malformed bodies,
HTTP errors, nothing at all, or close the connection. Each case must end as one clear
error: `predict()` raises a ValueError or an OSError naming the problem, and `main()`
prints exactly one `error:` line, returns 1 and leaves nothing at the output path. The
timeouts are 0.5 s, so the whole file runs in seconds.
"""

import base64
import http.server
import json
import os
import socket
import socketserver
import threading
import time

import numpy as np
import pytest
from PIL import Image

from keras_fastfcn.serving import client

TIMEOUT = 0.5
PREFIX = "keras_fastfcn.serving.client: error: "


class Servers:
    """Starts HTTP (or raw TCP) servers whose answer to a POST is `behaviour(handler)`;
    `requests` counts the POSTs each received."""

    def __init__(self):
        self.release = threading.Event()  # ends the handlers that wait forever
        self.servers = []

    def http(self, behaviour):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                self.server.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                behaviour(self)

            def log_message(self, *args):
                pass

        return self._start(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler))

    def raw(self, answer):
        """A TCP server that reads a little, writes `answer` (bytes) and closes."""

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                self.server.requests += 1
                self.request.recv(65536)
                self.request.sendall(answer)

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        return self._start(server)

    def _start(self, server):
        server.requests = 0
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server

    def close(self):
        self.release.set()
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def servers():
    s = Servers()
    yield s
    s.close()


def reply(status, body, content_type="application/json"):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()

    def behaviour(handler):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return behaviour


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "street.png"
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(path)
    return str(path)


def fails_in_one_line(capsys, argv, fragments):
    """Runs main(argv); asserts status 1 and one `error:` line holding every fragment."""
    assert client.main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(PREFIX) and "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def cli(images, url, out, *extra):
    images = [images] if isinstance(images, str) else list(images)
    return [*images, "--url", url, "--model", "fastfcn", "--output-dir", str(out),
            "--timeout", str(TIMEOUT), *extra]


GOOD_ROW = {"class_map": [[0, 1, 1], [1, 0, 0]], "class_names": ["road", "car"]}

# (status-200 body, fragments of the message): answers that are no usable prediction.
MALFORMED = [
    (b"\xff\xfe{\x00}", ["the server's answer", "not UTF-8", "0xff"]),
    (b"<html><body>It works!</body></html>", ["the server's answer", "not JSON", "<html>"]),
    (b"", ["the server's answer", "is empty"]),
    ({"result": [1]}, ["the server's answer", 'neither "predictions" nor "outputs"', "result"]),
    ([1, 2], ["the server's answer", "JSON list"]),
    ({"predictions": {"class_map": 1}}, ["the server's answer", "not a list"]),
    ({"predictions": []}, ["the server's answer", "0 predictions", "1 image"]),
    ({"predictions": [[[0, 1], [1]]]},
     ["the server's answer", "ragged class_map", "rows of different lengths"]),
    ({"predictions": [[[0, None]]]}, ["the server's answer", "nulls in its class_map"]),
    ({"predictions": [[0, 1, 1]]}, ["the server's answer", "class_map of shape (3,)"]),
    ({"predictions": [[[]]]}, ["the server's answer", "class_map of shape (1, 0)"]),
    ({"predictions": [[["road", "car"]]]}, ["the server's answer", "strings", "'road'"]),
    ({"predictions": [[[0, 0.5]]]}, ["the server's answer", "non-integer", "(e.g. 0.5)"]),
    ({"predictions": [[[0, -1]]]}, ["the server's answer", "negative class id (-1)"]),
    ({"predictions": [[[True, False]]]}, ["the server's answer", "true/false"]),
    ({"predictions": [dict(GOOD_ROW, class_map=[[0, 7, 1]])]},
     ["the server's answer", "class id 7", "2 classes", "class_names"]),
    ({"predictions": [{"class_map": [[0, 3]], "probabilities": [[[1, 0, 0], [0, 1, 0]]]}]},
     ["the server's answer", "class id 3", "3 classes", "probabilities"]),
    ({"predictions": [{"class_map": [[0, 1]], "probabilities": [[1, 0], [0, 1]]}]},
     ["the server's answer", "probabilities of shape (2, 2)"]),
    ({"predictions": [dict(GOOD_ROW, class_names=["road", 3])]},
     ["the server's answer", "non-string value (3)", "class_names"]),
    ({"predictions": [{"logits": [[0]]}]}, ["the server's answer", "no class_map", "logits"]),
    ({"outputs": {"probabilities": [[[[1.0]]]]}}, ["the server's answer", "no class_map"]),
    ({"outputs": {"class_map": [[[0]]], "class_names": []}},
     ["the server's answer", "different numbers of images"]),
    ({"error": "Servable not ready"}, ["answered with an error", "Servable not ready"]),
]


@pytest.mark.parametrize("body, fragments", MALFORMED,
                         ids=[f"malformed{i}" for i in range(len(MALFORMED))])
def test_malformed_answer_is_one_clear_error(servers, image, tmp_path, capsys, body, fragments):
    url, server = servers.http(reply(200, body))
    with pytest.raises(client.BadAnswerError) as caught:
        client.predict(url, "fastfcn", [image], timeout=TIMEOUT)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)
    out = tmp_path / "masks"
    fails_in_one_line(capsys, cli(image, url, out), fragments)
    assert not out.exists()
    assert server.requests == 2


def test_parse_predictions_checks_values_without_a_server():
    with pytest.raises(ValueError, match="rows of different lengths"):
        client.parse_predictions({"predictions": [[[0, 1], [2]]]})
    with pytest.raises(ValueError, match="class id 2 .* 2 classes"):
        client.parse_predictions({"outputs": {"class_map": [[[0, 2]]],
                                              "class_names": [["a", "b"]]}})
    # Whole-number floats are class ids; binary class names come as TF Serving's b64.
    b64 = [{"b64": base64.b64encode(n.encode()).decode()} for n in ("road", "car")]
    (result,) = client.parse_predictions(
        {"predictions": [{"class_map": [[0.0, 1.0]], "class_names": b64}]})
    assert result["class_map"].dtype == np.int32 and result["class_map"].tolist() == [[0, 1]]
    assert result["class_names"] == ["road", "car"]


def test_good_answer_writes_the_mask(servers, image, tmp_path, capsys):
    url, _ = servers.http(reply(200, {"predictions": [GOOD_ROW]}))
    out = tmp_path / "masks"
    assert client.main(cli(image, url, out)) == 0
    assert "road: 50.0%" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["street_mask.png"]
    assert np.asarray(Image.open(out / "street_mask.png")).shape == (2, 3, 3)


def test_server_that_never_answers_times_out_in_one_line(servers, image, tmp_path, capsys):
    url, _ = servers.http(lambda handler: servers.release.wait(30))
    target = client.predict_url(url, "fastfcn")
    start = time.monotonic()
    with pytest.raises(client.ServerTimeoutError) as caught:
        client.predict(url, "fastfcn", [image], timeout=TIMEOUT)
    assert time.monotonic() - start < 10 * TIMEOUT
    assert isinstance(caught.value, TimeoutError)  # an OSError
    for fragment in (target, "0.5 s", "--timeout", "timeout="):
        assert fragment in str(caught.value)
    out = tmp_path / "masks"
    fails_in_one_line(capsys, cli(image, url, out), [target, "within 0.5 s", "--timeout"])
    assert not out.exists()


def test_server_that_stops_in_the_middle_of_its_answer(servers, image, tmp_path, capsys):
    def headers_then_nothing(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b'{"predictions": ')
        handler.wfile.flush()
        servers.release.wait(30)

    def headers_then_close(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b'{"predictions": ')

    url, _ = servers.http(headers_then_nothing)
    fails_in_one_line(capsys, cli(image, url, tmp_path / "a"), ["within 0.5 s", "--timeout"])
    url, _ = servers.http(headers_then_close)
    fails_in_one_line(capsys, cli(image, url, tmp_path / "b"),
                      ["in the middle of its answer", "16 bytes received"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_connection_closed_refused_or_not_http(servers, image, tmp_path, capsys):
    url, _ = servers.http(lambda handler: None)  # reads the request, closes, no answer
    with pytest.raises(ConnectionError, match="closed the connection without an answer"):
        client.predict(url, "fastfcn", [image], timeout=TIMEOUT)
    fails_in_one_line(capsys, cli(image, url, tmp_path / "out"), [url, "closed the connection"])

    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(client.ServerUnreachableError, match="connection refused"):
        client.predict(refused, "fastfcn", [image], timeout=TIMEOUT)
    fails_in_one_line(capsys, cli(image, refused, tmp_path / "out"),
                      ["connection refused", refused, "--rest_api_port"])

    url, _ = servers.raw(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00 not http\r\n")  # e.g. gRPC
    fails_in_one_line(capsys, cli(image, url, tmp_path / "out"),
                      ["did not answer in HTTP", "8500"])
    assert not (tmp_path / "out").exists()


def test_http_error_shows_status_and_the_servers_message(servers, image, tmp_path, capsys):
    message = ("serving_image_bytes: an image does not have 3 channels (RGB)\n\t [[{{node "
               "Assert}}]]" + " and more" * 200)
    url, _ = servers.http(reply(400, {"error": message}))
    with pytest.raises(client.ServerHTTPError) as caught:
        client.predict(url, "fastfcn", [image], timeout=TIMEOUT)
    assert isinstance(caught.value, OSError) and caught.value.status == 400
    line = fails_in_one_line(capsys, cli(image, url, tmp_path / "out"),
                             ["HTTP 400", "does not have 3 channels (RGB) [[{{node Assert}}]]"])
    assert len(line) < 600  # a short piece of the message, not all of it
    url, _ = servers.http(reply(500, b"<html><h1>Internal error</h1></html>", "text/html"))
    fails_in_one_line(capsys, cli(image, url, tmp_path / "out"),
                      ["HTTP 500", "<html><h1>Internal error"])
    url, _ = servers.http(reply(404, {"error": "Servable not found for request: Latest(x)"}))
    fails_in_one_line(capsys, cli(image, url, tmp_path / "out"),
                      ["HTTP 404", "--model", "Servable not found"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--output-dir", "--output"])
def test_output_that_cannot_be_a_folder_fails_before_any_request(
        servers, image, tmp_path, capsys, option):
    url, server = servers.http(reply(200, {"predictions": [GOOD_ROW]}))
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    argv = [image, "--url", url, "--model", "fastfcn", option]
    fails_in_one_line(capsys, argv + [str(afile)], [str(afile), "is not a folder"])
    fails_in_one_line(capsys, argv + [str(afile / "sub")], [str(afile), "is a file"])
    assert afile.read_text() == "keep me" and server.requests == 0


def test_bad_images_and_options_fail_before_any_request(servers, image, tmp_path, capsys):
    url, server = servers.http(reply(200, {"predictions": [GOOD_ROW]}))
    out = tmp_path / "out"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    twin = tmp_path / "other"
    twin.mkdir()
    Image.open(image).save(twin / "street.png")
    cases = [  # (images, url, extra options, fragments)
        ([str(tmp_path / "nothere.png")], url, [], ["image file not found", "nothere.png"]),
        ([image, str(bad)], url, [], ["cannot read image", "bad.png"]),
        ([str(tmp_path)], url, [], ["is a folder"]),
        ([image, str(twin / "street.png")], url, [], ["same mask", "street.png"]),
        ([image], url, ["--version", "-1"], ["--version", "whole number >= 0"]),
        ([image], "localhost:8501", [], ["--url", "http://", "'localhost:8501'"]),
    ]
    for images, base, extra, fragments in cases:
        fails_in_one_line(capsys, cli(images, base, out, *extra), fragments)
    assert server.requests == 0 and not out.exists()
    with pytest.raises(ValueError, match="cannot read image"):
        client.predict(url, "fastfcn", [str(bad)])
    with pytest.raises(ValueError, match="positive number of seconds"):
        client.predict(url, "fastfcn", [image], timeout=0)
    with pytest.raises(SystemExit) as caught:  # argparse: usage and the error, status 2
        client.main(cli(image, url, out)[:-1] + ["-3"])
    assert caught.value.code == 2 and "positive number of seconds" in capsys.readouterr().err
    assert server.requests == 0 and not out.exists()


def test_failure_part_way_keeps_finished_masks_and_leaves_no_partial_one(
        servers, image, tmp_path, capsys):
    answers = iter([{"predictions": [GOOD_ROW]}, {"predictions": [[[0, "x"]]]}])
    url, _ = servers.http(lambda handler: reply(200, next(answers))(handler))
    second = tmp_path / "second.png"
    Image.open(image).save(second)
    out = tmp_path / "out"
    fails_in_one_line(capsys, cli([image, str(second)], url, out), ["strings", "'x'"])
    assert sorted(os.listdir(out)) == ["street_mask.png"]  # no second mask, no temporary
