"""Gallery search: a FAISS + SQLite index of crops, queried by image and by description.

Needs the ``search`` extra (faiss-cpu); the HTTP service also needs the ``serve`` extra.

May import: every layer below it (the bottom layer, ``data``, ``models``, ``metrics``,
``inference``); never ``training``, ``evaluation`` or ``cli``.
"""

from attreid.search.build import add_images, build_index, write_index, write_index_from_store
from attreid.search.index import GalleryIndex, GalleryIndexError
from attreid.search.metadata import Entry
from attreid.search.query import Constraint, GallerySearch, Hit, QueryError, parse_attributes

__all__ = [
    "Constraint", "Entry", "GalleryIndex", "GalleryIndexError", "GallerySearch", "Hit",
    "QueryError", "add_images", "build_index", "parse_attributes", "write_index",
    "write_index_from_store",
]
