"""The HTTP service: `create_app(predictor)` -> a FastAPI app (run it with uvicorn).

    >>> import maskrcnn, uvicorn                                              # doctest: +SKIP
    >>> from maskrcnn.serve import ServeSettings, create_app                   # doctest: +SKIP
    >>> app = create_app(maskrcnn.load_model("model.safetensors"), settings=ServeSettings())  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                          # doctest: +SKIP

Endpoints
  POST /v1/predict  an image as the raw body or as the multipart field "image"; options
                    score_threshold, mask_threshold, format (json | png) as query or form fields
  GET  /            the web page (static/index.html + app.js, no build step)
  GET  /healthz     the process answers (never waits on the model)
  GET  /readyz      200 once the model is loaded and warm, 503 before
  GET  /v1/model    classes, default thresholds, input size, limits, batching
  GET  /openapi.json, /docs   FastAPI's schema and its page

A request's life: admitted only while fewer than `queue_size` requests are in progress (else
503, before its body is read), body read with the byte limit, image decoded in a worker thread
with the pixel limit, inference in the batcher's thread, response encoded in a worker thread;
all of it under `timeout_s` (else 504). The event loop never runs model code, so /healthz
answers during the longest batch.
"""

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.concurrency import run_in_threadpool

from ..inference.api import Predictor, Result
from ..inference.outputs import masks_to_rles
from .batcher import DynamicBatcher
from .upload import decode_image, parse_upload

__all__ = ["ServeSettings", "create_app"]

log = logging.getLogger("maskrcnn.serve")
STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ServeSettings:
    """Limits and defaults of one server (the `maskrcnn serve` flags of the same names)."""

    score_threshold: float = 0.5  # default of the request option
    mask_threshold: float = 0.5
    max_upload_bytes: int = 20 * 1024 * 1024
    # 25 MP: above any common camera's photos, and each admitted request may hold one decoded
    # float32 image (300 MB at this size) plus its full-size masks
    max_pixels: int | None = 25_000_000
    queue_size: int = 16  # requests in progress at once (reading, decoding, waiting, running)
    timeout_s: float = 30.0  # per request, from admission to response
    max_batch_size: int = 4  # 1: no batching
    max_wait_ms: float = 5.0  # how long the batcher waits for company

    def __post_init__(self):
        for name in ("score_threshold", "mask_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("max_upload_bytes", "queue_size", "max_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1 (or None), got {self.max_pixels}")
        if not self.timeout_s > 0 or self.max_wait_ms < 0:
            raise ValueError(f"timeout_s must be > 0 and max_wait_ms >= 0, got {self.timeout_s}, {self.max_wait_ms}")


# --- response schema (documentation in /openapi.json; responses are built as plain dicts) --


class Mask(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="COCO compressed RLE (pycocotools.mask.decode reads it)")


class Detection(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in the image's pixels")
    score: float
    label: int
    class_name: str
    mask: Mask | None = Field(description="null for a model without a mask branch")
    keypoints: list[list[float]] | None = Field(
        default=None, description="a keypoint model's [x, y, score] per keypoint, in the image's pixels")


class PredictResponse(BaseModel):
    model: str
    image: dict[str, Any] = Field(description="name, width, height")
    score_threshold: float
    mask_threshold: float
    detections: list[Detection]
    batch_size: int = Field(description="how many requests shared this one's model call")
    timing_ms: dict[str, float] = Field(
        description="decode (reading the upload included), queue, inference (its batch), encode, total")


def _options_model(settings: ServeSettings) -> type[BaseModel]:
    """The request options, with this server's defaults; unknown names are refused (422), so
    a typo such as score_thresh does not pass silently."""
    probability = dict(ge=0.0, le=1.0, allow_inf_nan=False)
    return create_model(
        "PredictOptions",
        __config__=ConfigDict(extra="forbid"),
        score_threshold=(float, Field(settings.score_threshold, **probability,
                                      description="keep detections scoring above this")),
        mask_threshold=(float, Field(settings.mask_threshold, **probability,
                                     description="mask pixel = probability >= this")),
        format=(Literal["json", "png"], Field("json", description="json: detections; png: the overlay")),
    )


def _request_body_schema(options: type[BaseModel]) -> dict:
    binary = {"type": "string", "format": "binary"}
    fields = {k: v for k, v in options.model_json_schema()["properties"].items()}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": binary, **fields}}},
        "image/png": {"schema": binary}, "image/jpeg": {"schema": binary},
        "application/octet-stream": {"schema": binary},
    }}}


class _Service:
    """What the endpoints share: the predictor, the batcher, the admission count."""

    def __init__(self, predictor: Predictor, settings: ServeSettings, model_name: str):
        self.predictor = predictor
        self.settings = settings
        self.model_name = model_name
        self.batcher = DynamicBatcher(self.run_batch, max_batch_size=settings.max_batch_size,
                                      max_wait_s=settings.max_wait_ms / 1000)
        self.in_progress = 0  # touched on the event loop only
        self.ready = False
        self.warmup_error: str | None = None

    def run_batch(self, payloads: Sequence[tuple]) -> list[Result]:
        """In the batcher's thread: (image, score_threshold, mask_threshold) -> Result. The
        thresholds are per call of the model, so jobs are grouped by them (almost always one
        group); `predict_tensors` then batches images that pad to the same size."""
        results: list[Result | None] = [None] * len(payloads)
        groups: dict[tuple[float, float], list[int]] = {}
        for i, (_, score, mask) in enumerate(payloads):
            groups.setdefault((score, mask), []).append(i)
        for (score, mask), indices in groups.items():
            images = [payloads[i][0] for i in indices]
            out = self.predictor.predict_tensors(images, None, score, mask, batch_size=len(images))
            for i, result in zip(indices, out):
                results[i] = result
        return results

    async def warm_up(self) -> None:
        """One forward before /readyz says yes: the first call pays for allocations."""
        transform = self.predictor.model.transform
        side = int(transform.min_size[-1])
        image = torch.rand(3, side, side, generator=torch.Generator().manual_seed(0))
        try:
            await self.batcher.run((image, self.settings.score_threshold, self.settings.mask_threshold))
            self.ready = True
        except Exception as e:  # noqa: BLE001 - reported by /readyz, the process stays up
            self.warmup_error = f"{type(e).__name__}: {e}"
            log.exception("warm-up failed")

    def model_info(self) -> dict:
        model, s = self.predictor.model, self.settings
        t = model.transform
        return {
            "name": self.model_name,
            "device": str(self.predictor.device),
            "num_classes": int(model.num_classes),
            "class_names": self.predictor.class_names,
            "label_names": self.predictor.label_names,
            "defaults": {"score_threshold": s.score_threshold, "mask_threshold": s.mask_threshold},
            "model_score_threshold": getattr(model.config, "box_score_thresh", None),
            "input": {"min_size": list(t.min_size), "max_size": int(t.max_size),
                      "size_divisible": int(t.size_divisible)},
            "limits": {"max_upload_bytes": s.max_upload_bytes, "max_pixels": s.max_pixels,
                       "queue_size": s.queue_size, "timeout_s": s.timeout_s},
            "batching": {"max_batch_size": s.max_batch_size, "max_wait_ms": s.max_wait_ms,
                         "batches_run": self.batcher.batches_run, "requests_run": self.batcher.jobs_run},
        }

    async def predict(self, request: Request, query: BaseModel, options_model: type[BaseModel]) -> Response:
        start = time.perf_counter()
        upload = await parse_upload(request, self.settings.max_upload_bytes)
        options = query
        if upload.fields:  # form fields override the query's
            try:
                options = options_model.model_validate({**query.model_dump(exclude_unset=True), **upload.fields})
            except ValidationError as e:
                raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None
        image = await run_in_threadpool(decode_image, upload.data, upload.name, self.settings.max_pixels)
        decoded = time.perf_counter()
        result, job = await self.batcher.run((image, options.score_threshold, options.mask_threshold))
        inferred = time.perf_counter()
        if options.format == "png":
            body = await run_in_threadpool(_overlay_png, result)
            headers = {"X-Detections": str(len(result))}
            return Response(body, media_type="image/png", headers=headers)
        timing = {"decode": decoded - start, "queue": job.started - job.enqueued,
                  "inference": inferred - job.started}
        body = await run_in_threadpool(self._json_body, result, upload.name, options, job.batch_size, timing, start)
        return Response(body, media_type="application/json")

    def _json_body(self, result: Result, name: str, options, batch_size: int, timing: dict, start: float) -> bytes:
        encode_start = time.perf_counter()
        masks = result.binary_masks
        rles = masks_to_rles(masks) if masks is not None and len(result) else [None] * len(result)
        detections = [
            {"box": box, "score": score, "label": label, "class_name": name_, "mask": rle}
            for box, score, label, name_, rle in zip(result.boxes.tolist(), result.scores.tolist(),
                                                     result.labels.tolist(), result.class_names, rles)
        ]
        if result.keypoints is not None:  # [x, y, score] per keypoint (a keypoint model)
            points = torch.cat([result.keypoints[..., :2], result.keypoint_scores[..., None]], dim=-1)
            for det, kp in zip(detections, points.tolist()):
                det["keypoints"] = kp
        height, width = result.image_size
        now = time.perf_counter()
        timing = {k: round(v * 1000, 3) for k, v in {**timing, "encode": now - encode_start, "total": now - start}.items()}
        return json.dumps({
            "model": self.model_name, "image": {"name": name, "width": width, "height": height},
            "score_threshold": options.score_threshold, "mask_threshold": options.mask_threshold,
            "detections": detections, "batch_size": batch_size, "timing_ms": timing,
        }).encode()


def _overlay_png(result: Result) -> bytes:
    buffer = BytesIO()
    # compress_level 1: several times faster than the default 6 on photos, for a file ~1.3x bigger
    result.draw().save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def create_app(predictor: Predictor, *, settings: ServeSettings | None = None, model_name: str = "model") -> FastAPI:
    """A FastAPI app serving `predictor` (see the module docstring). The batcher's thread and
    the warm-up start with the app's lifespan (uvicorn, or `with TestClient(app)`)."""
    settings = settings or ServeSettings()
    service = _Service(predictor, settings, model_name)
    Options = _options_model(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        await service.warm_up()
        yield
        service.batcher.stop()

    app = FastAPI(title="maskrcnn serve", version="1", lifespan=lifespan,
                  description="Mask R-CNN instance segmentation over HTTP.")
    app.state.service = service

    @app.get("/healthz")
    async def healthz() -> dict:
        """Always answers while the process lives; says nothing about the model."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "model not loaded or not warm yet"}})
    async def readyz():
        """200 once the model has run its warm-up batch."""
        if service.ready:
            return {"ready": True}
        return JSONResponse({"ready": False, "error": service.warmup_error}, status_code=503)

    @app.get("/v1/model")
    async def model_info() -> dict:
        return service.model_info()

    @app.post(
        "/v1/predict",
        openapi_extra=_request_body_schema(Options),
        responses={
            200: {"model": PredictResponse, "content": {"image/png": {}},
                  "description": "detections (format=json) or the overlay (format=png)"},
            400: {"description": "empty, corrupt, truncated or non-image upload; malformed multipart"},
            413: {"description": "upload above the byte limit, or image above the pixel limit"},
            422: {"description": "an option out of range or unknown"},
            503: {"description": "the queue is full; retry later"},
            504: {"description": "the request took longer than the time limit"},
        },
    )
    async def predict(request: Request, options: Annotated[Options, Query()]):
        """Detect instances in one image: the raw body (any content type) or the multipart
        file field "image"."""
        if service.in_progress >= settings.queue_size:
            raise HTTPException(503, f"server busy: {service.in_progress} requests in progress "
                                     f"(queue size {settings.queue_size}); retry later",
                                headers={"Retry-After": "1"})
        service.in_progress += 1
        try:
            return await asyncio.wait_for(service.predict(request, options, Options), settings.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise HTTPException(504, f"request took longer than the time limit of {settings.timeout_s:g} s") from None
        except (HTTPException, RequestValidationError):
            raise
        except Exception as e:  # noqa: BLE001 - one request's failure is its own 500, not the process's
            log.exception("predict failed")
            raise HTTPException(500, f"inference failed ({type(e).__name__}: {e})") from None
        finally:
            service.in_progress -= 1

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
