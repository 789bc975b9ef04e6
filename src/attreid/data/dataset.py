"""A torch Dataset over image records."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from attreid.data.io import read_image
from attreid.data.records import ImageRecord, attribute_matrix, relabel

UNKNOWN = -1


class ImageDataset(TorchDataset):
    """Decodes the images of ``records`` and applies ``transform``.

    Each item is a dict:
        ``image``: the transformed image (e.g. (3, H, W) float32);
        ``pid``: person id as in the data (``-1`` when unlabelled);
        ``label``: contiguous identity label 0..C-1 for an ID head (``-1`` when unlabelled);
        ``camid``: camera id (``-1`` when unknown);
        ``attributes``: (12,) int64 task labels, ``MISSING`` (-1) where unknown;
        ``index``: position in ``records``.
    """

    def __init__(self, records: Sequence[ImageRecord],
                 transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.records = list(records)
        self.transform = transform
        labelled = [r.pid for r in self.records if r.pid is not None]
        _, self.label_of = relabel(labelled)
        self.attributes = torch.from_numpy(attribute_matrix(self.records))

    @property
    def num_classes(self) -> int:
        """Number of distinct labelled identities."""
        return len(self.label_of)

    def pids(self) -> list[int]:
        """Person ids of all records (``-1`` when unlabelled), e.g. for a PK sampler."""
        return [UNKNOWN if r.pid is None else r.pid for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        rec = self.records[index]
        return {
            "image": self.transform(read_image(rec.path)),
            "pid": UNKNOWN if rec.pid is None else rec.pid,
            "label": self.label_of.get(rec.pid, UNKNOWN) if rec.pid is not None else UNKNOWN,
            "camid": UNKNOWN if rec.camid is None else rec.camid,
            "attributes": self.attributes[index],
            "index": index,
        }
