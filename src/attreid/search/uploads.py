"""Uploaded query crops kept for a while, so that a page can name its query in its URL.

The service keeps the last :data:`MAX_UPLOADS` uploads in memory, each under a token made from
its bytes (the first 16 hex digits of their sha256): the page puts ``upload=<token>`` in its URL,
so Back and reload search again with the same crop, and ``GET /uploads/<token>`` shows it. An
upload that has been dropped (older than the last :data:`MAX_UPLOADS`, or a restarted service)
is a clear 404 / 422 asking for the crop again; nothing is written to disk.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

MAX_UPLOADS = 64
"""Uploads kept (8 MiB each at most: 512 MiB in the worst case)."""


@dataclass(frozen=True)
class Upload:
    """One uploaded crop: its bytes (as sent), their media type and its embedding (D,)."""

    data: bytes
    media_type: str
    vector: np.ndarray


def upload_token(data: bytes) -> str:
    """The token of an upload: 16 hex digits of the sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


class UploadStore:
    """The last ``limit`` uploads by token, least recently used dropped first; thread-safe."""

    def __init__(self, limit: int = MAX_UPLOADS) -> None:
        self.limit = limit
        self._items: OrderedDict[str, Upload] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, upload: Upload) -> str:
        token = upload_token(upload.data)
        with self._lock:
            self._items[token] = upload
            self._items.move_to_end(token)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)
        return token

    def get(self, token: str) -> Upload | None:
        with self._lock:
            upload = self._items.get(token)
            if upload is not None:
                self._items.move_to_end(token)
            return upload

    def __len__(self) -> int:
        return len(self._items)
