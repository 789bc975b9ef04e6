"""One gallery interface over storage engines: the embedded default (FAISS + SQLite in a
folder, :class:`~attreid.search.index.GalleryIndex`) and Milvus
(:class:`~attreid.search.milvus.MilvusGallery`: Milvus Lite in a file, or a Milvus server or
cluster), driven by the same calls; :mod:`attreid.search.engines` makes and opens them by name.

A :class:`Gallery` adds crops atomically (all or none become visible), finds nearest crops under
a :class:`~attreid.search.filters.RowFilter`, reads rows by id and counts rows. The filter is an
attreid value, turned into SQL or a Milvus boolean expression, so a query means the same on
every engine; the query layer above (:class:`~attreid.search.query.GallerySearch`: soft
re-weighting, calibration, Rocchio, re-ranking, tracks) uses only these calls.

A filtered search never comes back short silently: :class:`~attreid.search.filters.Found` says
how many crops the filter allowed, and every engine returns ``min(k, allowed)`` hits. At most
:data:`~attreid.search.vectors.EXACT_ROWS` allowed crops are searched exactly (brute force over
them, as Milvus's server does under selective filters); more go to the engine's index (FAISS
IVF probes more lists until full; Milvus repeats a short search exactly).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from attreid.search.filters import Found, RowFilter
from attreid.search.index import GalleryIndexError
from attreid.search.metadata import Entry
from attreid.search.sightings import Sighting
from attreid.search.sources import _array_source

BACKENDS = ("faiss", "milvus")
"""``faiss``: FAISS + SQLite in an index folder (the default); ``milvus``: a Milvus collection
(``--uri``: a ``.db`` file for Milvus Lite, ``http://host:19530`` for a server or cluster)."""


class Gallery(Protocol):
    """What the query layer needs of a gallery store, whatever the engine.

    ``location`` names it in messages (an index folder, or ``uri#name``); ``info`` holds the
    model's sha256, metric (``euclidean``/``cosine``) and dimension as
    :func:`~attreid.search.build.write_index` records them; ``trained_tasks`` the tasks that
    can be searched by. Reads see the rows committed when the gallery was opened (or last
    added to by this handle); :meth:`committed` tells a reader that another writer moved on.
    """

    location: str
    info: dict[str, Any]
    trained_tasks: tuple[str, ...]
    scans_by_query: bool  # one engine query ranks the rows by a product (else hold columns)

    def __len__(self) -> int: ...

    @property
    def metric(self) -> str: ...

    def add(self, paths: Sequence[str], embeddings: np.ndarray,
            probabilities: dict[str, np.ndarray]) -> int: ...

    def find(self, queries: np.ndarray, k: int, where: RowFilter | None = None) -> Found: ...

    def entries(self, ids: Sequence[int]) -> list[Entry]: ...

    def count(self, where: RowFilter | None = None) -> int: ...

    def ids(self, where: RowFilter | None = None) -> np.ndarray: ...

    def products(self, where: RowFilter | None, columns: Sequence[str], k: int | None = None,
                 offset: int = 0) -> tuple[np.ndarray, np.ndarray]: ...

    def column(self, name: str) -> np.ndarray: ...

    def frame_range(self) -> tuple[int, int] | None: ...

    def vector(self, image_id: int) -> np.ndarray: ...

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray: ...

    def vector_block(self, start: int, count: int) -> np.ndarray: ...

    def cameras(self) -> list[int]: ...

    def sightings(self, ids: Sequence[int]) -> dict[int, Sighting]: ...

    def track(self, image_id: int) -> list[int]: ...

    def committed(self) -> tuple[int, Any]: ...

    def check_checkpoint(self, checkpoint: Any, digest: str | None = None) -> None: ...

    def close(self) -> None: ...


def check_rows(paths: Sequence[str], embeddings: np.ndarray,
               probabilities: dict[str, np.ndarray]) -> None:
    """Raise :class:`GalleryIndexError` unless ``embeddings`` is (N, D) for N ``paths``, the
    paths are distinct and every task has (N, C) probabilities."""
    _array_source(list(paths), embeddings, probabilities)  # shape and task checks
    if len(set(paths)) != len(paths):
        raise GalleryIndexError("the same crop path twice in one add; nothing added")
