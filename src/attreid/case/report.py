"""A case as a record to hand over: one folder with a self-contained HTML report (every crop
and frame thumbnail embedded, box drawn; no network, no other file needed), a CSV and a JSON
with the full paths, times, cameras, boxes and marks.

The confirmed sightings (marked right) make the timeline: wall-clock order (frame order for
crops without a clock), with the camera named at each change. Rejected ones are listed after
it, so a reader sees what was looked at and ruled out.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

from attreid.case.store import Case, Mark, now
from attreid.utils.files import atomic_write_bytes, atomic_write_text

THUMB_WIDTH = 360
"""Frame thumbnails in the report are at most this many pixels wide."""

CROP_HEIGHT = 160
"""Crops in the report are at most this many pixels high."""

CSV_COLUMNS = ("mark", "id", "time", "camera", "frame", "track", "x1", "y1", "x2", "y2", "path",
               "frame_image", "distance", "p_same", "same", "query", "note", "marked_at")

BOX_COLOUR = (255, 200, 0)
"""A sighting's box on its frame (RGB): amber, visible on most street scenes; the report and the
search page's frame view draw it alike."""


def chronology(marks: Sequence[Mark]) -> list[Mark]:
    """Marks in wall-clock order (``snapshot["seconds"]``); those without a clock after them,
    by camera and frame."""
    def key(m: Mark) -> tuple:
        s = m.snapshot
        seconds = s.get("seconds")
        frame = s.get("frame")
        return (seconds is None, seconds or 0.0, str(s.get("camera_name") or s.get("camera")),
                -1 if frame is None else frame, m.path)

    return sorted(marks, key=key)


def camera_label(snapshot: dict[str, Any]) -> str:
    name = snapshot.get("camera_name") or snapshot.get("camera")
    if name is None or name == "":
        return "camera ?"
    return f"camera {name}" if str(name).isdigit() else str(name)


def _data_uri(image: Any) -> str:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _crop_uri(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as opened:
            crop = opened.convert("RGB")
    except (OSError, ValueError):
        return None
    if crop.height > CROP_HEIGHT:
        crop = crop.resize((max(1, round(crop.width * CROP_HEIGHT / crop.height)), CROP_HEIGHT))
    return _data_uri(crop)


def _frame_uri(snapshot: dict[str, Any]) -> str | None:
    """The stored frame with the box drawn (``frame_box``: the box in the frame file's pixels),
    reduced to :data:`THUMB_WIDTH`; None without a readable frame."""
    from PIL import Image, ImageDraw

    path = snapshot.get("frame_image")
    if not path:
        return None
    try:
        with Image.open(path) as opened:
            frame = opened.convert("RGB")
    except (OSError, ValueError):
        return None
    box = snapshot.get("frame_box")
    if box:
        ImageDraw.Draw(frame).rectangle(list(box), outline=BOX_COLOUR, width=4)
    if frame.width > THUMB_WIDTH:
        frame = frame.resize((THUMB_WIDTH, max(1, round(frame.height * THUMB_WIDTH
                                                        / frame.width))))
    return _data_uri(frame)


def _csv_row(mark: Mark) -> list[Any]:
    s = mark.snapshot
    box = list(s.get("box") or [None] * 4)
    values = [mark.mark, s.get("id"), s.get("time"), camera_label(s), s.get("frame"),
              s.get("track"), *box,
              mark.path, s.get("frame_image"), s.get("distance"), s.get("probability"),
              s.get("same"), s.get("query"), mark.note, mark.at]
    return ["" if v is None else v for v in values]


def case_csv(case: Case) -> str:
    """The marks as CSV (:data:`CSV_COLUMNS`): confirmed in time order, then rejected."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for mark in chronology(case.confirmed()) + chronology(case.rejected()):
        writer.writerow(_csv_row(mark))
    return out.getvalue()


def case_json(case: Case) -> dict[str, Any]:
    """Everything the case holds, JSON-ready; ``timeline``: the confirmed marks in order."""
    as_dict = lambda m: {"path": m.path, "mark": m.mark, "note": m.note,  # noqa: E731
                         "marked_at": m.at, **m.snapshot}
    return {"case": case.name, "created": case.created, "exported": now(),
            "context": case.context, "queries": case.queries, "notes": case.notes,
            "timeline": [as_dict(m) for m in chronology(case.confirmed())],
            "rejected": [as_dict(m) for m in chronology(case.rejected())]}


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _sighting_html(mark: Mark) -> str:
    s = mark.snapshot
    crop, frame = _crop_uri(mark.path), _frame_uri(s)
    crop_html = f'<img class="crop" src="{crop}" alt="crop">' if crop else \
        '<div class="missing">crop file missing</div>'
    frame_html = f'<img class="frame" src="{frame}" alt="frame">' if frame else \
        '<div class="missing">no frame</div>'
    p = s.get("probability")
    facts = [f"<b>{_esc(s.get('time') or 'no clock')}</b>", _esc(camera_label(s)),
             f"frame {_esc(s.get('frame'))}" if s.get("frame") is not None else "",
             f"track {_esc(s.get('track'))}" if s.get("track") is not None else "",
             f"distance {s['distance']:.2f}" if s.get("distance") is not None else "",
             f"P(same) {100 * p:.1f} %" if p is not None else "",
             f"note: {_esc(mark.note)}" if mark.note else ""]
    return (f'<div class="sighting {mark.mark}">{crop_html}{frame_html}<div class="facts">'
            + "<br>".join(f for f in facts if f)
            + f'<br><code>{_esc(mark.path)}</code><br>marked {_esc(mark.mark)} at '
            f'{_esc(mark.at)}</div></div>')


def _timeline_html(marks: Sequence[Mark]) -> str:
    parts, camera = [], None
    for mark in marks:
        here = camera_label(mark.snapshot)
        if here != camera:
            parts.append(f'<h3 class="camera">{_esc(here)}</h3>')
            camera = here
        parts.append(_sighting_html(mark))
    return "\n".join(parts) or "<p>No sighting confirmed yet.</p>"


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px}"
         ".sighting{display:flex;gap:1em;align-items:flex-start;border-top:1px solid #ccc;"
         "padding:.6em 0}.crop{height:160px}.frame{max-width:360px}.wrong{opacity:.7}"
         ".missing{width:120px;color:#a00}.facts{font-size:90%}code{font-size:85%;"
         "word-break:break-all}h3.camera{margin:1.2em 0 .2em;color:#245}")


def case_html(case: Case) -> str:
    """The self-contained report (see the module docstring)."""
    context = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>"
                      for k, v in sorted(case.context.items()))
    queries = "".join(f"<li>{_esc(q.get('at'))}: {_esc(q.get('kind'))} "
                      f"{_esc(json.dumps({k: v for k, v in q.items() if k not in ('at', 'kind')}))}"
                      "</li>" for q in case.queries) or "<li>none recorded</li>"
    notes = "".join(f"<li>{_esc(n['at'])}: {_esc(n['text'])}</li>" for n in case.notes) \
        or "<li>none</li>"
    confirmed, rejected = chronology(case.confirmed()), chronology(case.rejected())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Case {_esc(case.name)}"
            f"</title><style>{STYLE}</style></head><body><h1>Case {_esc(case.name)}</h1>"
            f"<p>Created {_esc(case.created)}, exported {_esc(now())} by attreid. "
            f"{len(confirmed)} sighting(s) confirmed, {len(rejected)} rejected.</p>"
            f"<table>{context}</table><h2>Timeline of confirmed sightings</h2>"
            f"{_timeline_html(confirmed)}<h2>Rejected sightings</h2>"
            + ("\n".join(_sighting_html(m) for m in rejected) or "<p>None.</p>")
            + f"<h2>Queries</h2><ul>{queries}</ul><h2>Notes</h2><ul>{notes}</ul>"
            "</body></html>")


def safe_stem(name: str) -> str:
    """A file name stem from a case name: letters, digits, ``-`` and ``_`` kept, the rest
    ``_``."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")
    return stem or "case"


def export_case(case: Case, out: Path | str) -> list[Path]:
    """Write ``<case>.html``, ``<case>.csv`` and ``<case>.json`` into the folder ``out``
    (created; each file written atomically). Returns the three paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(case.name)
    paths = [folder / f"{stem}.html", folder / f"{stem}.csv", folder / f"{stem}.json"]
    atomic_write_bytes(paths[0], case_html(case).encode("utf-8"))
    atomic_write_text(paths[1], case_csv(case))
    atomic_write_text(paths[2], json.dumps(case_json(case), indent=1, ensure_ascii=False))
    return paths
