"""The search service: a FastAPI app over a :class:`GallerySearch`, with a web page.

Routes (OpenAPI docs at ``/docs`` and ``/redoc``, served from the ``fastapi-offline``
package's files: no CDN):

* ``POST /search`` — multipart form: ``image`` (a crop) or ``query_id`` (an indexed crop, left
  out of its own results), ``attributes`` (``gender=female,backpack=yes`` or a JSON object),
  ``k``, ``camera`` (comma-separated camera numbers to search in), ``min_prob`` (default 0 for
  an attribute query: every crop ranked by the product of its probabilities; 0.5 with an image),
  ``rerank``. With neither image nor query_id it is an attribute query.
* ``GET /search/attributes`` — one query parameter per attribute task (``?gender=female``),
  plus ``k``, ``camera``, ``min_prob``; unknown parameters or values are a 422.
* ``POST /verify`` — multipart form: ``first`` and ``second`` (two crops), ``far`` (the operating
  point, default the service's): their distance, P(same person) and the decision, or
  ``"calibrated": false`` with the reason when the service has no calibration.

Search results of image queries carry ``probability`` (P(same person), calibrated on labelled
pairs by ``attreid calibrate``) and ``same`` (it passes the operating point); both are null when
the service is uncalibrated (``calibration`` in every search response says why) or re-ranked
(``score`` says ``re-ranked distance``: another scale).
* ``GET /images/{id}`` — the file of an indexed crop (only indexed files are served).
* ``GET /api/schema`` — the attribute tasks the index's model was trained on and their values
  (the page builds its chips from it; no task: a re-ID-only model, search by image only).
* ``GET /healthz`` — status, number of images, checkpoint, trained tasks.

A task the model was trained without (its training data had no label for it) is never shown
nor searchable: a constraint on it is a 422 naming it (:meth:`GallerySearch.check_trained`),
results describe the trained tasks only.
* ``GET /`` — the web page (static files shipped in ``attreid/search/web``; no CDN).

Uploads are checked before decoding: at most ``max_upload_bytes`` (by Content-Length, and by
counting the bytes of a chunked body as they arrive), one of the raster formats of
:data:`UPLOAD_FORMATS`, and at most ``max_pixels`` pixels (read from the header, so a
decompression bomb is refused before it is decompressed). Errors are JSON ``{"detail": ...}``:
a message, or FastAPI's list of field errors (documented in the OpenAPI schema).
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations at run time,
# and the fastapi types are imported inside create_app (an optional dependency).
import io
import json
import sqlite3
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

from attreid.inference.calibration import DEFAULT_FAR, CalibrationError, verdict
from attreid.metrics.distance import pairwise_distance
from attreid.schema import TASKS
from attreid.search.batching import EmbeddingBatcher
from attreid.search.index import GalleryIndexError
from attreid.search.query import (
    DESCRIPTION_MIN_PROB,
    IMAGE_MIN_PROB,
    GallerySearch,
    Hit,
    QueryError,
    parse_attributes,
)
from attreid.search.uploads import Upload, UploadStore

WEB_DIR = Path(__file__).parent / "web"
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
MAX_K = 200
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG includes MPO
"""Formats decoded from uploads (PIL would also try EPS via Ghostscript, PDF, ... )."""


def _fastapi() -> Any:
    try:
        import fastapi
    except ImportError as exc:
        raise ImportError("the search service needs FastAPI and uvicorn: "
                          "pip install 'attreid[serve]'") from exc
    return fastapi


def decode_upload(data: bytes, max_pixels: int = MAX_PIXELS) -> Any:
    """Decode uploaded bytes to an RGB PIL image.

    Raises:
        QueryError: empty, not a decodable image, or more than ``max_pixels`` pixels.
    """
    from PIL import Image

    from attreid.data.io import to_rgb

    if not data:
        raise QueryError("image: empty upload")
    try:
        with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise QueryError(f"image: {width}x{height} pixels, at most {max_pixels} allowed")
            img.load()
            return to_rgb(img)
    except QueryError:
        raise
    except Image.UnidentifiedImageError:
        raise QueryError("image: not a decodable image (unrecognised format; accepted: "
                         f"{', '.join(UPLOAD_FORMATS)})") from None
    except Image.DecompressionBombError:
        raise QueryError(f"image: too many pixels, at most {max_pixels} allowed") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise QueryError(f"image: not a decodable image ({type(exc).__name__}: {exc})") from None


def open_search(index: Path | str, checkpoint: Path | str | None = None,
                device: str | None = None, backend: str = "auto",
                calibration: Path | str | None = None, far: float = DEFAULT_FAR,
                model: bool = True) -> GallerySearch:
    """:meth:`GallerySearch.open`, with any damage of the index folder reported as a
    :class:`GalleryIndexError` naming it (e.g. a metadata table that lacks a key).

    Raises:
        GalleryIndexError: the index is missing, damaged, or not made by the checkpoint.
    """
    try:
        return GallerySearch.open(index, checkpoint, device, backend, calibration, far, model)
    except (GalleryIndexError, CalibrationError):
        raise
    except (LookupError, TypeError, ValueError, OSError, RuntimeError, sqlite3.Error) as exc:
        raise GalleryIndexError(f"{index}: damaged index, cannot open it ({type(exc).__name__}: "
                                f"{exc}); rebuild it with `attreid index build`") from exc


class _BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, by its Content-Length or, for a
    chunked body, as soon as the bytes received pass the limit. The rest of the body is read
    and dropped (never stored) up to ``drain`` bytes, so that the client, still sending,
    receives the 413; past that the connection is closed. The message names ``upload_limit``,
    the size allowed for the image itself."""

    def __init__(self, app: Any, limit: int, upload_limit: int, drain: int = 4 * MAX_UPLOAD_BYTES
                 ) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit
        self.drain = drain

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(receive, send, f"request of {int(length)} bytes",
                               int(length) <= self.drain)
            return
        state = {"received": 0, "over": False, "started": False}

        async def counted_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit:
                    state["over"] = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: dict) -> None:
            if state["over"]:  # the app turned _TooLarge into some response: send 413 instead
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._refuse(receive, send, "request of more bytes", True,
                                       state["received"])
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            if not state["started"]:
                await self._refuse(receive, send, "request of more bytes", True,
                                   state["received"])

    async def _refuse(self, receive: Any, send: Any, what: str, drain: bool,
                      received: int = 0) -> None:
        while drain:  # read and drop the rest of the body, up to self.drain bytes in all
            message = await receive()
            received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
            drain = received <= self.drain
        body = json.dumps({"detail": f"{what}; uploads are limited to {self.upload_limit} "
                                     "bytes"}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        if not drain:  # body left unread: this connection cannot carry another request
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

class _TooLarge(Exception):
    """Raised inside the app when a chunked body passes the size limit."""


def _error_responses(*codes: int) -> dict[Union[int, str], dict[str, Any]]:
    """OpenAPI entries of the error responses: JSON ``{"detail": message or field errors}``."""
    from pydantic import BaseModel

    class Error(BaseModel):
        detail: Union[str, list[dict[str, Any]]]

    meaning = {400: "malformed request body", 404: "no such image",
               413: "upload too large", 422: "invalid input (a message, or the field errors)"}
    return {code: {"model": Error, "description": meaning[code]} for code in codes}


def parse_cameras(text: str | None) -> list[int] | None:
    """``"1,3"`` -> ``[1, 3]``; empty -> ``None`` (all cameras)."""
    if not text or not text.strip():
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise QueryError(f"camera {text!r}: expected camera numbers separated by commas, "
                         "e.g. 1,3") from None


def describe_calibration(search: GallerySearch) -> str:
    """One line: the operating point hits are marked at, or why there is none."""
    status = search.calibration_status()
    if not status["calibrated"]:
        return f"same-person probability: {status['note']}"
    return (f"same-person probability: {status['method']} calibration, hits marked at FAR "
            f"{status['far']:g} (distance <= {status['threshold']:.4g})")


_MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
         "BMP": "image/bmp", "GIF": "image/gif", "TIFF": "image/tiff"}


def _media_type(data: bytes) -> str:
    """The media type of upload bytes already decoded once (their header read again)."""
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as img:
        return _MIME.get(img.format or "", "application/octet-stream")


def _hits(hits: list[Hit]) -> list[dict[str, Any]]:
    return [dict(h.as_dict(), url=f"/images/{h.entry.id}") for h in hits]


def _attribute_params_model(max_k: int, trained: tuple[str, ...]) -> Any:
    """Pydantic model of GET /search/attributes: one optional parameter per task (its values
    as a Literal, so OpenAPI lists them), unknown parameters forbidden. A task the model was
    trained without keeps its parameter (a 422 naming it, rather than "extra input"), described
    as unavailable."""
    from pydantic import ConfigDict, Field, create_model

    def about(task: Any) -> str:
        if task.name in trained:
            return f"{task.name}: " + ", ".join(task.classes)
        return (f"{task.name}: unavailable, the model was trained without labels for it "
                "(a 422)")

    fields: dict[str, Any] = {
        task.name: (Optional[Literal[task.classes]], Field(None, description=about(task)))
        for task in TASKS
    }
    fields["k"] = (int, Field(20, ge=1, le=max_k, description="number of results"))
    fields["camera"] = (str, Field("", description="cameras to search in, e.g. 1,3"))
    fields["min_prob"] = (float, Field(DESCRIPTION_MIN_PROB, ge=0.0, le=1.0, description=(
        "hide crops whose probability of a constraint is below this (0: rank every crop by "
        "the product of the probabilities)")))
    return create_model("AttributeQuery", __config__=ConfigDict(extra="forbid"), **fields)


def _new_app(fastapi: Any, **kwargs: Any) -> Any:
    """The FastAPI app, with ``/docs`` (Swagger UI) and ``/redoc`` from the files of the
    ``fastapi-offline`` package (FastAPI's own pages load them from a CDN: blank without
    internet). Without the package, ``/docs`` is a page saying how to get it and where the
    OpenAPI schema is."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        FastAPIOffline = None
    if FastAPIOffline is not None:
        return FastAPIOffline(**kwargs)
    from fastapi.responses import HTMLResponse

    app = fastapi.FastAPI(docs_url=None, redoc_url=None, **kwargs)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(
            "<!doctype html><title>attreid search API</title><p>The interactive API docs need "
            "the <code>fastapi-offline</code> package (<code>pip install 'attreid[serve]'"
            "</code>); no CDN is used. The OpenAPI schema is at <a href='/openapi.json'>"
            "/openapi.json</a>.</p>")

    return app


def create_app(search: GallerySearch, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_pixels: int = MAX_PIXELS, max_k: int = MAX_K, max_batch: int = 16) -> Any:
    """The FastAPI app serving ``search`` (see the module docstring for its routes).
    Uploaded crops of concurrent requests share forward passes of up to ``max_batch`` images
    (:class:`~attreid.search.batching.EmbeddingBatcher`; 1: one pass per request)."""
    fastapi = _fastapi()
    from fastapi import File, Form, HTTPException, Query, Request, UploadFile
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    app = _new_app(fastapi, title="attreid search",
                   description="Find a person in a gallery of crops by example image and/or "
                   "by attributes.")
    batcher = EmbeddingBatcher(search.embed_many, max_batch)  # the only caller of the model
    uploads = UploadStore()
    trained = search.index.trained_tasks
    AttributeQuery = _attribute_params_model(max_k, trained)

    @app.exception_handler(QueryError)
    async def _query_error(_: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    # the upload plus room for the other form fields and the multipart framing
    app.add_middleware(_BodyLimit, limit=max_upload_bytes + 65536, upload_limit=max_upload_bytes)
    errors = _error_responses(413, 422)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        info = search.index.info
        return {"status": "ok", "images": len(search.index), "index": info["kind"],
                "metric": info["metric"], "checkpoint_sha256": info["checkpoint_sha256"],
                "trained_tasks": list(trained), "calibration": search.calibration_status()}

    @app.get("/api/schema")
    def schema() -> dict[str, Any]:
        """The searchable tasks (those the model was trained on) and their values; the tasks
        it was trained without are listed in ``untrained`` (no chips, not searchable)."""
        return {"tasks": [{"name": t.name, "values": list(t.classes)} for t in TASKS
                          if t.name in trained],
                "untrained": [t.name for t in TASKS if t.name not in trained],
                "cameras": search.index.cameras(), "max_k": max_k, "images": len(search.index)}

    @app.post("/search", responses={**_error_responses(400), **errors})
    def search_post(
        image: Optional[UploadFile] = File(None, description="query crop (JPEG/PNG/...)"),
        query_id: Optional[int] = Form(None, ge=0, description="id of an indexed crop"),
        upload: Optional[str] = Form(None, description="token of a crop uploaded before "
                                     "(the ``upload`` of its response): search with it again"),
        attributes: str = Form("", description="task=value pairs, e.g. gender=female"),
        k: int = Form(10, ge=1, le=max_k),
        camera: str = Form("", description="cameras to search in, e.g. 1,3"),
        min_prob: Optional[float] = Form(None, ge=0.0, le=1.0, description=(
            "hide crops whose probability of a constraint is below this; default 0 for a "
            "description (every crop ranked by the product), 0.5 with an image")),
        rerank: bool = Form(False),
    ) -> dict[str, Any]:
        cameras = parse_cameras(camera)
        if min_prob is None:
            described = image is None and query_id is None
            min_prob = DESCRIPTION_MIN_PROB if described else IMAGE_MIN_PROB
        search.check_trained(parse_attributes(attributes))  # before an upload is embedded
        search.check_cameras(cameras)
        options = dict(attributes=attributes, cameras=cameras, min_prob=min_prob)
        if sum(x is not None for x in (image, query_id, upload)) > 1:
            raise QueryError("give one query: an image, a query_id or an upload token")
        token = None
        if image is not None:
            data = image.file.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, f"image larger than {max_upload_bytes} bytes")
            decoded = decode_upload(data, max_pixels)
            vector = batcher.embed(decoded)
            token = uploads.put(Upload(data, _media_type(data), vector))
        if upload is not None:
            kept = uploads.get(upload)
            if kept is None:
                raise QueryError(f"upload {upload!r} is no longer on the server (it keeps the "
                                 f"last {uploads.limit} uploads until it restarts): upload the "
                                 "crop again")
            vector, token = kept.vector, upload
        if token is not None:
            hits = search.by_vector(vector, k, rerank=rerank, **options)
            mode = "image"
        elif query_id is not None:
            hits = search.by_id(query_id, k, rerank=rerank, **options)
            mode, vector = "indexed image", search.index.vector(query_id)
        else:
            hits = search.by_attributes(attributes, k, cameras, min_prob)
            mode, vector = "attributes", None
        body = {"mode": mode, "count": len(hits), "results": _hits(hits),
                "calibration": search.calibration_status()}
        if vector is not None:
            body["query"] = {"person": search.query_person(vector)}
        if query_id is not None:
            e = search.index.entries([query_id])[0]
            body["query"].update(id=e.id, name=e.display_name, identity=e.identity,
                                 camera=e.camera, frame=e.frame)
        if token is not None:
            body["upload"] = token
        return body

    @app.get("/uploads/{token}", response_class=Response, responses={
        200: {"content": {"image/*": {}}, "description": "an uploaded query crop"},
        **_error_responses(404)})
    def uploaded(token: str) -> Response:
        kept = uploads.get(token)
        if kept is None:
            raise HTTPException(404, f"upload {token!r} is no longer on the server: upload the "
                                "crop again")
        return Response(kept.data, media_type=kept.media_type)

    @app.get("/search/attributes", responses=errors)
    def search_attributes(params: AttributeQuery = Query()) -> dict[str, Any]:  # type: ignore
        values = params.model_dump()
        constraints = {t.name: values[t.name] for t in TASKS if values[t.name] is not None}
        hits = search.by_attributes(constraints, values["k"], parse_cameras(values["camera"]),
                                    values["min_prob"])
        return {"mode": "attributes", "count": len(hits), "results": _hits(hits),
                "calibration": search.calibration_status()}

    @app.post("/verify", responses={**_error_responses(400), **errors})
    def verify(
        first: UploadFile = File(..., description="a crop (JPEG/PNG/...)"),
        second: UploadFile = File(..., description="another crop"),
        far: Optional[float] = Form(None, gt=0, le=1, description="operating point (FAR): "
                                    "1e-2, 1e-3 or 1e-4; default the service's"),
    ) -> dict[str, Any]:
        """Is this the same person? Distance, calibrated probability and decision."""
        crops = []
        for upload in (first, second):
            data = upload.file.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, f"image larger than {max_upload_bytes} bytes")
            crops.append(decode_upload(data, max_pixels))
        a, b = (batcher.embed(crop) for crop in crops)
        distance = float(pairwise_distance(a[None], b[None], search.index.metric)[0, 0])
        person = [search.query_person(v) for v in (a, b)]
        try:
            result = verdict(distance, search.calibration, far or search.far,
                             search.calibration_note, None if None in person else person)
        except CalibrationError as exc:
            raise QueryError(str(exc)) from None
        return result.as_dict()

    @app.get("/images/{image_id}", response_class=FileResponse, responses={
        200: {"content": {"image/*": {}}, "description": "the image file"},
        **_error_responses(404, 422)})
    def image_file(image_id: int) -> FileResponse:
        if not 0 <= image_id < len(search.index):
            raise HTTPException(404, f"no indexed image with id {image_id}")
        path = Path(search.index.entries([image_id])[0].path)
        if not path.is_file():
            raise HTTPException(404, f"image {image_id} was indexed but its file is gone")
        # Thumbnails are fetched again and again while browsing results: let the browser keep them.
        return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def serve(index: Path | str, host: str = "127.0.0.1", port: int = 8000,
          checkpoint: Path | str | None = None, device: str | None = None,
          max_batch: int = 16, backend: str = "auto",
          log: Callable[[str], None] = print, calibration: Path | str | None = None,
          far: float = DEFAULT_FAR) -> None:
    """Open the index and run the app with uvicorn until interrupted; ``log`` gets the
    backend chosen (:mod:`attreid.inference.backends`) and the calibration's state."""
    import uvicorn

    search = open_search(index, checkpoint, device, backend, calibration, far)
    if search.choice is not None:
        log(search.choice.describe())
    log(describe_calibration(search))
    app = create_app(search, max_batch=max_batch)
    uvicorn.run(app, host=host, port=port, log_level="info")
