"""The search service: a FastAPI app over a :class:`GallerySearch`, with a web page.

Routes (OpenAPI docs at ``/docs`` and ``/redoc``, served from the ``fastapi-offline``
package's files: no CDN):

* ``POST /search`` — multipart form: ``image`` (a crop) or ``query_id`` (an indexed crop, left
  out of its own results), ``attributes`` (``gender=female,backpack=yes`` or a JSON object),
  ``k``, ``camera`` (comma-separated camera numbers to search in), ``min_prob`` (default 0 for
  an attribute query: every crop ranked by the product of its probabilities; 0.5 with an image),
  ``rerank``, ``description`` (the person in words, read by :mod:`attreid.search.describe`
  and joined with ``attributes``; the response's ``description`` shows the reading, words it
  cannot map are a 422 naming them). With neither image nor query_id it is an attribute query.
* ``GET /search/attributes`` — one query parameter per attribute task (``?gender=female``),
  plus ``k``, ``camera``, ``min_prob``; unknown parameters or values are a 422.
* ``POST /verify`` — multipart form: ``first`` and ``second`` (two crops), ``far`` (the operating
  point, default the service's): their distance, P(same person) and the decision, or
  ``"calibrated": false`` with the reason when the service has no calibration.

Search results of image queries carry ``probability`` (P(same person), calibrated on labelled
pairs by ``attreid calibrate``) and ``same`` (it passes the operating point); both are null when
the service is uncalibrated (``calibration`` in every search response says why) or re-ranked
(``score`` says ``re-ranked distance``: another scale).
* ``GET /images/{id}`` — the file of an indexed crop (only indexed files are served), with an
  ETag naming the index build: browsers revalidate (``no-cache``, a 304 when unchanged), so an id
  of a rebuilt index never shows a cached crop of the old one.
* ``GET /api/schema`` — the attribute tasks the index's model was trained on and their values
  (the page builds its chips from it; no task: a re-ID-only model, search by image only).
* ``GET /healthz`` — status, number of images, checkpoint, trained tasks, and the index
  generation in service (``generation``, ``build``, ``reload_error``).
* ``POST /reload`` — look for a new generation of the index folder now (see below).

The service follows its index folder (:class:`~attreid.search.live.LiveSearch`): crops added by
``attreid index add`` or a folder rebuilt by ``attreid index build --overwrite`` are picked up
on the first request after ``watch_s`` seconds (or at ``POST /reload``), without a restart. Each
request is answered from one generation; until the swap the old one answers consistently (its
queries never see rows beyond the vectors it holds).

A task the model was trained without (its training data had no label for it) is never shown
nor searchable: a constraint on it is a 422 naming it (:meth:`GallerySearch.check_trained`),
results describe the trained tasks only.
* The investigator's workspace (cases, timelines, a hit's frame and track, comparing two
  hits): :mod:`attreid.search.workspace`.
* ``GET /`` — the web page (static files shipped in ``attreid/search/web``; no CDN).

Uploads are checked before decoding: at most ``max_upload_bytes`` (by Content-Length, and by
counting the bytes of a chunked body as they arrive), one of the raster formats of
:data:`UPLOAD_FORMATS`, and at most ``max_pixels`` pixels (read from the header, so a
decompression bomb is refused before it is decompressed). Errors are JSON ``{"detail": ...}``:
a message, or FastAPI's list of field errors (documented in the OpenAPI schema).
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations at run time,
# and the fastapi types are imported inside create_app (an optional dependency).
import sqlite3
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np

from attreid.inference.attribute_confidence import attribute_summary
from attreid.inference.calibration import DEFAULT_FAR, DEFAULT_FPIR, CalibrationError
from attreid.inference.verdicts import compare_embeddings
from attreid.schema import TASKS
from attreid.search.batching import EmbeddingBatcher
from attreid.search.describe import Description, with_description
from attreid.search.hits import confidence_of
from attreid.search.http import (
    MAX_K,
    MAX_PIXELS,
    MAX_QUERY_CROPS,
    MAX_UPLOAD_BYTES,
    BodyLimit,
    decode_upload,
    error_responses,
    etag_matches,
    hits_json,
    image_etag,
    media_type,
    parse_cameras,
    parse_frames,
    parse_ids,
)
from attreid.search.index import GalleryIndexError
from attreid.search.live import LiveSearch
from attreid.search.query import (
    DESCRIPTION_MIN_PROB,
    IMAGE_MIN_PROB,
    GallerySearch,
    QueryError,
    parse_attributes,
    pool_vectors,
)
from attreid.search.results import by_time, group_tracks, tracks_json
from attreid.search.uploads import Upload, UploadStore
from attreid.search.workspace import add_workspace_routes

WEB_DIR = Path(__file__).parent / "web"
def _fastapi() -> Any:
    try:
        import fastapi
    except ImportError as exc:
        raise ImportError("the search service needs FastAPI and uvicorn: "
                          "pip install 'attreid[serve]'") from exc
    return fastapi


def open_search(index: Path | str, checkpoint: Path | str | None = None,
                device: str | None = None, backend: str = "auto",
                calibration: Path | str | None = None, far: float = DEFAULT_FAR,
                model: bool = True, fpir: float = DEFAULT_FPIR) -> GallerySearch:
    """:meth:`GallerySearch.open`, with any damage of the index folder reported as a
    :class:`GalleryIndexError` naming it (e.g. a metadata table that lacks a key).

    Raises:
        GalleryIndexError: the index is missing, damaged, or not made by the checkpoint.
    """
    try:
        return GallerySearch.open(index, checkpoint, device, backend, calibration, far, model,
                                  fpir)
    except (GalleryIndexError, CalibrationError):
        raise
    except (LookupError, TypeError, ValueError, OSError, RuntimeError, sqlite3.Error) as exc:
        raise GalleryIndexError(f"{index}: damaged index, cannot open it ({type(exc).__name__}: "
                                f"{exc}); rebuild it with `attreid index build`") from exc


def _respond(search: GallerySearch, mode: str, hits: list, order: str, group: bool,
             offset: int, vector: Any, **counts: int | None) -> dict[str, Any]:
    """The JSON of a search: its hits (by time, grouped into tracks when asked), what the
    probabilities mean (``attribute_confidence``: when an attribute value is sure), the
    query's P(person), the counts (``total``: crops passing the filters of a description,
    ``allowed``: those an image query's filters let through, null without one; ``hidden``:
    crops a hard filter took away) and the index ``generation`` that answered."""
    if order == "time":
        hits = by_time(hits)
    body: dict[str, Any] = {"mode": mode, "count": len(hits), "offset": offset, **counts,
                            "generation": int(search.index.info.get("generation", 0)),
                            "calibration": search.calibration_status()}
    confidence = confidence_of(search.calibration)
    body["attribute_confidence"] = attribute_summary(confidence)
    if group:
        tracks = group_tracks(hits, search.index.vector, track_distance(search, hits))
        body["results"] = tracks_json(tracks, lambda found: hits_json(found, confidence))
        body["count"] = len(tracks)
    else:
        body["results"] = hits_json(hits, confidence)
    if vector is not None:
        body["query"] = {"person": search.query_person(vector)}
    return body


def _read_as(body: dict[str, Any], read: Description | None) -> dict[str, Any]:
    """``body`` with ``description``: how the text was read (absent without one)."""
    if read is not None:
        body["description"] = {"text": read.text, "attributes": read.constraints,
                               "reading": [{"words": w, "as": a} for w, a in read.reading]}
    return body


def track_distance(search: GallerySearch, hits: list) -> float:
    """Largest embedding distance within a track: the calibration's threshold at FAR 1e-3,
    else the median query distance of the hits (or 0 for a description without one)."""
    if search.calibration is not None:
        return search.calibration.threshold(1e-3)
    return float(np.median([h.distance for h in hits if h.distance is not None] or [0.0]))


def describe_calibration(search: GallerySearch, rerank: bool = False) -> str:
    """One line: the operating point hits are marked at, or why there is none."""
    status = search.calibration_status()
    if rerank:
        return ("same-person probability: none for re-ranked results (their distances are on "
                "another scale)")
    if not status["calibrated"]:
        return f"same-person probability: {status['note']}"
    lines = [f"same-person probability: {status['method']} calibration; {status['rule']}"]
    lines += [f"warning: {why}" for why in ([status["unsupported"]] if status["unsupported"]
                                            else []) + status["drift"]]
    return "\n".join(lines)


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
    fields["frames"] = (str, Field("", description="frame range FIRST-LAST, e.g. 1000-5000"))
    fields["offset"] = (int, Field(0, ge=0, description="skip this many results (paging)"))
    fields["order"] = (Literal["rank", "time"], Field("rank", description="rank, or by "
                                                      "camera and frame"))
    fields["group"] = (bool, Field(False, description="one row per track"))
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
               max_pixels: int = MAX_PIXELS, max_k: int = MAX_K, max_batch: int = 16,
               watch_s: float = 1.0) -> Any:
    """The FastAPI app serving ``search`` (routes: the module docstring). Uploads of concurrent
    requests share forward passes of up to ``max_batch`` crops (1: one pass per request;
    :class:`~attreid.search.batching.EmbeddingBatcher`). A new generation of the index folder
    is looked for at most every ``watch_s`` s (0: every request) and at ``POST /reload``.
    Descriptions rank from columns held in memory (:meth:`GallerySearch.hold_columns`)."""
    search.hold_columns()
    fastapi = _fastapi()
    from fastapi import File, Form, HTTPException, Query, Request, UploadFile
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    app = _new_app(fastapi, title="attreid search",
                   description="Find a person in a gallery of crops by example image and/or "
                   "by attributes.")
    batcher = EmbeddingBatcher(search.embed_many, max_batch)  # the only caller of the model
    uploads = UploadStore()
    live = LiveSearch(search, watch_s)  # routes take live.current() once, never `search`
    trained = search.index.trained_tasks  # the same in every generation (reopened checks)
    AttributeQuery = _attribute_params_model(max_k, trained)

    @app.exception_handler(QueryError)
    async def _query_error(_: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    # the upload plus room for the other form fields and the multipart framing
    app.add_middleware(BodyLimit, limit=max_upload_bytes + 65536, upload_limit=max_upload_bytes)
    errors = error_responses(413, 422)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """The generation in service: ``images`` (crops), ``generation`` (adds since the
        build), ``build`` (a token naming the build), ``reload_error`` (why a newer one could
        not be opened, or null)."""
        search = live.current().search
        info = search.index.info
        return {"status": "ok", "images": len(search.index), "index": info["kind"],
                "metric": info["metric"], "checkpoint_sha256": info["checkpoint_sha256"],
                "trained_tasks": list(trained), "calibration": search.calibration_status(),
                **live.status()}

    @app.post("/reload")
    def reload() -> dict[str, Any]:
        """Look for a new generation of the index folder now and serve it: ``reloaded`` says
        whether one was opened; ``reload_error`` why a newer one could not be (the old one
        then stays in service)."""
        reloaded = live.reload()
        return {"reloaded": reloaded, "images": len(live.current().search.index),
                **live.status()}

    @app.get("/api/schema")
    def schema() -> dict[str, Any]:
        """The searchable tasks (those the model was trained on) and their values; the tasks
        it was trained without are listed in ``untrained`` (no chips, not searchable)."""
        search = live.current().search
        return {"tasks": [{"name": t.name, "values": list(t.classes)} for t in TASKS
                          if t.name in trained],
                "untrained": [t.name for t in TASKS if t.name not in trained],
                "cameras": search.index.cameras(), "max_k": max_k, "images": len(search.index)}

    @app.post("/search", responses={**error_responses(400), **errors})
    def search_post(
        image: list[UploadFile] = File([], description="query crop(s) (JPEG/PNG/...); "
                                       "several crops of one person are pooled (mean)"),
        query_id: Optional[int] = Form(None, ge=0, description="id of an indexed crop"),
        upload: Optional[str] = Form(None, description="token(s) of crops uploaded before "
                                     "(the ``upload`` of a response; comma-separated)"),
        attributes: str = Form("", description="task=value pairs, e.g. gender=female"),
        description: str = Form("", description="the person in words, e.g. 'woman with a "
                                "backpack' (joined with attributes; the reading is returned)"),
        k: int = Form(10, ge=1, le=max_k),
        offset: int = Form(0, ge=0, description="skip this many results (paging)"),
        camera: str = Form("", description="cameras to search in, e.g. 1,3"),
        frames: str = Form("", description="frame range FIRST-LAST, e.g. 1000-5000"),
        constraints: Literal["soft", "hard"] = Form("soft", description=(
            "with a query crop: soft re-weights by the attributes (nothing hidden), hard "
            "hides crops below min_prob")),
        min_prob: Optional[float] = Form(None, ge=0.0, le=1.0, description=(
            "hide crops whose probability of a constraint is below this; default 0 for a "
            "description (every crop ranked by the product), 0.5 for hard constraints")),
        rerank: bool = Form(False),
        order: Literal["rank", "time"] = Form("rank", description="rank, or by camera and "
                                               "frame (a timeline)"),
        group: bool = Form(False, description="one row per track (same camera, near frames "
                           "and embeddings)"),
        right: str = Form("", description="ids of results marked right: refine the query"),
        wrong: str = Form("", description="ids of results marked wrong: refine the query and "
                          "leave them out"),
    ) -> dict[str, Any]:
        """Search by crop(s), indexed crop, upload token(s) and/or attributes. At most
        :data:`~attreid.search.http.MAX_QUERY_CROPS` (16) query crops, uploaded and named by
        token together: more is a 422 naming the limit, before any is decoded (each costs a
        decode and a forward pass; 16 crops of one person are more than a mean needs)."""
        search = live.current().search
        attributes, read = with_description(attributes, description)
        cameras, frame_range = parse_cameras(camera), parse_frames(frames)
        tokens = [t.strip() for t in (upload or "").split(",") if t.strip()]
        if len(image) + len(tokens) > MAX_QUERY_CROPS:
            raise QueryError(f"image: {len(image) + len(tokens)} query crops, at most "
                             f"{MAX_QUERY_CROPS} per search (uploads and tokens together)")
        described = not image and query_id is None and not tokens
        if min_prob is None:
            min_prob = DESCRIPTION_MIN_PROB if described else IMAGE_MIN_PROB
        search.check_trained(parse_attributes(attributes))  # before an upload is embedded
        search.check_cameras(cameras)
        search.check_frames(frame_range)
        if sum(bool(x) for x in (image, query_id is not None, tokens)) > 1:
            raise QueryError("give one query: image(s), a query_id or upload token(s)")
        if described:
            hits = search.by_attributes(attributes, k, cameras, min_prob, frame_range, offset)
            total, hidden = search.count(attributes, cameras, min_prob, frame_range)
            return _read_as(_respond(search, "attributes", hits, order, group, offset, None,
                                     total=total, hidden=hidden), read)
        vector, tokens = _query_vector(search, image, tokens, query_id)
        marked = parse_ids(right), parse_ids(wrong)
        vector = search.refine(vector, *marked) if any(marked) else vector
        options = dict(attributes=attributes, cameras=cameras, min_prob=min_prob,
                       frames=frame_range, hard=constraints == "hard", rerank=rerank)
        depth = k + offset + len(marked[1])
        found = search.by_vector(vector, depth, exclude=query_id, **options)
        hits = [h for h in found if h.entry.id not in set(marked[1])][offset:offset + k]
        hidden = search.count(attributes, cameras, min_prob, frame_range)[1] \
            if constraints == "hard" else 0
        body = _respond(search, "image" if query_id is None else "indexed image", hits, order,
                        group, offset, vector, hidden=hidden, allowed=found.allowed)
        if query_id is not None:
            e = search.index.entries([query_id])[0]
            body["query"].update(id=e.id, name=e.display_name, identity=e.identity,
                                 camera=e.camera, frame=e.frame)
        if tokens:
            body["upload"] = ",".join(tokens)
        return _read_as(body, read)

    def _query_vector(search: GallerySearch, images: list, tokens: list[str],
                      query_id: Optional[int]) -> tuple:
        """The query embedding (pooled over several crops) and the upload tokens naming it."""
        if query_id is not None:
            try:
                return search.index.vector(query_id), []
            except KeyError as exc:
                raise QueryError(str(exc.args[0])) from None
        kept = []
        for item in images:
            data = item.file.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, f"image larger than {max_upload_bytes} bytes")
            vector = batcher.embed(decode_upload(data, max_pixels))
            kept.append((uploads.put(Upload(data, media_type(data), vector)), vector))
        for token in tokens:
            found = uploads.get(token)
            if found is None:
                raise QueryError(f"upload {token!r} is no longer on the server (it keeps the "
                                 f"last {uploads.limit} uploads until it restarts): upload the "
                                 "crop again")
            kept.append((token, found.vector))
        return pool_vectors(np.stack([v for _, v in kept])), [t for t, _ in kept]

    @app.get("/uploads/{token}", response_class=Response, responses={
        200: {"content": {"image/*": {}}, "description": "an uploaded query crop"},
        **error_responses(404)})
    def uploaded(token: str) -> Response:
        kept = uploads.get(token)
        if kept is None:
            raise HTTPException(404, f"upload {token!r} is no longer on the server: upload the "
                                "crop again")
        return Response(kept.data, media_type=kept.media_type)

    @app.get("/search/attributes", responses=errors)
    def search_attributes(params: AttributeQuery = Query()) -> dict[str, Any]:  # type: ignore
        search = live.current().search
        values = params.model_dump()
        constraints = {t.name: values[t.name] for t in TASKS if values[t.name] is not None}
        cameras, frame_range = parse_cameras(values["camera"]), parse_frames(values["frames"])
        hits = search.by_attributes(constraints, values["k"], cameras, values["min_prob"],
                                    frame_range, values["offset"])
        total, hidden = search.count(constraints, cameras, values["min_prob"], frame_range)
        return _respond(search, "attributes", hits, values["order"], values["group"],
                        values["offset"], None, total=total, hidden=hidden)

    @app.post("/verify", responses={**error_responses(400), **errors})
    def verify(
        first: UploadFile = File(..., description="a crop (JPEG/PNG/...)"),
        second: UploadFile = File(..., description="another crop"),
        far: Optional[float] = Form(None, gt=0, le=1, description="operating point (FAR): "
                                    "1e-2, 1e-3 or 1e-4; default the service's"),
    ) -> dict[str, Any]:
        """Is this the same person? Distance, calibrated probability and decision."""
        search = live.current().search
        crops = []
        for name, upload in (("first", first), ("second", second)):
            data = upload.file.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, f"image larger than {max_upload_bytes} bytes")
            crops.append(decode_upload(data, max_pixels, name))
        a, b = (batcher.embed(crop) for crop in crops)
        try:
            result = compare_embeddings(a, b, search.index.metric, search.calibration,
                                        far or search.far, search.calibration_note)
        except CalibrationError as exc:
            raise QueryError(str(exc)) from None
        return {**result.as_dict(), "calibration": search.calibration_status()}

    @app.get("/images/{image_id}", response_class=FileResponse, responses={
        200: {"content": {"image/*": {}}, "description": "the image file"},
        **error_responses(404, 422)})
    def image_file(image_id: int, request: Request) -> Response:
        """The crop's file. Its ETag names the index build, the id and the file's mtime and
        size; ``Cache-Control: no-cache``: a browser keeps the thumbnail but asks again (a
        304 without a body while it is the same), so after ``index build --overwrite`` an id
        shows the new build's crop, never a cached one of the old."""
        held = live.current()
        index = held.search.index
        if not 0 <= image_id < len(index):
            raise HTTPException(404, f"no indexed image with id {image_id}")
        path = Path(index.entries([image_id])[0].path)
        try:
            stat = path.stat() if path.is_file() else None
        except OSError:
            stat = None
        if stat is None:
            raise HTTPException(404, f"image {image_id} was indexed but its file is gone")
        etag = image_etag(held.token, image_id, stat.st_mtime_ns, stat.st_size)
        headers = {"Cache-Control": "no-cache", "ETag": etag}
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return FileResponse(path, headers=headers)

    def vector_of_upload(token: str) -> np.ndarray:
        found = uploads.get(token)
        if found is None:
            raise QueryError(f"upload {token!r} is no longer on the server: upload it again")
        return found.vector

    add_workspace_routes(app, live, vector_of_upload, errors)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def serve(index: Path | str, host: str = "127.0.0.1", port: int = 8000,
          checkpoint: Path | str | None = None, device: str | None = None,
          max_batch: int = 16, backend: str = "auto",
          log: Callable[[str], None] = print, calibration: Path | str | None = None,
          far: float = DEFAULT_FAR, fpir: float = DEFAULT_FPIR) -> None:
    """Open the index and run the app with uvicorn until interrupted; ``log`` gets the
    backend chosen (:mod:`attreid.inference.backends`) and the calibration's state."""
    import uvicorn

    search = open_search(index, checkpoint, device, backend, calibration, far, fpir=fpir)
    if search.choice is not None:
        log(search.choice.describe())
    log(describe_calibration(search))
    app = create_app(search, max_batch=max_batch)
    uvicorn.run(app, host=host, port=port, log_level="info")
