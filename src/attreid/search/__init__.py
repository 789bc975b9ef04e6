"""Gallery search: crops in a gallery (a FAISS + SQLite index folder, or Milvus beyond one
machine: :mod:`attreid.search.gallery`), queried by image and by description.

Needs the ``search`` extra (faiss-cpu); the HTTP service also needs the ``serve`` extra, Milvus
the ``milvus`` extra.

May import: every layer below it (the bottom layer, ``data``, ``models``, ``metrics``,
``inference``); never ``training``, ``evaluation`` or ``cli``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real imports, for readers and type checkers
    from attreid.search.build import add_images, build_index, write_index, write_index_from_store
    from attreid.search.engines import build_gallery, open_location
    from attreid.search.filters import RowFilter
    from attreid.search.index import GalleryIndex, GalleryIndexError
    from attreid.search.metadata import Entry
    from attreid.search.query import Constraint, GallerySearch, Hit, QueryError, parse_attributes

_EXPORTS = {
    'add_images': 'attreid.search.build',
    'build_index': 'attreid.search.build',
    'write_index': 'attreid.search.build',
    'write_index_from_store': 'attreid.search.build',
    'build_gallery': 'attreid.search.engines',
    'open_location': 'attreid.search.engines',
    'RowFilter': 'attreid.search.filters',
    'GalleryIndex': 'attreid.search.index',
    'GalleryIndexError': 'attreid.search.index',
    'Entry': 'attreid.search.metadata',
    'Constraint': 'attreid.search.query',
    'GallerySearch': 'attreid.search.query',
    'Hit': 'attreid.search.query',
    'QueryError': 'attreid.search.query',
    'parse_attributes': 'attreid.search.query',
}
"""Public name -> its module: imported on first use (PEP 562), so that importing one
module of ``attreid.search`` does not import them all (torch for a description search)."""

__all__ = [
    "Constraint", "Entry", "GalleryIndex", "GalleryIndexError", "GallerySearch", "Hit",
    "QueryError", "RowFilter", "add_images", "build_gallery", "build_index", "open_location",
    "parse_attributes", "write_index", "write_index_from_store",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
