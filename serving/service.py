"""The S4D DFER service (BentoML 1.4): video, image and clip-batch endpoints, health, metadata, demo page.

    bentoml serve serving.service:S4DService --host 127.0.0.1 --port 3000

The model comes from the BentoML model store: `$S4D_MODEL_TAG`, default `s4d-champion:latest` (declared
as a class attribute, so `bentoml build` packs it into the bento). One GPU is declared as the resource;
with CUDA the model runs in bf16 on it, without it runs on the CPU. The prediction logic lives in
serving/inference.py, the request limits in serving/inputs.py and serving/http.py; this module only
maps HTTP to them. Endpoints and settings: serving/README.md.
"""
from __future__ import annotations

import os

import s4d  # noqa: F401  (first, before torch loads: it sets OpenMP's wait policy)

import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from pydantic import AfterValidator, BeforeValidator  # noqa: E402
from starlette.responses import FileResponse, JSONResponse, RedirectResponse  # noqa: E402

from serving.http import COUNTERS, RequestGuard, quiet_framework_logs  # noqa: E402
from serving.inference import Predictor, plain  # noqa: E402
from serving.inputs import ServingError, as_pixels, count_clips, decode_compact, refuse_booleans  # noqa: E402
from serving.settings import ServingSettings  # noqa: E402
from s4d.registry import MODEL_FILE, model_tag  # noqa: E402

logger = logging.getLogger("s4d.serving")

SETTINGS = ServingSettings.from_env()
quiet_framework_logs()
HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
# Inside a built bento this file is <bento>/src/serving/service.py, beside <bento>/bento.yaml.
BENTO_YAML = HERE.parents[1] / "bento.yaml" if HERE.parent.name == "src" else None

_predictor: Predictor | None = None  # the worker's predictor, for the request validators below


def _cap_clips(value):
    """Before any array is built: at most S4D_MAX_CLIPS clips per request, so one client's huge batch
    cannot hold the model (and every other client's clips queued behind it)."""
    count_clips(value, SETTINGS.max_clips)
    refuse_booleans(value)
    return decode_compact(value)


def _check_clips(clips: np.ndarray) -> np.ndarray:
    """Runs while the request is parsed, before adaptive batching: a malformed request is refused
    alone (400, naming the problem) and never poisons a batch of other clients' clips."""
    clips = as_pixels(clips)
    if _predictor is not None:
        _predictor.check_clips(clips)
    return clips


def _server_named(value):
    """The upload is stored under a name the server chooses, never the client's: FFmpeg would pick its
    demuxer from the client's extension (and a 5000-character name would not fit the file system)."""
    if hasattr(value, "filename"):
        value.filename = "upload"
    return value


Upload = Annotated[Path, BeforeValidator(_server_named)]

# Clips come as a nested JSON list (BentoML's tensor form) or, much cheaper to parse, compact:
# {"shape": [B, T, H, W, 3], "dtype": "uint8", "data": "<base64 of the raw bytes>"}.
# No DType("uint8") here: numpy would raise OverflowError (a 500) on 300; as_pixels refuses it (400).
Clips = Annotated[np.ndarray, BeforeValidator(_cap_clips), AfterValidator(_check_clips)]


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
        logger.info("s4d service ready: %s on %s (%s) in %.1f s", self.info["tag"], self.predictor.device,
                    "bf16" if self.predictor.bf16 else "fp32", time.perf_counter() - started)

    def __is_ready__(self) -> bool:
        return _predictor is not None

    def _run(self, fn, *args) -> JSONResponse:
        """Call the predictor; every outcome is a JSON response built here (so nothing can fail later, in
        the framework's serialisation, and turn into a 500)."""
        try:
            return JSONResponse(plain(fn(*args)))
        except ServingError as e:  # logged (one line) and counted by the RequestGuard
            return _error_response(e)
        except Exception:  # noqa: BLE001 - a bug, not the client's fault: log it, answer 500 as JSON
            logger.exception("internal error")
            return JSONResponse({"error": "internal error, see the server log", "code": "internal",
                                 "status": 500}, status_code=500)

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

    # S4D_BATCH_MAX_SIZE=1 turns adaptive batching off: one model call per request (the benchmark's baseline)
    @bentoml.api(route="/classify_clips", batchable=SETTINGS.batch_max_size > 1, batch_dim=0,
                 max_batch_size=max(2, SETTINGS.batch_max_size), max_latency_ms=SETTINGS.batch_max_latency_ms)
    def classify_clips(self, clips: Clips) -> np.ndarray:
        """(B, T, H, W, 3) uint8 aligned face crops -> (B, K) DFER probabilities; requests from many
        clients are merged into one model call (adaptive batching)."""
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
                "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 1), "served": COUNTERS.snapshot()}

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


S4DService.add_asgi_middleware(RequestGuard, settings=SETTINGS)
