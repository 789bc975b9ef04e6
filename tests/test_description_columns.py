"""Search by description answered from columns held in memory (attreid.search.columns, issue
32) gives the hits, scores, pages and counts of the engine's own query: on an index folder when
a long-lived process asks for it (``attreid serve``), on Milvus by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import require
from test_gallery_backends import INFO, crops

from attreid.search.engines import create_gallery  # noqa: E402
from attreid.search.query import GallerySearch  # noqa: E402

QUERIES = [("gender=female,backpack=yes", None, 0.0, None),
           ("gender=male,upcolor=black", (2, 3), 0.0, (20, 300)),
           ("hat=no,down=short", (1,), 0.3, None)]


def hits(search: GallerySearch, query: tuple, k: int, offset: int) -> list[tuple[int, float]]:
    attributes, cameras, min_prob, frames = query
    found = search.by_attributes(attributes, k, cameras, min_prob, frames, offset)
    return [(h.entry.id, h.match) for h in found]


def test_folder_answers_equal_with_columns_held(tmp_path: Path) -> None:
    require("faiss")
    rows = crops(400, seed=5)
    rows["probabilities"] = {k: np.round(v * 8) / 8 for k, v in rows["probabilities"].items()}
    gallery = create_gallery("faiss", tmp_path / "index", **rows, info=INFO)
    search = GallerySearch(gallery)
    assert search.columns is None  # a one-shot command keeps the single SQLite query
    want = {(q, k, o): hits(search, q, k, o) for q in QUERIES for k, o in ((20, 0), (9, 13))}
    counts = [search.count(q[0], q[1], q[2], q[3]) for q in QUERIES]
    search.hold_columns()
    assert search.columns is not None
    for (q, k, o), expected in want.items():
        assert hits(search, q, k, o) == expected, (q, k, o)
    assert [search.count(q[0], q[1], q[2], q[3]) for q in QUERIES] == counts
    assert counts[2][1] > 0  # the hard filter hid some: both counts were compared
    again = search.reopened(gallery)
    assert again.columns is not None and again.columns is not search.columns


def test_milvus_holds_columns_by_default(tmp_path: Path) -> None:
    require("pymilvus", "the Milvus backend needs pymilvus (the milvus extra)")
    require("milvus_lite", "Milvus Lite needs milvus-lite (the milvus extra)")
    rows = crops(200, seed=6)
    folder = GallerySearch(create_gallery("faiss", tmp_path / "index", **rows, info=INFO))
    lite = create_gallery("milvus", str(tmp_path / "g.db"), **rows, info=INFO)
    try:
        search = GallerySearch(lite)
        assert search.columns is not None
        for q in QUERIES:
            assert hits(search, q, 15, 2) == hits(folder, q, 15, 2), q
    finally:
        lite.close()
