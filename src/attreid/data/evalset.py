"""What a split scores: query and gallery records, the images whose attributes count, and the
training side that defines the majority baseline. Shared by training validation and
``attreid evaluate``, so both score exactly the same images.

* ``test``: query against gallery (labelled layouts: market, custom with a split column);
  attributes of the gallery images that carry them (Market-1501: identities > 0).
* ``study``: the course layout's validation identities (first 225 CSV rows), all against all.
* ``random``: ``val_ids`` identities drawn with ``split_seed``, all against all.

A gallery file byte-identical to a query file is that query itself, not a view of its person
(a custom layout that lists the queries in its gallery too, under other names):
:func:`query_copies` finds them for split ``test``, and evaluation leaves each out of its own
query's ranking, as the course layout drops its ``NAME(1).jpg`` copies and the all-against-all
splits the query's own entry.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from attreid.data.records import Dataset, ImageRecord, attribute_matrix
from attreid.data.splits import random_id_split, split_by_ids
from attreid.utils.files import file_sha256

SPLITS: tuple[str, ...] = ("test", "study", "random")
"""Valid split names."""


@dataclass(frozen=True)
class EvaluationSet:
    """What to score: queries, gallery, which gallery entries carry attributes, the train side.

    Attributes:
        query, gallery: the records ranked (the same list when ``all_vs_all``).
        attribute_index: (A,) int64 indices into ``gallery`` of the images whose attributes
            are scored.
        train: records whose identities define the majority baseline.
        all_vs_all: query and gallery are one set; each query's own entry is excluded.
    """

    query: list[ImageRecord]
    gallery: list[ImageRecord]
    attribute_index: np.ndarray
    train: list[ImageRecord]
    all_vs_all: bool

    @property
    def protocol(self) -> str:
        """The default protocol: ``seed`` (the study's) all against all, else ``market``."""
        return "seed" if self.all_vs_all else "market"

    @property
    def attribute_records(self) -> list[ImageRecord]:
        """The gallery records whose attributes are scored."""
        return [self.gallery[i] for i in self.attribute_index]


def test_is_labelled(dataset: Dataset) -> bool:
    """Whether split ``test`` can be scored (query and gallery exist and are all labelled)."""
    try:
        _labelled_test(dataset)
    except ValueError:
        return False
    return True


def _labelled_test(dataset: Dataset) -> None:
    """Raise a ValueError when the query/gallery split cannot be scored."""
    if not dataset.query or not dataset.gallery:
        raise ValueError(f"{dataset.root}: no query/gallery images to evaluate split 'test' "
                         f"on ({dataset.layout} layout); use split 'study' or 'random'")
    if any(r.pid is None for r in dataset.query + dataset.gallery):
        raise ValueError(
            f"{dataset.root}: the {dataset.layout} layout's query and gallery images are "
            "unlabelled, so split 'test' cannot be scored. Use split 'study' or 'random' "
            "(held-out training identities), or `attreid predict` to embed and rank them.")


def _with_attributes(records: Sequence[ImageRecord]) -> np.ndarray:
    return np.array([i for i, r in enumerate(records) if r.attributes is not None],
                    dtype=np.int64)


def build_evaluation_set(dataset: Dataset, split: str, val_ids: int = 225,
                         split_seed: int = 0) -> EvaluationSet:
    """The images scored for ``split`` (see the module docstring), as training validates.

    Args:
        val_ids, split_seed: identities drawn for split ``random`` and the seed of the draw.

    Raises:
        ValueError: unknown split, unlabelled test images, or no validation identities.
    """
    if split == "test":
        _labelled_test(dataset)
        return EvaluationSet(dataset.query, dataset.gallery, _with_attributes(dataset.gallery),
                             dataset.train, all_vs_all=False)
    if split == "study":
        if not dataset.val_ids:
            raise ValueError(f"{dataset.root}: split 'study' needs the course layout's "
                             "annotations_train.csv order; use split 'random' for this dataset")
        train, val = split_by_ids(dataset.train, dataset.val_ids)
    elif split == "random":
        train, val = random_id_split(dataset.train, val_ids, split_seed)
    else:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    return EvaluationSet(val, val, _with_attributes(val), train, all_vs_all=True)


def identity_targets(records: Sequence[ImageRecord]) -> np.ndarray:
    """(N_ids, 12) task labels, one row per identity (its first record)."""
    first: dict[int | None, ImageRecord] = {}
    for rec in records:
        first.setdefault(rec.pid, rec)
    return attribute_matrix(list(first.values()))


def labels_and_cameras(data: EvaluationSet) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                          np.ndarray | None]:
    """Query ids (Q,), gallery ids (G,), query and gallery cameras (None when any is unknown:
    then the ``market`` protocol applies no camera filter)."""
    qids = np.array([r.pid for r in data.query], dtype=np.int64)
    gids = np.array([r.pid for r in data.gallery], dtype=np.int64)
    if any(r.camid is None for r in data.query + data.gallery):
        return qids, gids, None, None
    return (qids, gids, np.array([r.camid for r in data.query], dtype=np.int64),
            np.array([r.camid for r in data.gallery], dtype=np.int64))


def query_copies(data: EvaluationSet) -> np.ndarray:
    """(Q, C) int64 gallery indices of the files byte-identical to each query (the same
    resolved path, or the same size and SHA-256), -1 padded, C >= 1. Only files whose size
    matches a query's are hashed. An all-against-all split (one set of training images, the
    query's own entry excluded already) is not searched: all -1.

    Raises:
        OSError: a file cannot be read.
    """
    if data.all_vs_all:
        return np.full((len(data.query), 1), -1, dtype=np.int64)
    by_size: dict[int, list[int]] = defaultdict(list)
    for j, rec in enumerate(data.gallery):
        by_size[os.stat(rec.path).st_size].append(j)
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in digests:
            digests[path] = file_sha256(path)
        return digests[path]

    found: list[list[int]] = []
    for rec in data.query:
        here = Path(os.path.realpath(rec.path))
        found.append([j for j in by_size.get(os.stat(rec.path).st_size, [])
                      if Path(os.path.realpath(data.gallery[j].path)) == here
                      or digest(data.gallery[j].path) == digest(rec.path)])
    width = max([1] + [len(f) for f in found])
    return np.array([f + [-1] * (width - len(f)) for f in found], dtype=np.int64)
