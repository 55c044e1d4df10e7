"""`cyconv serve`: a trained model behind HTTP, with a page to draw a digit or drop a photo.

    cyconv serve --checkpoint runs/lenet5/checkpoint.npz          # http://127.0.0.1:8000/
    curl -F file=@seven.png http://127.0.0.1:8000/predict

FastAPI on uvicorn does the HTTP (parsing, multipart forms, keep-alive, graceful shutdown); this module is
the thin layer above it, as Triton's dynamic batcher is:

- ServedModel: the model (a checkpoint's or an ONNX file's), compiled once, and how one request's image
  or pixels become its input: for MNIST models exactly what `cyconv predict` does (a drawn digit made
  MNIST-like by cyconv.data.prepare_digit, or ?raw=1 as --raw; JSON pixels by the rule of .npy files),
  for image-folder models what the folder's pictures went through (cyconv.data.read_image, normalised
  by the checkpoint's mean and std).
- Batcher: requests wait in a bounded queue; one task takes up to max_batch of them and runs them as
  one model call in a worker thread (the compiled call releases the GIL, so the event loop keeps parsing
  requests meanwhile); those that queue meanwhile go as soon as it ends, and a request that finds the
  model idle waits at most max_wait for company. A full queue is a 503 with Retry-After, never
  unbounded memory.
- create_app: the endpoints (POST /predict, GET /health, GET /metrics, GET / the page, and FastAPI's
  /docs and /openapi.json), a body-size limit, request metrics through prometheus_client. POST /predict
  is answered by the body-limit middleware itself, past FastAPI's per-request layers (see _Limits).
- run: uvicorn, exiting 0 after SIGTERM or Ctrl-C once the requests in flight are answered.

Nothing from a request names a file on the server: uploads are decoded from memory.
"""

import asyncio
import base64
import collections
import contextlib
import gc
import io
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np
from PIL import Image

from .. import data
from ..data import images

__all__ = ["ServedModel", "Batcher", "QueueFull", "create_app", "run", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'cyconv[serve]'"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_QUEUE = 256   # waiting requests; past it, 503
DEFAULT_MAX_BODY_MB = 10.0
RETRY_AFTER_S = 1
_RETRY_AFTER = ((b"retry-after", str(RETRY_AFTER_S).encode()),)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def missing_dependency() -> str | None:
    """None if the serve extra is installed, else one line saying what to install."""
    missing = []
    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("multipart", "python-multipart"),
                            ("prometheus_client", "prometheus-client")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if not missing:
        return None
    return f"serve needs {', '.join(missing)}; install them with {INSTALL_HINT}"


class InputError(ValueError):
    """A request whose image or pixels cannot be used: its message goes back to the client, with `status`."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------------
# The model and its inputs


class ServedModel:
    """A model to serve: run(x) maps a float32 batch (N, C, H, W) to logits (N, classes).

    spec: the checkpoint's FolderSpec for a model trained on an image folder (its pictures are read and
    normalised as the folder's were), None for an MNIST model (1x28x28 digits, prepared as `cyconv
    predict` prepares them). classes: the class names ("0".."9" for MNIST).
    """

    def __init__(self, run, input_shape, classes, spec=None, description=""):
        self.run = run
        self.input_shape = tuple(int(s) for s in input_shape)
        self.classes = [str(c) for c in classes]
        self.spec = spec
        self.description = description

    @classmethod
    def from_model(cls, model, spec=None, description="", *, batch_size=DEFAULT_MAX_BATCH):
        """A cyconv.nn model, compiled once (cyconv.compile) for its input shape."""
        from .predictor import compile as compile_model

        input_shape = (1, data.ROWS, data.COLS) if spec is None else (spec.channels, *spec.size)
        predictor = compile_model(model.eval(), input_shape=input_shape, batch_size=batch_size)
        classes = [str(c) for c in range(10)] if spec is None else list(spec.classes)
        probe = predictor(np.zeros((1, *input_shape), predictor.dtype))
        if probe.shape != (1, len(classes)):
            raise ValueError(f"{description or 'model'}: gives outputs of shape {probe.shape[1:]}, expected "
                             f"({len(classes)},), one per class")
        return cls(predictor, input_shape, classes, spec, description)

    @classmethod
    def from_checkpoint(cls, path, **kwargs):
        from ..training.checkpoint import load_model

        model, ckpt = load_model(path)
        return cls.from_model(model, ckpt.data, f"{ckpt.path}: {ckpt.model_name}, {ckpt.epoch} epochs", **kwargs)

    @classmethod
    def from_onnx(cls, path, **kwargs):
        """An ONNX model of MNIST digits ((N, 1, 28, 28) in, 10 logits out), as `cyconv predict --model`."""
        from . import onnx as cyconv_onnx

        model = cyconv_onnx.load(path, final_softmax="drop")
        return cls.from_model(model, None, f"{path}: ONNX model", **kwargs)

    @property
    def kind(self) -> str:
        """"digits" (MNIST-like 1x28x28, drawn on the page) or "pictures" (dropped photos)."""
        return "digits" if self.spec is None else "pictures"

    def info(self) -> dict:
        return {"model": self.description, "kind": self.kind, "input_shape": list(self.input_shape),
                "classes": self.classes}

    def prepare_image(self, body: bytes, raw: bool = False):
        """An uploaded picture as (input (C, H, W) float32, what the model sees as uint8 (C, H, W), warning)."""
        if self.spec is not None:
            if raw:
                raise InputError("raw=1 is for MNIST digits; this model was trained on an image folder")
            # decode_picture refuses a picture of more than MAX_IMAGE_PIXELS from its header (before Pillow
            # would warn of a bomb), so read_image's process-wide warnings filter is not needed here.
            seen = images._read_image(body, *self.spec.size, self.spec.channels)
            return self._normalised(seen), seen, None
        return self._digit(images.decode_grey(body, kind="an image"), raw)

    def prepare_pixels(self, pixels, raw: bool = False):
        """JSON pixels (a list of rows) by the rule `cyconv predict` has for .npy files: integers 0..255 or
        floats 0..1, then prepared as a picture is."""
        if self.spec is not None:
            raise InputError("JSON pixels are for MNIST digit models; send this model a picture (PNG, JPEG, BMP)")
        try:
            a = np.array(pixels)
        except (ValueError, TypeError):
            raise InputError("pixels must be a list of rows of numbers, all rows of one length") from None
        try:
            grey = images.grey_pixels(a)
        except ValueError as e:
            raise InputError(f"pixels: {e}") from None
        return self._digit(grey, raw)

    def _digit(self, grey: np.ndarray, raw: bool):
        try:
            x, digit, warning = images.digit_input(grey, raw, "raw=1")
        except ValueError as e:  # not 28x28 with raw=1, or a blank drawing: nothing to classify, so no guess
            raise InputError(str(e).removeprefix("prepare_digit(): ")) from None
        return x, digit[None], warning

    def _normalised(self, seen: np.ndarray) -> np.ndarray:
        return data.normalize(seen[None], self.spec.mean, self.spec.std)[0]


def png_data_url(seen: np.ndarray) -> str:
    """uint8 (C, H, W), grey or RGB, as a data: URL of a PNG."""
    picture = Image.fromarray(seen[0] if seen.shape[0] == 1 else seen.transpose(1, 2, 0))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------------------------------------------------
# Batching


class QueueFull(Exception):
    """The queue holds max_queue requests already: the caller answers 503."""


class Batcher:
    """Runs the inputs of concurrent requests as batches of one model call each (Triton's dynamic batcher).

    submit(x) queues one input (C, H, W) and returns a future of (logits row, model ms). One task takes
    what is queued, up to max_batch, and runs it in a worker thread; the next batch forms while it runs,
    and goes as soon as the model is free. Only a request that finds the model idle and the queue empty
    waits, up to max_wait seconds, for company (less if max_batch requests come sooner). The answers are
    the one-at-a-time ones, bit for bit: a float32 predictor on cyconv's own GEMM computes each image's
    outputs alike in a batch of any size (cyconv.predictor; tests/test_predictor.py holds it to that).
    """

    def __init__(self, run, *, max_batch=DEFAULT_MAX_BATCH, max_wait=DEFAULT_MAX_WAIT_MS / 1000,
                 max_queue=DEFAULT_MAX_QUEUE, on_batch=None):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError(f"Batcher: need max_batch >= 1, max_queue >= 1, max_wait >= 0; got {max_batch}, "
                             f"{max_queue}, {max_wait}")
        self.run, self.max_batch, self.max_wait, self.max_queue = run, max_batch, max_wait, max_queue
        self.on_batch = on_batch or (lambda size, seconds: None)
        self._pending: collections.deque = collections.deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cyconv-model")
        self._task = None

    def __len__(self):
        return len(self._pending)

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self):
        """Answer what is queued, then stop (the server has stopped taking requests by now)."""
        while self._pending:
            await asyncio.sleep(0.001)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    def submit(self, x: np.ndarray) -> asyncio.Future:
        if len(self._pending) >= self.max_queue:
            raise QueueFull
        future = asyncio.get_running_loop().create_future()
        self._pending.append((x, future))
        self._arrived.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        return future

    async def _serve(self):
        loop = asyncio.get_running_loop()
        while True:
            # Company is waited for only by a request that found the model idle. Requests that queued while
            # the previous batch ran have waited already, and the clients they belong to are the company
            # there is: waiting longer would leave the model idle while the event loop answers, then the
            # event loop idle while the model runs, in lock-step.
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                if len(self._pending) < self.max_batch and self.max_wait > 0:
                    self._full.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self.max_wait)
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            batch = [(x, f) for x, f in batch if not f.done()]  # a caller that went away
            if not batch:
                continue
            start = time.perf_counter()
            try:
                logits = await loop.run_in_executor(self._executor, self._call, [x for x, _ in batch])
            except Exception as e:  # noqa: BLE001 (each caller gets it: a 500, and the server goes on)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            seconds = time.perf_counter() - start
            self.on_batch(len(batch), seconds)
            for (_, future), row in zip(batch, logits):
                if not future.done():
                    future.set_result((row, 1000 * seconds))

    def _call(self, inputs):
        return np.asarray(self.run(np.stack(inputs)), np.float64)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax of one row of logits, in float64 (as `cyconv predict` computes it)."""
    p = np.exp(logits - logits.max())
    return p / p.sum()


# ---------------------------------------------------------------------------------------------------------
# The application


_PREDICT_BODY = {
    "description": "One image: a multipart form with the picture in the field `file`, the picture itself as "
                   "the body (an image/* content type), or JSON {\"pixels\": [[...], ...]}: a grey image as "
                   "rows of integers 0..255 or floats 0..1 (MNIST models).",
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}}}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {"schema": {"type": "object", "required": ["pixels"], "properties": {
            "pixels": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}}},
    },
}
_PREDICT_ANSWER = {
    "description": "The predicted class, every class's probability and the model's time",
    "content": {"application/json": {"example": {
        "class": "7", "index": 7, "probabilities": {str(c): 0.1 for c in range(10)}, "model_ms": 0.4,
        "batch": 1}}},
}


_PREDICT_PARAMETERS = [
    {"name": "raw", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
     "description": "MNIST models: use the pixels as they are (28x28, white on black), as `cyconv predict --raw`"},
    {"name": "preview", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
     "description": "also answer the model's input, as it sees it, as a PNG data URL (`input`)"},
]
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _flag(query, name) -> bool:
    value = query.get(name, "0").lower()
    if value not in _TRUE + _FALSE:
        raise InputError(f"query parameter {name} must be 1 or 0 (true or false), got {value!r}", 400)
    return value in _TRUE


class _BodyTooLarge(Exception):
    pass


class _Limits:
    """Pure ASGI middleware: refuse a body over max_bytes (413), from Content-Length when it says so, else
    while it is read; count every request by endpoint and status, and time it, in prometheus metrics.

    It also answers POST /predict itself, with `predict` (an ASGI app), rather than passing it down to
    FastAPI, whose route for it documents it (and answers alike, should it be reached). The layers below (exception and telemetry middleware,
    routing through every route, solving the endpoint's dependencies, building the response object) cost
    as much as reading the picture, on the one thread that serves every request."""

    ENDPOINTS = ("/", "/predict", "/health", "/metrics", "/docs", "/openapi.json")

    def __init__(self, app, max_bytes, requests, latency, predict=None):
        self.app, self.max_bytes, self.requests, self.latency = app, max_bytes, requests, latency
        self.predict = predict
        self._counters, self._timers = {}, {}  # labels() -> child, looked up once: labels() takes a lock

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in self.ENDPOINTS else "other"
        status = 500
        started = False

        async def send_counted(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        received = 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                raise _BodyTooLarge
            app = self.app
            if self.predict is not None and scope["path"] == "/predict" and scope["method"] == "POST":
                app = self.predict
            await app(scope, receive_limited, send_counted)
        except _BodyTooLarge:
            if not started:
                mb = self.max_bytes / 1e6
                await _send_json(send_counted, 413, {"detail": f"body too large: at most {mb:g} MB"})
        finally:
            counter = self._counters.get((endpoint, status))
            if counter is None:
                counter = self._counters[endpoint, status] = self.requests.labels(endpoint, str(status))
            timer = self._timers.get(endpoint)
            if timer is None:
                timer = self._timers[endpoint] = self.latency.labels(endpoint)
            counter.inc()
            timer.observe(time.perf_counter() - start)


async def _send_json(send, status, content, headers=()):
    """A JSON answer, then the connection closed: for a body that is refused unread."""
    await _send(send, status, json.dumps(content).encode(), ((b"connection", b"close"), *headers))


async def _send(send, status, body: bytes, headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _json(content) -> bytes:
    """As FastAPI's JSONResponse encodes."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class _Answers:
    """The JSON of /predict's answers, from pieces encoded once per class: the same bytes json.dumps (and
    FastAPI's JSONResponse) writes, at a third of its time (a float is written as repr() writes it, as
    json's encoder does; probabilities are finite)."""

    def __init__(self, classes):
        names = [json.dumps(c, ensure_ascii=False) for c in classes]
        self.heads = [f'{{"class":{name},"index":{i},"probabilities":{{' for i, name in enumerate(names)]
        self.keys = [f"{name}:" for name in names]

    def encode(self, index: int, p, model_ms: float, extra: dict) -> bytes:
        parts = [self.heads[index], ",".join([k + repr(v) for k, v in zip(self.keys, p.tolist())]),
                 '},"model_ms":', repr(round(model_ms, 3))]
        for key, value in extra.items():
            parts += [",", json.dumps(key), ":", json.dumps(value, ensure_ascii=False)]
        parts.append("}")
        return "".join(parts).encode()


def create_app(model: ServedModel, *, max_batch=DEFAULT_MAX_BATCH, max_wait_ms=DEFAULT_MAX_WAIT_MS,
               max_queue=DEFAULT_MAX_QUEUE, max_body_mb=DEFAULT_MAX_BODY_MB):
    """The FastAPI application serving `model` (see the module docstring); run it with uvicorn."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.datastructures import UploadFile

    registry = CollectorRegistry()  # one per app: metrics of this server only, and tests can make several
    requests = Counter("cyconv_http_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                       registry=registry)
    latency = Histogram("cyconv_http_request_duration_seconds", "Time from request to answer, by endpoint",
                        ["endpoint"], registry=registry,
                        buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
    batch_sizes = Histogram("cyconv_batch_size", "Images per model call", registry=registry,
                            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
    model_seconds = Histogram("cyconv_model_duration_seconds", "Time of one model call (a batch)",
                              registry=registry, buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1))
    queue_length = Gauge("cyconv_queue_length", "Requests waiting for the model", registry=registry)

    def on_batch(size, seconds):
        batch_sizes.observe(size)
        model_seconds.observe(seconds)

    state = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(model.run, max_batch=max_batch, max_wait=max_wait_ms / 1000, max_queue=max_queue,
                          on_batch=on_batch)
        queue_length.set_function(lambda: len(batcher))
        batcher.start()
        state["batcher"] = batcher
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="cyconv serve", version=_version(), lifespan=lifespan,
                  description=f"{model.description}: POST an image to /predict. The page to try it is at /.")
    page = resources.files(__package__).joinpath("static", "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health", summary="Liveness, the model and the queue")
    async def health():
        batcher = state.get("batcher")
        return {"status": "ok", **model.info(), "queue": 0 if batcher is None else len(batcher)}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # The query parameters are read by hand and documented in openapi_extra: FastAPI's parameter
    # solving would cost as much per request as the model's time per image. The requests themselves are
    # answered by _Limits with predict_asgi, which skips FastAPI's layers; this route documents them.
    @app.post("/predict", summary="Classify one image", openapi_extra={"requestBody": _PREDICT_BODY,
                                                                        "parameters": _PREDICT_PARAMETERS},
              responses={200: _PREDICT_ANSWER, 413: {"description": "Body too large"},
                         415: {"description": "Not an image, a form or JSON"},
                         422: {"description": "An image or pixels the model cannot use (a blank drawing, ...)"},
                         503: {"description": "Too many requests waiting; retry after Retry-After seconds"}})
    async def predict(request: Request):
        status, body, headers = await answer(request)
        return Response(body, status, {k.decode(): v.decode() for k, v in headers}, "application/json")

    async def predict_asgi(scope, receive, send):
        await _send(send, *await answer(Request(scope, receive)))

    answers = _Answers(model.classes)

    async def answer(request):
        """The answer to POST /predict: (status, JSON body, headers)."""
        try:
            raw, preview = (_flag(request.query_params, name) for name in ("raw", "preview"))
            x, seen, warning = await _prepared(request, raw)
        except InputError as e:
            return e.status, _json({"detail": str(e)}), ()
        except data.ImageError as e:
            return 422 if "too large" in str(e) else 400, _json({"detail": str(e)}), ()
        try:
            future = state["batcher"].submit(x)
        except QueueFull:
            return 503, _json({"detail": "too many requests waiting; retry shortly"}), _RETRY_AFTER
        logits, model_ms = await future
        p = probabilities(logits)
        extra = {}
        if warning:
            extra["warning"] = warning
        if preview:
            extra["input"] = png_data_url(seen)
        return 200, answers.encode(int(p.argmax()), p, model_ms, extra), ()

    async def _prepared(request, raw):
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == "multipart/form-data":
            try:
                async with request.form(max_files=1, max_fields=8) as form:
                    upload = form.get("file")
                    if not isinstance(upload, UploadFile):
                        raise InputError("a multipart form needs the picture in the field 'file'", 400)
                    body = await upload.read()
            except HTTPException as e:  # the form parser's own (a malformed form)
                raise InputError(str(e.detail), 400) from None
            return model.prepare_image(body, raw)
        if media.startswith("image/"):
            return model.prepare_image(await request.body(), raw)
        if media == "application/json":
            try:
                payload = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError) as e:
                raise InputError(f"not JSON: {e}", 400) from None
            if not isinstance(payload, dict) or "pixels" not in payload:
                raise InputError('JSON must be an object {"pixels": [[...], ...]}')
            return model.prepare_pixels(payload["pixels"], raw)
        raise InputError(f"content type {media or 'missing'}: send a picture (multipart form field 'file', or "
                         "an image/* body) or JSON pixels (application/json)", 415)

    app.add_middleware(_Limits, max_bytes=int(max_body_mb * 1e6), requests=requests, latency=latency,
                       predict=predict_asgi)
    app.state.model = model
    app.state.registry = registry
    return app


def _version():
    from .. import __version__

    return __version__


# ---------------------------------------------------------------------------------------------------------
# Running


def run(app, *, host=DEFAULT_HOST, port=DEFAULT_PORT, log_level="info") -> int:
    """Serve `app` with uvicorn until SIGTERM or Ctrl-C; return 0 once the requests in flight are answered.

    uvicorn stops on either signal gracefully (it stops accepting, answers what is in flight, then runs
    the app's shutdown), but then raises the signal again with the handler it found, which would kill the
    process (-15) or raise KeyboardInterrupt. The handler it finds here is one that ignores it: the
    shutdown is complete and normal.
    """
    import uvicorn

    # No proxy-headers layer: nothing here reads the client's address, and it is one more call per request.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30,
                            access_log=False, server_header=False, proxy_headers=False)
    server = uvicorn.Server(config)
    received = []
    previous = {sig: signal.signal(sig, lambda s, f: received.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    # What exists now (the model, FastAPI, every module) lives as long as the server: out of the garbage
    # collector's sight, a full collection does not walk its ~70,000 objects while requests wait.
    gc.collect()
    gc.freeze()
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        return 1
    return 0
