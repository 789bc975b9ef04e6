"""A hit in its context: the full frame it was cut from with its box drawn, and the other crops
of its track (to step through the seconds around it).

Crops cut from footage keep a reduced copy of their frame (``attreid ingest``,
:mod:`attreid.footage.gallery`: at most 640 pixels wide) and their box in the source's pixels;
the box is scaled to the stored frame by the source's frame size (recorded at ingest; for an
index ingested before that, by the frame file itself when it was not reduced).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from attreid.case.report import BOX_COLOUR
from attreid.search.constraints import QueryError
from attreid.search.sightings import Sighting, iso_time

REDUCED_WIDTH = 640
"""The ingest's frame width (``attreid.footage.gallery.FRAME_SIDE``): a stored frame of this
width may have been reduced, a narrower one was not."""


class ContextError(QueryError):
    """A crop has no frame to show: not cut from footage, or its frame file is gone."""


def sighting_of(index: Any, image_id: int) -> Sighting:
    """The :class:`Sighting` of an indexed crop.

    Raises:
        ContextError: the id is not in the index, or the crop was not cut from footage.
    """
    if not 0 <= int(image_id) < len(index):
        raise ContextError(f"no indexed image with id {image_id}")
    found = index.sightings([int(image_id)]).get(int(image_id))
    if found is None:
        raise ContextError(f"image {image_id} was not cut from footage (an index of crop "
                           "folders has no frames): only crops from attreid ingest have one")
    return found


def source_size(index: Any, sighting: Sighting) -> tuple[int, int] | None:
    """(width, height) of the source's frames as ingest recorded them; None when unknown."""
    for summary in index.ingested().values():
        if summary.get("path") == sighting.source and summary.get("size"):
            width, height = summary["size"]
            return int(width), int(height)
    return None


def box_in_frame(index: Any, sighting: Sighting, frame_width: int) -> list[float] | None:
    """The sighting's box in the pixels of its stored frame, ``frame_width`` wide (scaled by
    the source's frame size; a frame narrower than the reduction was stored as it was); None
    when the scale is unknown."""
    size = source_size(index, sighting)
    original = size[0] if size else (frame_width if frame_width < REDUCED_WIDTH else None)
    if not original:
        return None
    return [v * frame_width / original for v in sighting.box]


def frame_with_box(index: Any, image_id: int, width: int = 4) -> bytes:
    """The stored frame of a crop as JPEG bytes, with the crop's box drawn (``width`` pixels).

    Raises:
        ContextError: no sighting (see :func:`sighting_of`), or its frame file is missing or
            unreadable (named).
    """
    from PIL import Image, ImageDraw

    seen = sighting_of(index, image_id)
    if not seen.frame_image:
        raise ContextError(f"image {image_id}: its frame was not kept at ingest")
    path = Path(seen.frame_image)
    try:
        with Image.open(path) as opened:
            frame = opened.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ContextError(f"image {image_id}: its frame {path} cannot be read ({exc})") from None
    box = box_in_frame(index, seen, frame.width)
    if box is not None:
        ImageDraw.Draw(frame).rectangle(box, outline=BOX_COLOUR, width=width)
    out = io.BytesIO()
    frame.save(out, format="JPEG", quality=90)
    return out.getvalue()


def track_context(index: Any, image_id: int) -> dict[str, Any]:
    """The crop's place in its track: ``track`` (its crops in time order, each with id, time
    and frame file or null), ``position`` of this crop, ``previous`` / ``next`` ids (null at
    the ends), and the sighting's camera, source, time and box.

    Raises:
        ContextError: no sighting (see :func:`sighting_of`).
    """
    seen = sighting_of(index, image_id)
    ids = index.track(int(image_id))
    sightings = index.sightings(ids)
    position = ids.index(int(image_id))
    return {"id": int(image_id), "camera_name": seen.camera_name, "source": seen.source,
            "time": iso_time(seen.time), "box": [round(v, 2) for v in seen.box],
            "track_id": seen.track, "position": position,
            "previous": ids[position - 1] if position > 0 else None,
            "next": ids[position + 1] if position + 1 < len(ids) else None,
            "track": [{"id": i, "time": iso_time(sightings[i].time),
                       "has_frame": bool(sightings[i].frame_image)} for i in ids]}
