"""The HTTP edge of the search service: upload limits and decoding, the body-size guard, the
documented error responses, and parsing and shaping of request and response values."""

# No `from __future__ import annotations`: FastAPI reads annotations of what it is given.
import hashlib
import io
import json
from typing import Any, Mapping, Union

from attreid.search.query import Hit, QueryError

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 4096 * 4096
MAX_K = 200
MAX_QUERY_CROPS = 16
"""Query crops one search takes (uploaded, or named by upload token): each costs a decode and
a forward pass (1,000 1x1 PNGs in one 69 kB request were 10 s of CPU); 16 crops of one person
are more than their mean needs, and fill one pass of the service's batcher."""
MIN_WIDTH, MIN_HEIGHT = 8, 24
"""Smallest uploaded crop (pixels): a smaller one (a 10x20 crop: a person 20 pixels tall) holds
too little of a person to identify, whatever the person check says of it (the model blows every
crop up to its input size, 256x128 for the presets). 24 pixels tall is also the least that
``attreid ingest`` keeps (``TrackletSettings.min_height``), so an indexed crop can be uploaded."""
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG includes MPO
"""Formats decoded from uploads (PIL would also try EPS via Ghostscript, PDF, ... )."""


def decode_upload(data: bytes, max_pixels: int = MAX_PIXELS, field: str = "image") -> Any:
    """Decode uploaded bytes to an RGB PIL image; messages name the form ``field``.

    Raises:
        QueryError: empty, not a decodable image, more than ``max_pixels`` pixels, or a side
            under :data:`MIN_WIDTH` x :data:`MIN_HEIGHT` pixels.
    """
    from PIL import Image

    from attreid.data.io import to_rgb

    if not data:
        raise QueryError(f"{field}: empty upload")
    try:
        with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise QueryError(f"{field}: {width}x{height} pixels, at most {max_pixels} allowed")
            if width < MIN_WIDTH or height < MIN_HEIGHT:
                raise QueryError(f"{field}: {width}x{height} pixels, too small to identify a "
                                 f"person (at least {MIN_WIDTH}x{MIN_HEIGHT}, width x height)")
            img.load()
            return to_rgb(img)
    except QueryError:
        raise
    except Image.UnidentifiedImageError:
        raise QueryError(f"{field}: not a decodable image (unrecognised format; accepted: "
                         f"{', '.join(UPLOAD_FORMATS)})") from None
    except Image.DecompressionBombError:
        raise QueryError(f"{field}: too many pixels, at most {max_pixels} allowed") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise QueryError(f"{field}: not a decodable image ({type(exc).__name__}: {exc})") from None


class BodyLimit:
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


def error_responses(*codes: int) -> dict[Union[int, str], dict[str, Any]]:
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


def parse_frames(text: str | None) -> tuple[int, int] | None:
    """``"1000-5000"`` -> (1000, 5000); empty -> None.

    Raises:
        QueryError: not FIRST-LAST whole numbers.
    """
    if not text or not text.strip():
        return None
    parts = text.strip().split("-")
    try:
        low, high = (int(p) for p in parts)
    except ValueError:
        raise QueryError(f"frames {text!r}: expected FIRST-LAST frame numbers, e.g. "
                         "1000-5000") from None
    return low, high


def parse_ids(text: str | None) -> list[int]:
    """``"3,17"`` -> [3, 17] (indexed crop ids marked by the user).

    Raises:
        QueryError: not comma-separated whole numbers.
    """
    try:
        return [int(t) for t in (text or "").split(",") if t.strip()]
    except ValueError:
        raise QueryError(f"ids {text!r}: expected indexed crop ids separated by commas") \
            from None


_MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
         "BMP": "image/bmp", "GIF": "image/gif", "TIFF": "image/tiff"}


def media_type(data: bytes) -> str:
    """The media type of upload bytes already decoded once (their header read again)."""
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as img:
        return _MIME.get(img.format or "", "application/octet-stream")


def image_etag(build: str, image_id: int, mtime_ns: int, size: int) -> str:
    """The ETag of an indexed crop's file: its index build (a rebuilt index is another), id,
    and the file's mtime and size (a file replaced on disk is another)."""
    digest = hashlib.sha256(f"{build}:{image_id}:{mtime_ns}:{size}".encode()).hexdigest()
    return f'"{digest[:24]}"'


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (a list, weak ``W/`` tags, ``*``)."""
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def hits_json(hits: list[Hit], confidence: Mapping[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """The hits as JSON with their image's URL (``confidence``: see :meth:`Hit.as_dict`)."""
    return [dict(h.as_dict(confidence), url=f"/images/{h.entry.id}") for h in hits]


