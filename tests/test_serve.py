"""The web server over real HTTP: uvicorn in a thread on 127.0.0.1, httpx as the client."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rnnlab
from _drawings import redrawn
from rnnlab.data import load_split

pytest_plugins = ["_fixtures_runs"]
pytestmark = pytest.mark.usefixtures("one_thread")

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from rnnlab.cli import main  # noqa: E402
from rnnlab.serve.app import Limits, create_app  # noqa: E402


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mnist() -> np.ndarray:
    return load_split("mnist", "test")[0][:4].numpy()  # (4, 28, 28) uint8


@pytest.fixture(scope="module")
def server(trained_run: Path, serving):
    with serving(create_app(trained_run, limits=Limits(max_upload_bytes=256 * 1024, max_pixels=4_000_000))) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client


def test_health_info_page_and_docs(server) -> None:
    assert server.get("/health").status_code == 200
    info = server.get("/info").json()
    assert info["view"] == "rows" and info["steps"] == 28 and info["classes"] == 10 and info["cell"] == "lstm"
    page = server.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and '<canvas id="pad"' in page.text
    assert "http" not in page.text.split("<body>")[1].replace('href="/docs"', "")  # self-contained: no CDN
    assert server.get("/static/app.js").status_code == 200 and server.get("/static/style.css").status_code == 200
    assert server.get("/docs").status_code == 200
    body = server.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    missing = server.get("/nope")
    assert missing.status_code == 404 and "error" in missing.json()
    for path in ("/", "/health"):  # health checks and load balancers probe with HEAD
        head = server.head(path)
        assert head.status_code == 200 and head.content == b"", path
    assert info["class_names"] is None  # MNIST's digits are their own names
    assert "name" not in server.post("/predict", json={"pixels": np.eye(28).tolist()}).json()


def test_a_wrong_method_is_a_405_naming_the_one_to_use(untrained_run, serving) -> None:
    with serving(create_app(untrained_run(["model.hidden=8"]))) as url:
        for method, path, allowed in (("GET", "/predict", "POST"), ("PUT", "/predict", "POST"),
                                      ("DELETE", "/info", "GET")):
            response = httpx.request(method, url + path, timeout=30)
            assert response.status_code == 405, (method, path)
            assert response.headers["allow"] == allowed  # HTTP requires it of a 405
            assert response.json() == {"error": f"method {method} is not allowed on {path}; use {allowed}"}
        assert httpx.get(url + "/nope", timeout=30).json() == {"error": "Not Found"}


def test_named_classes_are_served(untrained_run, serving, mnist: np.ndarray) -> None:
    run = untrained_run(["data.dataset=fashion-mnist", "model.hidden=8"])
    names = rnnlab.load(run).class_names
    with serving(create_app(run)) as url:
        info = httpx.get(url + "/info", timeout=30).json()
        got = httpx.post(url + "/predict", json={"pixels": mnist[0].tolist()}, timeout=30).json()
    assert info["class_names"] == names and names[1] == "Trouser"
    assert got["name"] == names[got["class"]]


def test_upload_matches_the_library(server, trained_run: Path, mnist: np.ndarray) -> None:
    trained = rnnlab.load(trained_run)
    expected = trained.predict(mnist)
    for image, want in zip(mnist, expected):
        response = server.post("/predict", files={"file": ("digit.png", png(image), "image/png")})
        assert response.status_code == 200, response.text
        got = response.json()
        assert got["class"] == want["class"]
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
        assert len(got["steps"]) == 28 and all(len(s) == 10 for s in got["steps"])
        assert got["steps_read"] == list(range(1, 29))
        assert np.array_equal(np.array(got["image"], dtype=np.uint8), image)  # passed through unchanged
        assert got["passthrough"] and not got["inverted"]


def test_a_coloured_upload_at_mnist_size_is_normalised_not_passed_through(server, mnist: np.ndarray) -> None:
    # Red ink is dark grey (luminance 0.3): used as it was, it read as a faint digit and was misclassified.
    for image in mnist:
        want = server.post("/predict", files={"file": ("digit.png", png(image), "image/png")}).json()
        for kind in ("red on black", "red on white"):
            got = server.post("/predict", files={"file": ("red.png", png(redrawn(image, kind)), "image/png")}).json()
            assert not got["passthrough"] and got["inverted"] == (kind == "red on white")
            seen = np.array(got["image"], dtype=int)
            assert seen.max() == 255 and np.abs(seen - image).mean() < 0.5
            assert got["class"] == want["class"]


def test_upload_of_a_photo_like_image(server, mnist: np.ndarray) -> None:
    big = Image.fromarray(255 - mnist[0]).resize((300, 300)).convert("RGB")
    buffer = io.BytesIO()
    big.save(buffer, "JPEG")
    got = server.post("/predict", files={"file": ("photo.jpg", buffer.getvalue(), "image/jpeg")}).json()
    assert got["inverted"] and got["geometry"]["source_size"] == [300, 300]
    assert 0 < got["geometry"]["scale"][0] < 1  # 28x28 pixels per source pixel


def test_json_pixels_in_both_scales(server, trained_run: Path, mnist: np.ndarray) -> None:
    want = rnnlab.load(trained_run).predict(mnist[1])[0]
    as_255 = server.post("/predict", json={"pixels": mnist[1].tolist()}).json()
    as_01 = server.post("/predict", json={"pixels": (mnist[1] / 255.0).tolist()}).json()
    assert as_255["class"] == as_01["class"] == want["class"]
    np.testing.assert_allclose(as_255["probabilities"], want["probabilities"], atol=1e-6)
    np.testing.assert_allclose(as_01["probabilities"], want["probabilities"], atol=1e-6)


@pytest.mark.parametrize("payload, message", [
    ({"pixels": [[0] * 28] * 27}, "28 rows of 28"),
    ({"pixels": [[0] * 27] * 28}, "28 rows of 28"),
    ({"pixels": [["a"] * 28] * 28}, "numbers"),
    ({"pixels": [[300] * 28] * 28}, "0-255"),
    ({"image": []}, "pixels"),
])
def test_bad_json_is_a_400(server, payload: dict, message: str) -> None:
    response = server.post("/predict", json=payload)
    assert response.status_code == 400 and message in response.json()["error"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"])
def test_an_image_sent_raw_is_told_to_go_in_the_form(fmt: str) -> None:
    from rnnlab.serve.app import pixels_from_json

    buffer = io.BytesIO()
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(buffer, fmt)
    # requests.post(url, data=png) sends no content type, which the API reads as JSON
    with pytest.raises(ValueError, match=r"^the body is an image file sent as it is; send it as a multipart/"
                                         r"form-data upload in the field 'file' \(curl -F file=@digit.png URL\)$"):
        pixels_from_json(buffer.getvalue())
    with pytest.raises(ValueError, match=r"^the body is not valid JSON"):
        pixels_from_json(b"BMP? no, just text")


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server) -> None:
    rows = [["9" * 4000] + ["0"] * 27] + [["0"] * 28] * 27  # one pixel of 4000 digits: too large for a float
    huge_pixel = ('{"pixels": [' + ",".join("[" + ",".join(row) + "]" for row in rows) + "]}").encode()
    cases = [
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(content=b"[" * 100_000 + b"]" * 100_000, headers={"content-type": "application/json"}), 400,
         "nested too deeply"),
        (dict(content=huge_pixel, headers={"content-type": "application/json"}), 400, "0-1 or 0-255"),
        (dict(content=('{"pixels": [[NaN' + ", 0" * 27 + "]" + (", [" + ", ".join(["0"] * 28) + "]") * 27 + "]}")
              .encode(), headers={"content-type": "application/json"}), 400, "finite numbers in 0-1 or 0-255 (the "
                                                                                "body holds NaN or Infinity)"),
        (dict(files={"file": ("a.png", b"definitely not an image", "image/png")}), 422, "not an image"),
        (dict(files={"file": ("a.png", b"", "image/png")}), 422, "empty"),
        (dict(files={"other": ("a.png", b"x", "image/png")}), 400, "field 'file'"),
        (dict(content=b"x", headers={"content-type": "text/plain"}), 415, "unsupported content type"),
        (dict(files={"file": ("big.bin", b"\0" * (300 * 1024), "image/png")}), 413, "too large"),
        (dict(files={"file": ("blank.png", png(np.zeros((60, 60), np.uint8) + 255), "image/png")}), 422, "no digit"),
        (dict(files={"file": ("huge.png", png(np.zeros((2100, 2100), np.uint8)), "image/png")}), 413, "too large"),
    ]
    for kwargs, status, message in cases:
        response = server.post("/predict", **kwargs)
        assert response.status_code == status, (kwargs.keys(), response.text)
        assert message in response.json()["error"]
    assert server.get("/health").status_code == 200


@pytest.mark.parametrize(("content_type", "body", "message"), [
    ("multipart/form-data; boundary=XYZ", b"not a boundary at all",
     "malformed multipart body: Invalid multipart data (Expected boundary character 45, got 110 at index 2)"),
    ("multipart/form-data; boundary=XYZ",  # a header without its colon
     b'--XYZ\r\nContent-Disposition form-data; name="file"\r\n\r\nabc\r\n--XYZ--\r\n',
     "malformed multipart body: Invalid multipart data (Found invalid character 32 in header at 26)"),
    ("multipart/form-data", b"no boundary given", "malformed multipart body: Missing boundary in multipart"),
])
def test_a_malformed_multipart_body_is_a_400_and_no_log_line(server, caplog: pytest.LogCaptureFixture,
                                                             content_type: str, body: bytes, message: str) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    response = server.post("/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == 400 and response.json() == {"error": message}
    # python-multipart's own warning of the same thing (printed bare on a server's console) is dropped.
    assert [r for r in caplog.records if "multipart" in r.name] == []
    # Only while the app parses: the library's log is left alone otherwise.
    logging.getLogger("python_multipart.multipart").warning("outside a request")
    assert [r.getMessage() for r in caplog.records if "multipart" in r.name] == ["outside a request"]


def test_oversized_body_without_content_length(server) -> None:
    def chunks():
        for _ in range(40):
            yield b"\0" * 10_000  # 400 kB, streamed (chunked): no Content-Length to trust

    response = server.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_a_client_that_disconnects_mid_body_ends_its_request_without_an_error(untrained_run) -> None:
    import asyncio

    app = create_app(untrained_run(["model.hidden=8"]))
    messages = iter([{"type": "http.request", "body": b'{"pixels": [[0, ', "more_body": True},
                     {"type": "http.disconnect"}])  # the upload stops: cancelled, or out of signal
    sent: list[dict] = []

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"3000")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))  # uvicorn logged "Exception in ASGI application" and a traceback
    assert sent[0]["status"] == 400


def test_rate_limit(trained_run: Path, serving, mnist: np.ndarray) -> None:
    with serving(create_app(trained_run, limits=Limits(rate_per_minute=3))) as url:
        codes = [httpx.post(url + "/predict", json={"pixels": mnist[0].tolist()}, timeout=30).status_code
                 for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert httpx.get(url + "/health", timeout=30).status_code == 200


def test_busy_server_says_503(trained_run: Path, serving, mnist: np.ndarray,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    import rnnlab.serve.app as app_module

    real = app_module._predict
    entered, answered = threading.Event(), threading.Event()

    def slow(*args):  # holds the one slot until the second request has had its answer
        entered.set()
        answered.wait(30)
        return real(*args)

    monkeypatch.setattr(app_module, "_predict", slow)
    with serving(create_app(trained_run, limits=Limits(concurrency=1))) as url:
        results: list[int] = []
        first = threading.Thread(target=lambda: results.append(
            httpx.post(url + "/predict", json={"pixels": mnist[0].tolist()}, timeout=30).status_code))
        first.start()
        assert entered.wait(10)
        try:
            second = httpx.post(url + "/predict", json={"pixels": mnist[0].tolist()}, timeout=30)
        finally:
            answered.set()
        first.join()
        assert second.status_code == 503 and "busy" in second.json()["error"]
        assert results == [200]


@pytest.mark.parametrize("overrides, points", [
    (["data.view=pixels", "model.hidden=8"], list(range(1, 785))),  # exact, one pass: every pixel
    (["data.view=pixels", "model.hidden=8", "model.bidirectional=true"], [28 * k for k in range(1, 29)]),
])
def test_pixel_views(untrained_run, serving, mnist: np.ndarray, overrides: list[str], points: list[int]) -> None:
    run = untrained_run(overrides)
    with serving(create_app(run)) as url:
        got = httpx.post(url + "/predict", json={"pixels": mnist[0].tolist()}, timeout=60).json()
    assert got["steps_read"] == points and len(got["steps"]) == len(points)
    model = rnnlab.load(run)
    final = model.probabilities(mnist[0])[0]
    np.testing.assert_allclose(got["steps"][-1], final.tolist(), atol=1e-4)  # reading it all = the answer
    assert torch.allclose(torch.tensor(got["probabilities"]), final, atol=1e-6)


def test_serve_cli_rejects_bad_arguments(trained_run: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import rnnlab.cli.serve as serve_cli

    def never(*args):
        raise AssertionError("the arguments should have been refused before listening")

    monkeypatch.setattr(serve_cli, "listen_socket", never)
    assert main(["serve", str(trained_run), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", str(trained_run), "--concurrency", "0"]) == 2
    assert capsys.readouterr().err == "rnnlab: error: --concurrency=0 must be >= 1\n"
    assert main(["serve", "/nonexistent/run"]) == 2
    assert "no such run folder" in capsys.readouterr().err
    # Pillow refuses images past its own limit as bombs: a larger --max-pixels would promise what it cannot keep
    assert main(["serve", str(trained_run), "--port", "0", "--max-pixels", "100000000"]) == 2
    assert capsys.readouterr().err == ("rnnlab: error: --max-pixels=100000000 is above 89478485, the largest image "
                                       "the image decoder (Pillow) accepts; give at most that\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --device: the model's, as eval and predict
    assert main(["serve", str(trained_run), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlab: error: ") and "no CUDA GPU is available" in err


@pytest.mark.parametrize(("value", "fragment"), [("nan", "--max-upload-mb=nan must be a finite number >= 0.001"),
                                                 ("inf", "--max-upload-mb=inf must be a finite number >= 0.001"),
                                                 ("-inf", "--max-upload-mb=-inf must be a finite number"),
                                                 ("0", "--max-upload-mb=0 must be >= 0.001")])
def test_serve_cli_refuses_a_non_finite_upload_limit(untrained_run, value: str, fragment: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    run = untrained_run(["model.hidden=8"])
    assert main(["serve", str(run), f"--max-upload-mb={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlab: error: ") and fragment in err and err.count("\n") == 1


def test_serve_cli_says_when_it_cannot_listen(untrained_run, capsys: pytest.CaptureFixture) -> None:
    import socket

    run = untrained_run(["model.hidden=8"])
    with socket.socket() as taken:  # a port another program listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no "serving ..." before the failure
    assert captured.err.startswith(f"rnnlab: error: cannot listen on 127.0.0.1:{port}: ")
    assert "pick another --port" in captured.err and captured.err.count("\n") == 1
    assert main(["serve", str(run), "--host", "999.1.1.1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("rnnlab: error: cannot listen on 999.1.1.1:8000: ")
    assert "give --host an address of this machine" in captured.err and captured.err.count("\n") == 1


@pytest.mark.slow  # rnnlab serve in another process
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_serve_cli_serves_where_it_says_and_stops_on_ctrl_c(untrained_run, stop: str) -> None:
    """Ctrl-C, or SIGTERM (kill, docker stop, systemd), is how a server is meant to stop: exit 0."""
    import os
    import re
    import signal
    import subprocess
    import sys

    run = untrained_run(["model.hidden=8"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rnnlab", "serve", str(run), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # printed (and flushed) once the port is bound
        url = re.search(r"on (http://127\.0\.0\.1:(\d+))/ ", line)
        assert url and url.group(2) != "0", line + proc.stderr.read() if proc.poll() is not None else line
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(url.group(1) + "/health", timeout=10).json()["status"] == "ok"
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        proc.send_signal(getattr(signal, stop))
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
