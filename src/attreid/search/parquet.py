"""A gallery's rows as Parquet files (issue 32): the feature store that other engines read.

``attreid index export GALLERY --parquet OUT`` writes ``OUT/part-00000.parquet``, ... (at
most :data:`ROWS_PER_FILE` rows each) and ``OUT/_gallery.json`` (the gallery's info: checkpoint
and its sha256, metric, dimension, count). One row per crop, in id order:

=============================  ================================================================
column                         value
=============================  ================================================================
``id``                         int64, the crop's id in the gallery (0 .. N-1)
``path``                       string, the crop's file as indexed
``camera``, ``frame``          int64 or null: from the file name or the footage
``identity``                   int64 or null: the person id a Market-1501 name carries
``time``                       float64 or null: seconds since 1970 (UTC) of a footage crop
``source``, ``camera_name``    string or null: the footage source and camera of a crop
``track``                      int64 or null: the crop's track within its source
``box``                        list of 4 float32 or null: x1, y1, x2, y2 in frame pixels
``p_<task>_<class>``           float32: the 12 tasks' class probabilities (41 columns)
``vec``                        fixed-size list of D float32: the vector as the gallery stores it
                               (L2-normalised for a cosine gallery)
=============================  ================================================================

Spark, DuckDB and pandas read the folder as one table; Milvus's bulk import takes Parquet
files whose columns match a collection's fields (a ``vec`` float vector, scalar fields), so a
collection with these fields imports them unchanged. The folder appears whole or not at all (it
is written beside ``OUT`` and renamed into place).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from attreid.search.gallery import Gallery
from attreid.search.index import GalleryIndexError
from attreid.search.metadata import probability_columns
from attreid.utils.extras import require_extra

ROWS_PER_FILE = 1_000_000
"""Rows per Parquet file (about 2.2 GB of 512-d float32 vectors)."""
BLOCK = 8_192
"""Rows read from the gallery and written as one row group at a time."""
INFO_FILE = "_gallery.json"
"""The gallery's info beside the parts (a leading _: Spark, DuckDB and pyarrow skip it when
they read the folder as one table)."""


def _pyarrow() -> Any:
    return require_extra("pyarrow", "Parquet export", "parquet", "pyarrow")


def parquet_schema(dim: int) -> Any:
    """The Arrow schema of the exported rows (see the module docstring) for ``dim``-d vectors."""
    pa = _pyarrow()
    fields = [pa.field("id", pa.int64(), nullable=False), pa.field("path", pa.string()),
              pa.field("camera", pa.int64()), pa.field("frame", pa.int64()),
              pa.field("identity", pa.int64()), pa.field("time", pa.float64()),
              pa.field("source", pa.string()), pa.field("camera_name", pa.string()),
              pa.field("track", pa.int64()), pa.field("box", pa.list_(pa.float32(), 4))]
    fields += [pa.field(column, pa.float32()) for _, _, column in probability_columns()]
    fields.append(pa.field("vec", pa.list_(pa.float32(), dim), nullable=False))
    return pa.schema(fields)


def _block(gallery: Gallery, ids: Sequence[int], schema: Any) -> Any:
    """Rows ``ids`` of ``gallery`` as one Arrow record batch."""
    pa = _pyarrow()
    entries = gallery.entries(ids)
    sightings = gallery.sightings(ids)
    vectors = np.ascontiguousarray(gallery.vectors_of(ids), dtype=np.float32)

    def seen(name: str) -> list[Any]:
        return [getattr(sightings[i], name) if i in sightings else None for i in ids]

    columns: dict[str, Any] = {
        "id": [e.id for e in entries], "path": [e.path for e in entries],
        "camera": [e.camera for e in entries], "frame": [e.frame for e in entries],
        "identity": [e.identity for e in entries], "time": seen("time"),
        "source": seen("source"), "camera_name": seen("camera_name"), "track": seen("track"),
        "box": [list(b) if b is not None else None for b in seen("box")]}
    for task, index, column in probability_columns():
        columns[column] = np.array([e.probabilities[task][index] for e in entries], np.float32)
    flat = pa.array(vectors.reshape(-1), pa.float32())
    columns["vec"] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.record_batch([pa.array(columns[f.name], f.type) if f.name != "vec"
                            else columns["vec"] for f in schema], schema=schema)


def export_parquet(gallery: Gallery, out: Path | str, rows_per_file: int = ROWS_PER_FILE,
                   progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write every row of ``gallery`` to the new folder ``out`` (see the module docstring).

    Returns:
        The Parquet files written, in id order.

    Raises:
        GalleryIndexError: ``out`` exists, or the gallery holds no rows.
    """
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file: got {rows_per_file}, expected >= 1")
    pq = require_extra("pyarrow.parquet", "Parquet export", "parquet", "pyarrow")
    out = Path(out)
    if out.exists():
        raise GalleryIndexError(f"{out}: exists; choose a new folder for the Parquet files")
    count = len(gallery)
    if not count:
        raise GalleryIndexError(f"{gallery.location}: the gallery holds no crops to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    scratch.chmod(0o777 & ~umask)  # a new folder's mode (mkdtemp makes it 0700)
    try:
        dim = int(gallery.vectors_of([0]).shape[1])
        schema, files = parquet_schema(dim), []
        for first in range(0, count, rows_per_file):
            end = min(count, first + rows_per_file)
            files.append(scratch / f"part-{len(files):05d}.parquet")
            with pq.ParquetWriter(files[-1], schema) as writer:
                for start in range(first, end, BLOCK):
                    ids = list(range(start, min(end, start + BLOCK)))
                    writer.write_batch(_block(gallery, ids, schema))
                    if progress:
                        progress(ids[-1] + 1, count)
        where = gallery.location
        if "://" not in where:  # a folder or a Lite file: absolute, as the files are read elsewhere
            path, _, name = where.partition("#")
            where = str(Path(path).resolve()) + (f"#{name}" if name else "")
        info = {**gallery.info, "count": count, "dim": dim, "location": where,
                "files": [f.name for f in files]}
        (scratch / INFO_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n")
        os.replace(scratch, out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return [out / f.name for f in files]


__all__ = ["BLOCK", "INFO_FILE", "ROWS_PER_FILE", "export_parquet", "parquet_schema"]
