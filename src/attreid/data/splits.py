"""Identity-disjoint train/validation splits of a dataset's training records."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from attreid.data.records import DataError, ImageRecord


def split_by_ids(records: Sequence[ImageRecord], val_ids: Sequence[int]
                 ) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Split records into (train, val): val holds every image of the given identities.

    Raises:
        DataError: a validation id has no image among the records.
    """
    val = set(int(v) for v in val_ids)
    present = {r.pid for r in records}
    absent = sorted(val - present)
    if absent:
        raise DataError(f"validation identities without images: {absent[:5]}"
                        f"{' ...' if len(absent) > 5 else ''} ({len(absent)} in all)")
    train = [r for r in records if r.pid not in val]
    return train, [r for r in records if r.pid in val]


def random_id_split(records: Sequence[ImageRecord], num_val_ids: int, seed: int
                    ) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """A seeded identity-disjoint split: ``num_val_ids`` identities drawn at random validate."""
    ids = sorted({r.pid for r in records if r.pid is not None})
    if not 0 < num_val_ids < len(ids):
        raise ValueError(f"num_val_ids={num_val_ids}: expected 1..{len(ids) - 1} "
                         f"(the records hold {len(ids)} identities)")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(ids), size=num_val_ids, replace=False)
    return split_by_ids(records, [ids[i] for i in chosen])
