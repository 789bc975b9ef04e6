"""The investigator's workspace in the service: cases, the timeline of a person, a hit's
context and comparing two hits. :func:`add_workspace_routes` adds these routes to the app of
:func:`attreid.search.service.create_app`:

* ``GET /cases``, ``POST /cases`` (``name``) — the cases of the case file beside the index
  (:func:`case_file`), and a new one (it records the model, calibration and operating point).
* ``GET /cases/{name}`` — the case: context, queries, notes, ``timeline`` (confirmed sightings
  in time order) and ``rejected``.
* ``POST /cases/{name}/marks`` (``image_id``, ``mark`` = right / wrong / clear, ``note``, and as
  found: ``distance``, ``probability``, ``query``) — keeps a snapshot of the sighting.
* ``POST /cases/{name}/notes`` (``text``), ``POST /cases/{name}/queries`` (``kind``,
  ``detail`` JSON) — a note, a query run for the case.
* ``GET /cases/{name}/export?format=html|csv|json`` — the record to hand over
  (:mod:`attreid.case.report`); the HTML holds every crop and frame.
* ``POST /timeline`` (``query_id`` or ``upload`` token, ``depth``, ``max_distance``) — every
  crop of the person in the whole gallery as visits in time order
  (:func:`~attreid.search.timeline.where_else`), with camera lanes.
* ``GET /context/{id}`` and ``GET /context/{id}/frame`` — the hit's track (previous / next
  crop) and its full frame with the box drawn (:mod:`attreid.search.context`).
* ``POST /compare`` (``first_id``, ``second_id``, ``far``) — two indexed crops: distance,
  P(same), both P(person) and the verdict, as ``POST /verify`` does for uploads (one-to-one:
  a pair as likely the same person as not), and ``as_search_hit``: the P(same) and mark the
  pair gets as a hit of a search in this gallery (what a result card shows).
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations at run time.

import json
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from attreid.case import CaseError, CaseStore, case_csv, case_html, case_json
from attreid.case.report import safe_stem
from attreid.case.store import Case
from attreid.inference.calibration import CalibrationError
from attreid.inference.verdicts import compare_embeddings, search_verdict
from attreid.search.constraints import QueryError, json_object
from attreid.search.context import box_in_frame, frame_with_box, sighting_of, track_context
from attreid.search.http import error_responses, hits_json
from attreid.search.sightings import iso_time
from attreid.search.timeline import WHERE_ELSE_DEPTH, counting_rule, lanes, where_else

CASES_SUFFIX = ".cases.sqlite"


def case_file(index_root: Path | str) -> Path:
    """The case file of an index folder: beside it, ``INDEX.cases.sqlite`` (outside the folder,
    so a rebuilt index keeps its cases)."""
    root = Path(index_root).resolve()
    return root.parent / f"{root.name}{CASES_SUFFIX}"


def work_context(search: Any) -> dict[str, Any]:
    """What a case was worked with: the index, the model's sha256, the calibration and the
    operating point (its rule)."""
    info, status = search.index.info, search.calibration_status()
    out = {"index": str(Path(search.index.root).absolute()),
           "checkpoint_sha256": info.get("checkpoint_sha256"), "metric": info.get("metric"),
           "calibrated": status["calibrated"]}
    if status["calibrated"]:
        out.update(calibration=status["data"], method=status["method"], fpir=status["fpir"],
                   operating_point=status["rule"])
    else:
        out["calibration"] = status["note"]
    return out


def snapshot(search: Any, image_id: int, found: dict[str, Any]) -> dict[str, Any]:
    """A sighting's snapshot for a case: the crop's fields (path, camera, frame, time, track,
    box, frame file and the box in its pixels, attributes) and ``found`` (distance, P(same),
    query: how it was found).

    Raises:
        QueryError: no crop with that id.
    """
    try:
        entry = search.index.entries([int(image_id)])[0]
    except KeyError:
        raise QueryError(f"no indexed image with id {image_id} (ids 0..{len(search.index) - 1})"
                         ) from None
    # full paths: a relative one in the index is relative to where the service runs, as
    # GET /images/{id} reads it; the record must name the file wherever it is read
    out: dict[str, Any] = {"id": entry.id, "path": _full(entry.path), "name": entry.display_name,
                           "camera": entry.camera, "frame": entry.frame,
                           "identity": entry.identity, "attributes": entry.attributes(),
                           **found}
    seen = search.index.sightings([entry.id]).get(entry.id)
    if seen is not None:
        out.update(camera_name=seen.camera_name, source=seen.source, seconds=seen.time,
                   time=iso_time(seen.time), track=seen.track, box=list(seen.box),
                   frame_image=_full(seen.frame_image) if seen.frame_image else None,
                   frame_box=_frame_box(search, seen))
    return out


def _full(path: str) -> str:
    return str(Path(path).absolute())


def _frame_box(search: Any, seen: Any) -> Optional[list]:
    """The box in the stored frame's pixels (None when the frame or its scale is unknown)."""
    from PIL import Image

    if not seen.frame_image:
        return None
    try:
        with Image.open(seen.frame_image) as frame:
            width = frame.width
    except OSError:
        return None
    box = box_in_frame(search.index, seen, width)
    return None if box is None else [round(v, 2) for v in box]


def case_summary(case: Case) -> dict[str, Any]:
    return {"name": case.name, "created": case.created, "confirmed": len(case.confirmed()),
            "rejected": len(case.rejected()), "notes": len(case.notes)}


def add_workspace_routes(app: Any, live: Any, vector_of_upload: Callable[[str], np.ndarray],
                         errors: dict[int, Any]) -> None:
    """Add the routes of the module docstring to ``app``. ``live``: the service's
    :class:`~attreid.search.live.LiveSearch`; ``vector_of_upload``: an upload token's
    embedding (raises :class:`QueryError` when gone)."""
    from fastapi import Form, HTTPException, Query
    from fastapi.responses import Response

    posted = {**errors, **error_responses(400, 404, 422)}  # a form; an unknown case or crop
    read = error_responses(404, 422)

    def guarded(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except CaseError as exc:
            status = 404 if str(exc).startswith("no case") else 422
            raise HTTPException(status, str(exc)) from None

    def store() -> CaseStore:
        root = live.current().search.index.root
        return guarded(lambda: CaseStore(case_file(root)))

    @app.get("/cases", responses=error_responses(422))
    def cases() -> dict[str, Any]:
        """The cases of this index's case file, oldest first."""
        held = store()
        return {"file": str(held.path),
                "cases": [case_summary(held.get(n)) for n in guarded(held.names)]}

    @app.post("/cases", status_code=201, responses=posted)
    def new_case(name: str = Form(..., description="the case's name (1-80 characters)")
                 ) -> dict[str, Any]:
        search = live.current().search
        return case_json(guarded(lambda: store().create(name, work_context(search))))

    @app.get("/cases/{name}", responses=read)
    def get_case(name: str) -> dict[str, Any]:
        return case_json(guarded(lambda: store().get(name)))

    @app.post("/cases/{name}/marks", responses=posted)
    def mark(name: str, image_id: int = Form(..., ge=0),
             mark: str = Form(..., description="right, wrong or clear"),
             note: str = Form(""), distance: Optional[float] = Form(None),
             probability: Optional[float] = Form(None, ge=0, le=1),
             same: Optional[bool] = Form(None, description="the mark the search gave it"),
             query: str = Form("", description="how it was found, e.g. 'indexed image 12'")
             ) -> dict[str, Any]:
        """Mark an indexed crop right (the person) or wrong (not), or clear its mark."""
        search = live.current().search
        shot = snapshot(search, image_id, {"distance": distance, "probability": probability,
                                           "same": same, "query": query or None})
        if mark == "clear":
            return {"cleared": guarded(lambda: store().unmark(name, shot["path"]))}
        kept = guarded(lambda: store().mark(name, shot, mark, note))
        return {"path": kept.path, "mark": kept.mark, "note": kept.note, "marked_at": kept.at}

    @app.post("/cases/{name}/notes", responses=posted)
    def note(name: str, text: str = Form(...)) -> dict[str, Any]:
        return {"notes": guarded(lambda: store().add_note(name, text))}

    @app.post("/cases/{name}/queries", responses=posted)
    def query(name: str, kind: str = Form(...), detail: str = Form("{}")) -> dict[str, Any]:
        parsed = json_object(detail, "detail")
        return {"queries": guarded(lambda: store().add_query(name, kind, parsed))}

    @app.get("/cases/{name}/export", response_class=Response, responses={
        200: {"content": {"text/html": {}, "text/csv": {}, "application/json": {}},
              "description": "the case as one file (an attachment)"}, **read})
    def export(name: str, format: str = Query("html", pattern="^(html|csv|json)$")
               ) -> Response:
        """The case as one file to hand over (HTML: self-contained, crops and frames inside)."""
        case = guarded(lambda: store().get(name))
        body, media = {"html": (case_html, "text/html; charset=utf-8"),
                       "csv": (case_csv, "text/csv; charset=utf-8"),
                       "json": (lambda c: json.dumps(case_json(c), indent=1),
                                "application/json")}[format]
        stem = safe_stem(case.name)
        return Response(body(case), media_type=media, headers={
            "Content-Disposition": f'attachment; filename="{stem}.{format}"'})

    @app.post("/timeline", responses=posted)
    def timeline(query_id: Optional[int] = Form(None, ge=0), upload: str = Form(""),
                 depth: int = Form(WHERE_ELSE_DEPTH, ge=1, le=100_000),
                 max_distance: Optional[float] = Form(None, gt=0)) -> dict[str, Any]:
        """Where else the query's person is, in the whole gallery, in time order."""
        search = live.current().search
        if (query_id is None) == (not upload.strip()):
            raise QueryError("give one query: query_id or upload")
        if query_id is not None:
            try:
                vector = search.index.vector(query_id)
            except KeyError as exc:
                raise QueryError(str(exc.args[0])) from None
        else:
            vector = vector_of_upload(upload.strip())
        found, looked = where_else(search, vector, query_id, depth, max_distance)
        confidence = search.calibration.attributes if search.calibration else None
        body: dict[str, Any] = {
            "looked_at": looked, "cameras": lanes(found),
            "visits": [v.as_dict(lambda hits: hits_json(list(hits), confidence))
                       for v in found],
            "rule": counting_rule(search, max_distance)}
        if query_id is not None:
            body["query"] = hits_json([_self_hit(search, query_id)], confidence)[0]
        return body

    @app.get("/context/{image_id}", responses=read)
    def context(image_id: int) -> dict[str, Any]:
        """The crop's track: its crops in time order, previous and next."""
        try:
            return track_context(live.current().search.index, image_id)
        except QueryError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/context/{image_id}/frame", response_class=Response, responses={
        200: {"content": {"image/jpeg": {}}, "description": "the frame, its box drawn"}, **read})
    def frame(image_id: int) -> Response:
        """The full frame the crop was cut from, its box drawn."""
        try:
            data = frame_with_box(live.current().search.index, image_id)
        except QueryError as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    @app.post("/compare", responses=posted)
    def compare(first_id: int = Form(..., ge=0), second_id: int = Form(..., ge=0),
                far: Optional[float] = Form(None, gt=0, le=1)) -> dict[str, Any]:
        """Two indexed crops: the same person? (as POST /verify, for result cards)."""
        search = live.current().search
        vectors = []
        for image_id in (first_id, second_id):
            try:
                vectors.append(search.index.vector(image_id))
            except KeyError as exc:
                raise QueryError(str(exc.args[0])) from None
        try:
            result = compare_embeddings(*vectors, search.index.metric, search.calibration,
                                        far or search.far, search.calibration_note)
        except CalibrationError as exc:
            raise QueryError(str(exc)) from None
        body = {**result.as_dict(), "first": {"id": first_id, "url": f"/images/{first_id}"},
                "second": {"id": second_id, "url": f"/images/{second_id}"},
                "calibration": search.calibration_status()}
        if search.calibration is not None and search.point is not None:
            # the same pair as a search hit (the P(same) a card shows): under the prior of a
            # search among this gallery's crops, not one-to-one's "as likely as not"
            hit = search_verdict(result.distance, search.calibration, search.point,
                                 person=result.person)
            body["as_search_hit"] = {"probability": hit.probability, "same": hit.same,
                                     "rule": search.point.rule()}
        return body


def _self_hit(search: Any, image_id: int) -> Any:
    from attreid.search.hits import Hit

    return Hit(search.index.entries([image_id])[0], 0.0, None)


__all__ = ["add_workspace_routes", "case_file", "sighting_of", "snapshot", "work_context"]
