"""The S4D DFER service (BentoML 1.4): video, image and clip-batch endpoints, health, metadata, demo page.

    bentoml serve serving.service:S4DService --host 127.0.0.1 --port 3000

The model comes from the BentoML model store: `$S4D_MODEL_TAG`, default `s4d-champion:latest` (declared
as a class attribute, so `bentoml build` packs it into the bento). One GPU is declared as the resource;
with CUDA the model runs in bf16 on it, without it runs on the CPU. The prediction logic lives in
serving/inference.py; this module only maps HTTP to it. Endpoints and settings: serving/README.md.
"""
from __future__ import annotations

import os

# Before torch loads: OpenMP threads that wait passively do not starve the decoder and the event loop.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from pydantic import AfterValidator, BeforeValidator  # noqa: E402
from starlette.responses import FileResponse, JSONResponse, RedirectResponse  # noqa: E402

from serving.inference import (Predictor, ServingError, ServingSettings, as_pixels, decode_compact,  # noqa: E402
                               plain)
from serving.store import MODEL_FILE, model_tag  # noqa: E402

logger = logging.getLogger("s4d.serving")

SETTINGS = ServingSettings.from_env()
HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
# Inside a built bento this file is <bento>/src/serving/service.py, beside <bento>/bento.yaml.
BENTO_YAML = HERE.parents[1] / "bento.yaml" if HERE.parent.name == "src" else None
UPLOAD_ROUTES = ("/predict_video", "/predict_image")

_predictor: Predictor | None = None  # the worker's predictor, for the request validators below


def _check_clips(clips: np.ndarray) -> np.ndarray:
    """Runs while the request is parsed, before adaptive batching: a malformed request is refused
    alone (400, naming the problem) and never poisons a batch of other clients' clips."""
    clips = as_pixels(clips)
    if _predictor is not None:
        _predictor.check_clips(clips)
    return clips


def _safe_upload_name(value):
    """Before BentoML stores an upload in a temp file named after it: a plain, short file name (a 300-char
    or odd name would otherwise fail in the file system and surface as a 500)."""
    import re

    name = getattr(value, "filename", None)
    if isinstance(name, str):
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(name.replace("\\", "/")))
        stem, dot, ext = base.rpartition(".")
        value.filename = (stem[:48] + dot + ext[:10]) if dot else base[:60]
    return value


Upload = Annotated[Path, BeforeValidator(_safe_upload_name)]

# Clips come as a nested JSON list (BentoML's tensor form) or, much cheaper to parse, compact:
# {"shape": [B, T, H, W, 3], "dtype": "uint8", "data": "<base64 of the raw bytes>"}.
# No DType("uint8") here: numpy would raise OverflowError (a 500) on 300; as_pixels refuses it (400).
Clips = Annotated[np.ndarray, BeforeValidator(decode_compact), AfterValidator(_check_clips)]


class UploadGuard:
    """ASGI middleware in front of the upload routes, so that a bad upload is a named 4xx, never a 5xx.

    - Size: an upload above the limit gets 413 before it is parsed or stored. With a Content-Length the
      decision is immediate (the body is drained so that the client reads the answer instead of a broken
      pipe); a chunked body is counted as it arrives.
    - A multipart request without a boundary gets 400 at once.
    - The framework parses the multipart body before the API runs; a body it cannot parse (an extra file
      field with binary content, a form field holding text where the file should be, ...) makes it answer
      a bare 500. Such answers (they carry no `code`; the API's own answers always do) become 400s that
      say how to send the file."""

    OVERHEAD = 64 * 1024  # multipart boundaries and part headers

    def __init__(self, app, max_bytes: int, paths: tuple[str, ...] = UPLOAD_ROUTES):
        self.app, self.max_bytes, self.paths = app, max_bytes, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        if content_type.startswith("multipart/form-data") and "boundary=" not in content_type:
            error = ServingError("bad_request", "multipart/form-data without a boundary: " + self._how(scope))
            return await JSONResponse(error.to_dict(), status_code=error.status)(scope, receive, send)
        limit = self.max_bytes + self.OVERHEAD
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared <= limit:
                return await self.app(scope, receive, self._named(scope, receive, send))
            await self._drain(receive, cap=max(4 * limit, 256 * 2**20))
            return await self._refuse(scope, receive, send, declared)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                await self._drain(receive, cap=max(4 * limit, 256 * 2**20) - total)
                return await self._refuse(scope, receive, send, total)
            chunks.append(body)
            if not message.get("more_body"):
                break
        replay = iter(chunks)

        async def receive_again():
            try:
                return {"type": "http.request", "body": next(replay), "more_body": True}
            except StopIteration:
                return {"type": "http.request", "body": b"", "more_body": False}

        return await self.app(scope, receive_again, self._named(scope, receive, send))

    @staticmethod
    def _how(scope) -> str:
        field = "video" if scope.get("path") == "/predict_video" else "image"
        return f"send the file as the multipart/form-data file field '{field}' (curl -F {field}=@FILE)"

    def _named(self, scope, receive, send):
        """`send`, except that a bare 500 (the framework failed to parse the request) becomes a 400."""
        held: list[dict] = []

        async def send_named(message):
            if message["type"] == "http.response.start" and message.get("status") == 500:
                held.append(message)
                return
            if held and message["type"] == "http.response.body":
                held.append(message)
                if message.get("more_body"):
                    return
                body = b"".join(m.get("body", b"") for m in held[1:])
                try:
                    named = "code" in json.loads(body or b"{}")
                except ValueError:
                    named = False
                if named:  # the API's own 500: pass it on unchanged
                    for m in held:
                        await send(m)
                else:
                    error = ServingError("bad_request", "the upload could not be read: " + self._how(scope))
                    await JSONResponse(error.to_dict(), status_code=error.status)(scope, receive, send)
                held.clear()
                return
            await send(message)

        return send_named

    @staticmethod
    async def _drain(receive, cap: int) -> None:
        seen = 0
        while seen < cap:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body"):
                return

    async def _refuse(self, scope, receive, send, size: int) -> None:
        error = ServingError("too_large", f"upload: {size / 2**20:.1f} MiB is above the upload limit of "
                             f"{self.max_bytes / 2**20:g} MiB (S4D_MAX_UPLOAD_MB)")
        await JSONResponse(error.to_dict(), status_code=error.status)(scope, receive, send)


def _error_response(error: ServingError) -> JSONResponse:
    return JSONResponse(error.to_dict(), status_code=error.status)


web = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # GET pages and JSON beside the APIs


@bentoml.service(
    name="s4d_dfer",
    resources={"gpu": 1},
    workers=1,
    threads=4,  # decoding of one upload overlaps the model/detector work of another (those are serialised)
    traffic={"timeout": 300},
)
@bentoml.asgi_app(web, path="/")
class S4DService:
    bento_model = bentoml.models.BentoModel(model_tag(BENTO_YAML))

    def __init__(self) -> None:
        global _predictor
        started = time.perf_counter()
        stored = self.bento_model
        meta = dict(stored.info.metadata or {})
        self.info = {"tag": str(stored.tag), "name": stored.tag.name, "version": stored.tag.version,
                     "created": stored.info.creation_time.isoformat(),
                     "metrics": meta.get("metrics", {}), "params": meta.get("params", {}),
                     "data_version": meta.get("data_version", "unknown"), "store_labels": dict(stored.info.labels)}
        self.predictor = Predictor.from_checkpoint(stored.path_of(MODEL_FILE), SETTINGS, info=self.info,
                                                   labels=meta.get("labels"))
        self.predictor.warm_up()  # kernels initialised, CPU thread counts measured: not in a client's time
        _predictor = self.predictor
        self.started = time.time()
        self.served = {"ok": 0, "client_error": 0, "server_error": 0}
        self._count_lock = threading.Lock()
        logger.info("s4d service ready: %s on %s (%s) in %.1f s", self.info["tag"], self.predictor.device,
                    "bf16" if self.predictor.bf16 else "fp32", time.perf_counter() - started)

    def __is_ready__(self) -> bool:
        return _predictor is not None

    def _run(self, fn, *args) -> JSONResponse:
        """Call the predictor; every outcome is a JSON response built here (so nothing can fail later, in
        the framework's serialisation, and turn into a 500)."""
        try:
            result = JSONResponse(plain(fn(*args)))
            self._count("ok")
            return result
        except ServingError as e:
            self._count("client_error")
            logger.info("refused (%s %d): %s", e.code, e.status, e.message)
            return _error_response(e)
        except Exception:  # noqa: BLE001 - a bug, not the client's fault: log it, answer 500 as JSON
            self._count("server_error")
            logger.exception("internal error")
            return JSONResponse({"error": "internal error, see the server log", "code": "internal",
                                 "status": 500}, status_code=500)

    def _count(self, outcome: str) -> None:
        with self._count_lock:
            self.served[outcome] += 1

    # ------------------------------------------------------------------------------------- the APIs
    @bentoml.api(route="/predict_video")
    def predict_video(self, video: Upload) -> dict:
        """Video upload (mp4, avi, mov, webm, mkv) -> top label, per-class probabilities, per-segment
        timeline, face box per sampled frame, model version, `uncertain` flag."""
        return self._run(self.predictor.predict_video, video, "video")

    @bentoml.api(route="/predict_image")
    def predict_image(self, image: Upload) -> dict:
        """Image upload -> SFER head on the largest face (or the whole picture if it is a face crop)."""
        return self._run(self.predictor.predict_image, image, "image")

    @bentoml.api(route="/classify_clips", batchable=True, batch_dim=0, max_batch_size=SETTINGS.batch_max_size,
                 max_latency_ms=SETTINGS.batch_max_latency_ms)
    def classify_clips(self, clips: Clips) -> np.ndarray:
        """(B, T, H, W, 3) uint8 aligned face crops -> (B, K) DFER probabilities; requests from many
        clients are merged into one model call (adaptive batching)."""
        return self.predictor.classify_clips(clips)

    @bentoml.api(route="/classify_clips_unbatched")
    def classify_clips_unbatched(self, clips: Clips) -> np.ndarray:
        """The same as /classify_clips, one request per model call (the baseline for the benchmark)."""
        return self.predictor.classify_clips(clips)

    @bentoml.api(route="/metadata")
    def metadata(self) -> dict:
        """Model metadata: labels, version, metrics, params, input format, settings."""
        return self.model_metadata()

    def model_metadata(self) -> dict:
        return {**self.predictor.model_info(), "settings": SETTINGS.as_env()}

    # ---------------------------------------------------------------------------- GET pages / JSON
    @web.get("/health")
    def health(self) -> dict:
        return {"status": "ok", "ready": _predictor is not None, "model": self.info["tag"],
                "device": str(self.predictor.device), "dtype": "bfloat16" if self.predictor.bf16 else "float32",
                "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 1), "served": dict(self.served)}

    @web.get("/model")
    def model(self) -> dict:
        return self.model_metadata()

    @web.get("/demo")
    def demo(self):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @web.get("/demo/")
    def demo_slash(self):
        return RedirectResponse("/demo")

    @web.get("/demo/app.js")
    def demo_js(self):
        return FileResponse(STATIC / "app.js", media_type="text/javascript")


S4DService.add_asgi_middleware(UploadGuard, max_bytes=SETTINGS.max_upload_bytes)
