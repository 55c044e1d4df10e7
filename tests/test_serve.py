"""`cyconv serve`: every endpoint and every bad input through FastAPI's in-process test client, answers under
concurrency equal to one-at-a-time ones, the queue limit's 503s and the recovery after them, and a real
server process stopped by SIGTERM or Ctrl-C with requests in flight (it answers them and exits 0).

The models have random weights (trained for a step on random images): what is checked is that the server
computes what `cyconv predict` computes, not what the model knows. The page in a browser, with a trained
LeNet-5, is tests/test_serve_browser.py. Needs the serve extra (skipped without it, unless
CYCONV_TEST_SERVE=1, as in CI, which makes that a failure).
"""

import asyncio
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cyconv import cli, data
from cyconv.data import make_shapes
from cyconv.train import CHECKPOINT_NAME, TrainConfig, train
from cli_helpers import run, run_captured

if os.environ.get("CYCONV_TEST_SERVE", "") in ("", "0"):
    for module in ("fastapi", "uvicorn", "multipart", "prometheus_client", "httpx"):
        pytest.importorskip(module, reason=f"cyconv[serve] and httpx not installed (no {module}): pip install "
                                           "'.[serve,test]'")

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2; httpx works with every Starlette
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient  # noqa: E402

from cyconv import serve  # noqa: E402


# ---------------------------------------------------------------------------------------------------------
# Models and pictures


@pytest.fixture(scope="module")
def lenet_checkpoint(tmp_path_factory):
    """LeNet-5 after one epoch on 64 random images (random answers, which is all these tests need)."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 28, 28)).astype(np.uint8), rng.integers(0, 10, 64).astype(np.uint8)
    out = tmp_path_factory.mktemp("lenet")
    train(TrainConfig(model="lenet5", epochs=1, batch_size=32), (images, labels, images[:8], labels[:8]),
          out_dir=out, progress=False, log=lambda line: None)
    return out / CHECKPOINT_NAME


@pytest.fixture(scope="module")
def folder_checkpoint(tmp_path_factory):
    """small_cnn trained for one epoch on 16x16 colour shapes (four classes with names)."""
    root = make_shapes(24, size=16, seed=1).save(tmp_path_factory.mktemp("data") / "shapes")
    out = tmp_path_factory.mktemp("folder")
    status, _, stderr = run_captured("train", "--data-dir", root, "--out", out, "--image-size", 16, "--epochs", 1,
                                     "--batch-size", 8, "--no-progress", "--threads", 1)
    assert status == 0, stderr
    return out / CHECKPOINT_NAME


@pytest.fixture(scope="module")
def lenet(lenet_checkpoint):
    return serve.ServedModel.from_checkpoint(lenet_checkpoint)


@pytest.fixture(scope="module")
def client(lenet):
    with TestClient(serve.create_app(lenet, max_wait_ms=20, max_body_mb=1)) as c:
        yield c


def png(array, mode=None, fmt="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format=fmt)
    return buffer.getvalue()


def drawing(seed=0):
    """A dark stroke on a light 120x100 canvas, as the page sends it: a thick 7-like polyline."""
    rng = np.random.default_rng(seed)
    picture = Image.new("L", (100, 120), 255)
    from PIL import ImageDraw

    points = [(20 + rng.integers(-5, 5), 20), (80, 20 + rng.integers(-5, 5)), (40 + rng.integers(-10, 10), 100)]
    ImageDraw.Draw(picture).line(points, fill=0, width=9)
    return np.asarray(picture)


def bomb_png():
    """A valid PNG header claiming 60000x60000 pixels (3.6 gigapixels) over a few bytes of data."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


def expected_probabilities(checkpoint, path, raw=False):
    """What `cyconv predict` computes for the file: its probabilities, in float64."""
    from cyconv.checkpoint import load_model
    from cyconv.predictor import compile as compile_model

    model, ckpt = load_model(checkpoint)
    x = (cli.load_image(path, raw=raw)[0] if ckpt.data is None else cli._folder_image(path, ckpt.data))[None]
    logits = compile_model(model.eval(), input_shape=x.shape[1:])(x)[0].astype(np.float64)
    p = np.exp(logits - logits.max())
    return p / p.sum()


def probs(answer):
    return np.array(list(answer["probabilities"].values()))


# ---------------------------------------------------------------------------------------------------------
# POST /predict


def test_predict_answers_as_cyconv_predict_in_every_form(client, lenet_checkpoint, tmp_path):
    picture = drawing()
    path = tmp_path / "seven.png"
    path.write_bytes(png(picture))
    expected = expected_probabilities(lenet_checkpoint, path)
    answers = [
        client.post("/predict", files={"file": ("seven.png", path.read_bytes(), "image/png")}),
        client.post("/predict", content=path.read_bytes(), headers={"content-type": "image/png"}),
        client.post("/predict", json={"pixels": picture.tolist()}),                      # integers 0..255
        client.post("/predict", json={"pixels": (picture / 255).tolist()}),              # floats 0..1
    ]
    for r in answers:
        assert r.status_code == 200, r.text
        answer = r.json()
        assert set(answer) == {"class", "index", "probabilities", "model_ms"}
        assert list(answer["probabilities"]) == [str(c) for c in range(10)]
        np.testing.assert_allclose(probs(answer), expected, rtol=1e-6, atol=1e-9)
        assert answer["index"] == int(expected.argmax()) and answer["class"] == str(answer["index"])
        assert answer["model_ms"] > 0


def test_raw_uses_the_pixels_as_they_are(client, lenet_checkpoint, tmp_path):
    digit = np.zeros((28, 28), np.uint8)
    digit[5:23, 12:16] = 255
    path = tmp_path / "one.png"
    path.write_bytes(png(digit))
    r = client.post("/predict?raw=1", content=path.read_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 200
    np.testing.assert_allclose(probs(r.json()), expected_probabilities(lenet_checkpoint, path, raw=True), rtol=1e-6)
    bright = client.post("/predict?raw=true", json={"pixels": (255 - digit).tolist()})
    assert bright.status_code == 200 and "mostly bright" in bright.json()["warning"]
    wrong = client.post("/predict?raw=1", content=png(drawing()), headers={"content-type": "image/png"})
    assert wrong.status_code == 422 and "raw=1 needs 28x28" in wrong.json()["detail"]


def test_preview_is_what_the_model_sees(client):
    r = client.post("/predict?preview=1", content=png(drawing()), headers={"content-type": "image/png"})
    url = r.json()["input"]
    assert url.startswith("data:image/png;base64,")
    import base64

    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    np.testing.assert_array_equal(seen, data.prepare_digit(drawing()))


@pytest.mark.parametrize("name, request_kwargs, status, match", [
    ("blank drawing", dict(content=png(np.full((80, 80), 255, np.uint8)), headers={"content-type": "image/png"}),
     422, "blank"),
    ("blank pixels", dict(json={"pixels": [[0] * 28] * 28}), 422, "blank"),
    ("not an image", dict(content=b"hello, world", headers={"content-type": "image/png"}), 400, "not an image"),
    ("truncated image", dict(content=png(drawing())[:200], headers={"content-type": "image/png"}), 400,
     "cannot decode"),
    ("decompression bomb", dict(content=bomb_png(), headers={"content-type": "image/png"}), 422, "too large"),
    ("empty body", dict(content=b"", headers={"content-type": "image/jpeg"}), 400, "not an image"),
    ("form without file", dict(files={"picture": ("x.png", b"x", "image/png")}), 400, "field 'file'"),
    ("form with text", dict(data={"file": "not a file"}, files={"other": ("x", b"x")}), 400, "field 'file'"),
    ("not JSON", dict(content=b"{pixels: ", headers={"content-type": "application/json"}), 400, "not JSON"),
    ("JSON list", dict(json=[[0, 1], [1, 0]]), 422, '{"pixels"'),
    ("ragged pixels", dict(json={"pixels": [[0, 1], [1]]}), 422, "rows of one length"),
    ("1-D pixels", dict(json={"pixels": [0, 255, 0]}), 422, "shape (3,)"),
    ("3-D pixels", dict(json={"pixels": [[[0]]]}), 422, "shape (1, 1, 1)"),
    ("empty pixels", dict(json={"pixels": []}), 422, "shape (0,)"),
    ("string pixels", dict(json={"pixels": [["a", "b"]]}), 422, "numbers"),
    ("NaN pixels", dict(content=b'{"pixels": [[NaN, 0.5], [0.5, 0.5]]}', headers={"content-type": "application/json"}),
     422, "finite"),
    ("pixels over 255", dict(json={"pixels": [[0, 256], [0, 0]]}), 422, "0..255"),
    ("float pixels over 1", dict(json={"pixels": [[0.0, 2.5], [0.0, 0.0]]}), 422, "[0, 1]"),
    ("negative pixels", dict(json={"pixels": [[0, -1], [0, 0]]}), 422, "0..255"),
    ("text body", dict(content=b"7", headers={"content-type": "text/plain"}), 415, "content type text/plain"),
    ("no content type", dict(content=b"7"), 415, "content type missing"),
    ("bad flag", dict(params={"raw": "maybe"}, json={"pixels": [[0]]}), 400, "raw must be 1 or 0"),
])
def test_bad_input_is_a_json_4xx_and_the_server_goes_on(client, name, request_kwargs, status, match):
    r = client.post("/predict", **request_kwargs)
    assert r.status_code == status, (name, r.text)
    assert r.headers["content-type"] == "application/json"
    assert match in r.json()["detail"], r.json()
    assert client.post("/predict", json={"pixels": drawing().tolist()}).status_code == 200


def test_a_body_over_the_limit_is_413_whether_announced_or_not(client):
    big = b"\0" * 1_100_000  # the client fixture's limit is 1 MB
    r = client.post("/predict", content=big, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "at most 1 MB" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(11):
            yield b"\0" * 100_000
    r = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413
    r = client.post("/predict", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413
    assert client.post("/predict", json={"pixels": drawing().tolist()}).status_code == 200


def test_paths_that_do_not_exist_and_wrong_methods(client):
    for path in ("/nope", "/predict/../../etc/passwd", "/static/index.html", "/%2e%2e/checkpoint.npz"):
        r = client.get(path)
        assert r.status_code == 404 and r.json() == {"detail": "Not Found"}, path
    assert client.get("/predict").status_code == 405


# ---------------------------------------------------------------------------------------------------------
# The other endpoints


def test_health_page_docs_and_metrics(client, lenet_checkpoint):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["kind"] == "digits" and health["queue"] == 0
    assert health["input_shape"] == [1, 28, 28] and health["classes"] == [str(c) for c in range(10)]
    assert str(lenet_checkpoint) in health["model"]

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="pad"' in page.text and "http" not in page.text.split("<script>")[1]  # no CDN

    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/png", "application/json"} <= set(body)
    assert {p["name"] for p in spec["paths"]["/predict"]["post"]["parameters"]} == {"raw", "preview"}

    client.post("/predict", content=b"x", headers={"content-type": "text/plain"})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'cyconv_http_requests_total{endpoint="/predict",status="415"}' in text
    assert 'cyconv_http_requests_total{endpoint="/health",status="200"} 1.0' in text
    assert 'cyconv_http_request_duration_seconds_bucket{endpoint="/predict",le="0.01"}' in text
    assert "cyconv_batch_size_count" in text and "cyconv_queue_length 0.0" in text
    assert "cyconv_model_duration_seconds_sum" in text


def test_colour_model_takes_pictures_by_its_class_names(folder_checkpoint, tmp_path):
    model = serve.ServedModel.from_checkpoint(folder_checkpoint)
    assert model.kind == "pictures" and model.classes == ["circle", "cross", "square", "triangle"]
    photo = np.random.default_rng(3).integers(0, 256, (40, 30, 3)).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    path.write_bytes(png(photo, fmt="JPEG"))
    with TestClient(serve.create_app(model)) as c:
        r = c.post("/predict?preview=1", files={"file": ("photo.jpg", path.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert list(answer["probabilities"]) == model.classes and answer["class"] in model.classes
        np.testing.assert_allclose(probs(answer), expected_probabilities(folder_checkpoint, path), rtol=1e-6)
        preview = Image.open(io.BytesIO(__import__("base64").b64decode(answer["input"].split(",", 1)[1])))
        assert preview.size == (16, 16) and preview.mode == "RGB"
        assert c.post("/predict", json={"pixels": [[0]]}).status_code == 422
        assert c.post("/predict?raw=1", content=path.read_bytes(), headers={"content-type": "image/jpeg"}
                      ).status_code == 422
        assert c.get("/health").json()["kind"] == "pictures"


# ---------------------------------------------------------------------------------------------------------
# Batching, the queue limit


def test_concurrent_answers_equal_one_at_a_time(lenet):
    pictures = [drawing(seed) for seed in range(48)]
    with TestClient(serve.create_app(lenet, max_batch=16, max_wait_ms=50)) as c:
        alone = [c.post("/predict", json={"pixels": p.tolist()}).json() for p in pictures]
        with ThreadPoolExecutor(24) as pool:
            together = list(pool.map(lambda p: c.post("/predict", json={"pixels": p.tolist()}).json(), pictures))
        metrics = c.get("/metrics").text
    # bit for bit: the predictor computes each image alike in any batch (serve.Batcher)
    for a, b in zip(alone, together):
        assert a["class"] == b["class"]
        np.testing.assert_array_equal(probs(b), probs(a))
    batches = _metric(metrics, "cyconv_batch_size_count")
    assert batches < len(pictures) * 2 - 8, "the concurrent requests were not batched"
    assert _metric(metrics, "cyconv_batch_size_sum") == 2 * len(pictures)


def _metric(text, name):
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_batcher_runs_what_arrives_together_as_one_call(lenet):
    calls = []

    def run(x):
        calls.append(len(x))
        return lenet.run(x)

    xs = [lenet.prepare_pixels(drawing(seed).tolist())[0] for seed in range(40)]

    async def main():
        batcher = serve.Batcher(run, max_batch=16, max_wait=0.05, max_queue=100)
        batcher.start()
        answers = await asyncio.gather(*(batcher.submit(x) for x in xs))
        await batcher.stop()
        return answers

    answers = asyncio.run(main())
    assert calls == [16, 16, 8]
    for x, (row, ms) in zip(xs, answers):
        np.testing.assert_allclose(row, lenet.run(x[None])[0], rtol=1e-5, atol=1e-6)
        assert ms > 0


def test_a_request_queued_while_a_batch_runs_does_not_wait_for_company(lenet):
    """max_wait is for a request that finds the model idle; one that queued behind a batch goes when it ends."""
    started = threading.Event()

    def run(x):
        started.set()
        time.sleep(0.2)
        return lenet.run(x)

    xs = [lenet.prepare_pixels(drawing(seed).tolist())[0] for seed in range(3)]

    async def main():
        batcher = serve.Batcher(run, max_batch=2, max_wait=60, max_queue=10)
        batcher.start()
        first = [batcher.submit(x) for x in xs[:2]]  # a full batch: it goes at once
        while not started.is_set():
            await asyncio.sleep(0.005)
        late = batcher.submit(xs[2])
        answers = await asyncio.wait_for(asyncio.gather(*first, late), 30)  # not the 60 s of max_wait
        await batcher.stop()
        return answers

    answers = asyncio.run(main())
    np.testing.assert_array_equal(answers[2][0], lenet.run(xs[2][None])[0])


def test_answers_are_the_json_fastapi_writes():
    """The pre-encoded answers are byte for byte JSONResponse's, whatever the class names and probabilities."""
    from fastapi.responses import JSONResponse

    rng = np.random.default_rng(0)
    for classes in ([str(c) for c in range(10)], ["cat", "dög", 'a "quoted" name', "back\\slash", "日本"]):
        answers = serve._Answers(classes)
        for k in range(200):
            p = serve.probabilities(rng.normal(size=len(classes)) * [1e-3, 1, 40, 400][k % 4])
            index, ms = int(p.argmax()), float(rng.random() * 10)
            extra = {"warning": "mostly bright ü", "input": "data:image/png;base64,AAAA"} if k % 3 == 0 else {}
            expected = {"class": classes[index], "index": index, "probabilities": dict(zip(classes, map(float, p))),
                        "model_ms": round(ms, 3), **extra}
            assert answers.encode(index, p, ms, extra) == JSONResponse(expected).body


class SlowModel(serve.ServedModel):
    """LeNet-5's answers, each call taking at least `delay` seconds: a queue that fills."""

    def __init__(self, model, delay):
        super().__init__(lambda x: (time.sleep(delay), model.run(x))[1], model.input_shape, model.classes)


def test_past_the_queue_limit_503_with_retry_after_then_recovery(lenet):
    model = SlowModel(lenet, 0.05)
    pixels = drawing().tolist()
    with TestClient(serve.create_app(model, max_batch=1, max_wait_ms=0, max_queue=4)) as c:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: c.post("/predict", json={"pixels": pixels}), range(16)))
        statuses = sorted(r.status_code for r in answers)
        assert set(statuses) == {200, 503} and statuses.count(503) >= 8, statuses
        busy = next(r for r in answers if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "retry" in busy.json()["detail"]
        assert c.get("/health").json()["queue"] == 0
        assert c.post("/predict", json={"pixels": pixels}).status_code == 200
        assert 'cyconv_http_requests_total{endpoint="/predict",status="503"}' in c.get("/metrics").text


def test_a_failing_model_is_a_500_and_the_server_goes_on(lenet):
    failures = iter([MemoryError("out of memory")])

    def run(x):
        for e in failures:
            raise e
        return lenet.run(x)

    model = serve.ServedModel(run, lenet.input_shape, lenet.classes)
    with TestClient(serve.create_app(model), raise_server_exceptions=False) as c:
        assert c.post("/predict", json={"pixels": drawing().tolist()}).status_code == 500
        assert c.post("/predict", json={"pixels": drawing().tolist()}).status_code == 200


# ---------------------------------------------------------------------------------------------------------
# The command


def test_serve_without_the_extra_is_one_line(capsys, monkeypatch, lenet_checkpoint):
    monkeypatch.setattr(serve, "missing_dependency", lambda: "serve needs fastapi; install them with "
                                                             "pip install 'cyconv[serve]'")
    status, out, err = run(capsys, "serve", "--checkpoint", lenet_checkpoint)
    assert status == 1 and err == "cyconv: error: serve needs fastapi; install them with pip install " \
                                  "'cyconv[serve]'\n"


def test_serve_warns_of_an_address_other_than_this_machine(capsys, monkeypatch, lenet_checkpoint):
    seen = {}
    monkeypatch.setattr(serve, "run", lambda app, host, port: seen.update(host=host, port=port) or 0)
    status, out, err = run(capsys, "serve", "--checkpoint", lenet_checkpoint, "--host", "0.0.0.0", "--port", 8123)
    assert status == 0 and seen == {"host": "0.0.0.0", "port": 8123}
    assert err.startswith("cyconv: warning: serving on 0.0.0.0") and len(err.splitlines()) == 1
    status, out, err = run(capsys, "serve", "--checkpoint", lenet_checkpoint)
    assert status == 0 and err == "" and seen == {"host": "127.0.0.1", "port": 8000}
    assert "serving on http://127.0.0.1:8000/" in out


def test_serve_errors_are_one_line(capsys, tmp_path):
    status, _, err = run(capsys, "serve", "--checkpoint", tmp_path / "missing.npz")
    assert status == 1 and err.startswith("cyconv: error: ") and "no such checkpoint" in err
    status, _, err = run(capsys, "serve", "--checkpoint", "x.npz", "--max-batch", "0")
    assert status == 2 and "--max-batch" in err


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint, *options, env=None):
    """`cyconv serve` as its own process; returns (process, base URL) once /health answers."""
    import httpx

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "cyconv", "serve", "--checkpoint", str(checkpoint),
                                "--port", str(port), "--threads", "1", *map(str, options)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"cyconv serve exited with {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("cyconv serve did not answer /health within 60 s")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/<pid>/environ (Linux)")
@pytest.mark.parametrize("policy", [None, "active"], ids=["default", "the user's"])
def test_serve_runs_with_sleeping_openmp_threads_unless_told_otherwise(lenet_checkpoint, policy):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    process, url = start_server(lenet_checkpoint, env=env)
    try:
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert f"OMP_WAIT_POLICY={policy or 'passive'}".encode() in environ
    assert process.returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_answers_the_requests_in_flight_and_exits_0(lenet_checkpoint, sig):
    import httpx

    # Requests wait up to 800 ms for company, so they are in flight when the signal comes.
    process, url = start_server(lenet_checkpoint, "--max-wait-ms", 800)
    try:
        answers = []

        def ask():
            answers.append(httpx.post(url + "/predict", json={"pixels": drawing().tolist()}, timeout=30))

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while httpx.get(url + "/health").json()["queue"] < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(sig)
        for t in threads:
            t.join(30)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert [r.status_code for r in answers] == [200] * 4
    assert process.returncode == 0, err
    assert "Traceback" not in err and "serving on http://127.0.0.1:" in out
    with pytest.raises(httpx.ConnectError):  # and it is gone
        httpx.get(url + "/health", timeout=1)
