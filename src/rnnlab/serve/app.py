"""The FastAPI app: a drawing page, ``POST /predict``, ``GET /health`` and ``GET /info``.

Every request that can cost something is bounded: the body size (413), the image's pixel count
(413), the predictions running at once (503 when all slots are busy) and the predictions per
minute per client address (429). Bad input gets a 4xx with ``{"error": "..."}``; the server
keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

import rnnlab
from rnnlab.errors import DataError, RnnlabError
from rnnlab.imaging import MAX_PIXELS, SIZE, prepare

STATIC = Path(__file__).with_name("static")
EXPENSIVE_POINTS = 28  # step points computed one pass each (bidirectional or readout all): row ends


@dataclass(frozen=True)
class Limits:
    """What one request, and all of them together, may cost."""

    max_upload_bytes: int = 5 * 1024 * 1024
    max_pixels: int = MAX_PIXELS
    concurrency: int = 4  # predictions computed at once; one more gets 503
    rate_per_minute: int = 120  # predictions per client address per minute; 0 disables


class RateLimiter:
    """A sliding one-minute window per client address."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.seen: dict[str, deque[float]] = {}

    def allow(self, client: str, now: float | None = None) -> bool:
        if self.per_minute <= 0:
            return True
        now = time.monotonic() if now is None else now
        if len(self.seen) > 10_000:  # forget idle clients so the table stays small
            self.seen = {k: v for k, v in self.seen.items() if v and now - v[-1] < 60}
        window = self.seen.setdefault(client, deque())
        while window and now - window[0] >= 60:
            window.popleft()
        if len(window) >= self.per_minute:
            return False
        window.append(now)
        return True


class _TooLarge(Exception):
    pass


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


class _Disconnected(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing to hold more than ``limit`` bytes (whatever Content-Length says);
    _Disconnected if the client went away before sending all of it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
    except ClientDisconnect:  # a cancelled upload, a phone out of signal: not a server error to log
        raise _Disconnected from None
    return b"".join(chunks)


# python-multipart logs a warning of its own on a malformed body ("Expected boundary character 45,
# got 110 at index 2") just before it raises the error that becomes our 400, and with no logging set
# up Python prints it on the console. The reason goes into the 400 instead; the warning is dropped
# while this app parses a body, and only then (the logger is python_multipart's before 0.0.13 renamed it).
_MULTIPART_LOGGERS = ("python_multipart.multipart", "multipart.multipart")
_parsing_multipart: ContextVar[bool] = ContextVar("rnnlab_parsing_multipart", default=False)


def _not_ours_to_report(record: logging.LogRecord) -> bool:
    """A logging filter: False (drop the record) while rnnlab's own multipart parse runs."""
    return not _parsing_multipart.get()


def quiet_multipart_parser() -> None:
    """Filter the multipart parser's loggers (once; idempotent) with :func:`_not_ours_to_report`."""
    for name in _MULTIPART_LOGGERS:
        logger = logging.getLogger(name)
        if _not_ours_to_report not in logger.filters:
            logger.addFilter(_not_ours_to_report)


async def _multipart_file(request: Request, body: bytes) -> bytes:
    """The bytes of form field ``file``; ValueError with a message for anything else."""
    async def stream():  # the parser wants an async stream; the (size-checked) body is already here
        yield body
        yield b""

    parsing = _parsing_multipart.set(True)  # this request's context only: its task's own copy
    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=8,
                                     max_part_size=64 * 1024).parse()
    except MultiPartException as exc:
        reason = f" ({exc.__cause__})" if exc.__cause__ is not None and str(exc.__cause__) else ""
        raise ValueError(f"malformed multipart body: {exc.message.rstrip('.')}{reason}") from None
    finally:
        _parsing_multipart.reset(parsing)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ValueError("send the image as a file in the multipart form field 'file'")
    data = await upload.read()
    await upload.close()
    return data


# How image files begin (PNG, JPEG, GIF, BMP, WebP, TIFF): a body sent raw, as requests' data=
# and fetch's body= send a file without a form, is told how to send it rather than that it is no JSON.
_IMAGE_STARTS = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"II*\x00", b"MM\x00*")


def _looks_like_image(body: bytes) -> bool:
    return (body.startswith(_IMAGE_STARTS) or (body[:4] == b"RIFF" and body[8:12] == b"WEBP")
            or (body[:2] == b"BM" and body[6:10] == bytes(4)))  # BMP: its reserved bytes are zero


def pixels_from_json(body: bytes) -> np.ndarray:
    """``{"pixels": 28 rows of 28 numbers}`` (0-1 or 0-255) -> float array ``(28, 28)``; ValueError if bad."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if _looks_like_image(body):
            raise ValueError("the body is an image file sent as it is; send it as a multipart/form-data upload "
                             "in the field 'file' (curl -F file=@digit.png URL)") from None
        raise ValueError(f"the body is not valid JSON ({exc})") from None
    except RecursionError:  # valid JSON nested thousands deep: nothing a drawing needs
        raise ValueError("the body is nested too deeply to be a drawing") from None
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise ValueError('send {"pixels": [[28 numbers] x 28 rows]} or a multipart upload in field "file"')
    rows = payload["pixels"]
    if not isinstance(rows, list) or len(rows) != SIZE or not all(isinstance(r, list) and len(r) == SIZE
                                                                  for r in rows):
        got = f"{len(rows)} rows" if isinstance(rows, list) else type(rows).__name__
        raise ValueError(f"pixels must be {SIZE} rows of {SIZE} numbers (got {got})")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for r in rows for v in r):
        raise ValueError("pixels must all be numbers")
    try:
        values = np.asarray(rows, dtype=np.float64)  # (28, 28)
    except OverflowError:  # an integer of thousands of digits
        raise ValueError("pixel values must be in 0-1 or 0-255") from None
    if not np.isfinite(values).all():  # Python's JSON reads NaN and Infinity, which JSON itself has not
        raise ValueError("pixel values must be finite numbers in 0-1 or 0-255 (the body holds NaN or Infinity)")
    if values.min() < 0 or values.max() > 255:
        raise ValueError("pixel values must be in 0-1 or 0-255")
    return values


def _predict(trained: Any, source: Any, max_pixels: int) -> dict[str, Any]:
    """Prepare one image, predict, and describe how the prediction evolved (runs in a worker thread)."""
    prepared = prepare(source, max_pixels=max_pixels)
    probs = trained.probabilities(prepared.pixels)[0]  # (C,)
    points, steps = trained.reading(prepared.pixels, max_points=EXPENSIVE_POINTS)  # (1, P, C)
    names = trained.class_names
    return {
        "class": int(probs.argmax()),
        **({"name": names[int(probs.argmax())]} if names else {}),  # as TrainedModel.predict gives it
        "probabilities": [float(p) for p in probs],
        "steps": [[round(float(p), 5) for p in row] for row in steps[0]],
        "steps_read": points,  # how many steps (rows or pixels) had been read for each entry of steps
        "image": prepared.pixels.tolist(),  # what the model saw: uint8 (28, 28)
        "geometry": {"source_size": list(prepared.source_size), "scale": list(prepared.scale),
                     "origin": list(prepared.origin)},
        "inverted": prepared.inverted,
        "passthrough": prepared.passthrough,
    }


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "an image (PNG, JPEG, BMP, ...), prepared like MNIST"}}}},
            "application/json": {"schema": {"type": "object", "required": ["pixels"], "properties": {
                "pixels": {"type": "array", "minItems": SIZE, "maxItems": SIZE,
                           "description": "28 rows of 28 numbers, 0-1 or 0-255 (max > 1), light ink on dark",
                           "items": {"type": "array", "minItems": SIZE, "maxItems": SIZE,
                                     "items": {"type": "number"}}}}}},
        },
    },
}


def _test_accuracy(run_dir: Path) -> float | None:
    try:
        return rnnlab.read_run(run_dir).test_accuracy
    except RnnlabError:  # an unfinished run folder, or a TrainedModel built by hand
        return None


def create_app(run: str | Path | Any, *, limits: Limits | None = None) -> FastAPI:
    """The app for a run folder (or an already loaded :class:`rnnlab.TrainedModel`)."""
    limits = limits or Limits()
    trained = rnnlab.load(run) if isinstance(run, (str, Path)) else run
    if trained.reads_sequences:
        raise DataError(f"{trained.run_dir} was trained on sequences from a file; `rnnlab serve` draws "
                        "digit images. Classify sequences with `rnnlab predict RUN_DIR seqs.npy` or "
                        "rnnlab.load(RUN_DIR).predict(sequences)")
    trained.model.eval()
    quiet_multipart_parser()
    slots = asyncio.Semaphore(max(1, limits.concurrency))
    limiter = RateLimiter(limits.rate_per_minute)
    cfg = trained.config
    info = {
        "run": str(trained.run_dir), "name": cfg.label, "view": trained.view, "steps": trained.model.seq_len,
        "features": trained.model.input_size, "classes": trained.num_classes, "cell": cfg.model.cell,
        "hidden": cfg.model.hidden, "layers": cfg.model.layers, "bidirectional": cfg.model.bidirectional,
        "readout": cfg.model.readout, "test_accuracy": _test_accuracy(trained.run_dir),
        "class_names": trained.class_names,  # None: the class numbers are the names (MNIST's digits)
        "permutation": None if trained.permutation is None else [int(i) for i in trained.permutation.tolist()],
        "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels},
    }

    app = FastAPI(title="rnnlab", version=rnnlab.__version__,
                  description="Draw a digit and watch a recurrent network read it. `POST /predict` takes an "
                              "image upload (field `file`) or `{\"pixels\": 28x28}` and returns the class, "
                              "the probabilities and the probabilities after each step read.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Its headers are kept: a 405's Allow (which HTTP requires) tells a client the method to use.
        headers = dict(exc.headers or {})
        message = str(exc.detail)
        if exc.status_code == 405 and headers.get("Allow"):
            message = (f"method {request.method} is not allowed on {request.url.path}; "
                       f"use {' or '.join(headers['Allow'].split(', '))}")
        return error(exc.status_code, message, **headers)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health", summary="200 when the model is loaded")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": cfg.label}

    for path, endpoint in (("/", index), ("/health", health)):  # health checks and load balancers probe with HEAD
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)

    @app.get("/info", summary="the model: view, steps, classes, architecture, permutation")
    async def model_info() -> dict[str, Any]:
        return info

    @app.post("/predict", summary="classify one image", openapi_extra=PREDICT_BODY)
    async def predict(request: Request) -> Any:
        client = request.client.host if request.client else "unknown"
        if not limiter.allow(client):
            return error(429, f"too many requests: at most {limits.rate_per_minute} predictions a minute",
                         **{"Retry-After": "60"})
        try:
            body = await _read_body(request, limits.max_upload_bytes)
        except _TooLarge:
            return error(413, f"request too large (limit {limits.max_upload_bytes / 1024 / 1024:g} MB)")
        except _Disconnected:  # nobody reads the answer; it only ends the request without a traceback
            return error(400, "the client disconnected before the whole body arrived")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if kind == "multipart/form-data":
                source: Any = await _multipart_file(request, body)
            elif kind in ("application/json", ""):
                source = pixels_from_json(body)
            else:
                return error(415, f"unsupported content type {kind!r}: send multipart/form-data "
                                  "(field 'file') or application/json ({\"pixels\": ...})")
        except ValueError as exc:
            return error(400, str(exc))
        if slots.locked():
            return error(503, "busy: too many predictions at once, try again shortly", **{"Retry-After": "1"})
        async with slots:
            try:
                result = await run_in_threadpool(_predict, trained, source, limits.max_pixels)
            except RnnlabError as exc:
                message = str(exc).removeprefix("image: ")
                return error(413 if "too large" in message else 422, message)
        if not all(math.isfinite(p) for p in result["probabilities"]):
            return error(500, "the model produced non-finite probabilities")
        return result

    return app
