"""Splits, the torch dataset, and summary/check on tiny hand-made datasets."""

from __future__ import annotations

import pytest
import torch
from helpers import labels_for, make_course, make_market, write_jpeg
from torch.utils.data import DataLoader

from attreid.data.dataset import ImageDataset
from attreid.data.inspect import check_dataset, summarize
from attreid.data.market import read_market
from attreid.data.records import DataError, ImageRecord, attribute_matrix, relabel
from attreid.data.sampler import PKSampler
from attreid.data.splits import random_id_split, split_by_ids
from attreid.data.transforms import TransformConfig, build_transforms
from attreid.schema import MISSING


def _records(ids, per_id=3):
    return [ImageRecord(path=f"{p}_{i}.jpg", pid=p, camid=1) for p in ids for i in range(per_id)]


def test_split_by_ids_is_identity_disjoint():
    train, val = split_by_ids(_records(range(1, 11)), [3, 7])
    assert {r.pid for r in val} == {3, 7} and len(val) == 6
    assert not {r.pid for r in train} & {3, 7} and len(train) == 24
    with pytest.raises(DataError, match=r"without images: \[99\]"):
        split_by_ids(_records(range(1, 4)), [99])


def test_random_id_split_seeded():
    records = _records(range(1, 21))
    a = random_id_split(records, 5, seed=1)
    b = random_id_split(records, 5, seed=1)
    c = random_id_split(records, 5, seed=2)
    assert a == b and {r.pid for r in a[1]} != {r.pid for r in c[1]}
    assert len({r.pid for r in a[1]}) == 5
    with pytest.raises(ValueError, match="expected 1..19"):
        random_id_split(records, 20, seed=0)


def test_relabel_and_attribute_matrix():
    labels, mapping = relabel([7, 2, 7, 1500])
    assert labels.tolist() == [1, 0, 1, 2] and mapping == {2: 0, 7: 1, 1500: 2}
    recs = [ImageRecord("a.jpg", 1, 1, tuple(labels_for(1))), ImageRecord("b.jpg", 0, 1, None)]
    m = attribute_matrix(recs)
    assert m.shape == (2, 12) and m[0].tolist() == labels_for(1) and (m[1] == MISSING).all()


def test_image_dataset_with_pk_sampler_and_workers(tmp_path):
    ds = read_market(make_market(tmp_path, train_ids=(2, 7, 10, 11)))
    data = ImageDataset(ds.train, build_transforms(TransformConfig(), train=True))
    assert data.num_classes == 4
    sampler = PKSampler(data.pids(), p=2, k=2, seed=0)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    batch = batches[0]
    assert batch["image"].shape == (4, 3, 128, 64) and batch["image"].dtype == torch.float32
    assert batch["attributes"].shape == (4, 12)
    for pid, label, attrs in zip(batch["pid"], batch["label"], batch["attributes"]):
        assert attrs.tolist() == labels_for(int(pid))
        assert label == data.label_of[int(pid)]


def test_image_dataset_unlabelled_and_corrupt(tmp_path):
    path = write_jpeg(tmp_path / "q.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(path.read_bytes()[:100])
    data = ImageDataset([ImageRecord(path, None), ImageRecord(bad, None)],
                        build_transforms(TransformConfig(), train=False))
    item = data[0]
    assert item["pid"] == -1 and item["label"] == -1 and item["camid"] == -1
    with pytest.raises(DataError, match="bad.jpg: cannot decode image"):
        data[1]


def test_summary_counts(tmp_path):
    s = summarize(read_market(make_market(tmp_path)))
    by_name = {x.name: x for x in s.splits}
    assert (by_name["train"].images, by_name["train"].identities) == (6, 3)
    assert (by_name["gallery"].distractors, by_name["gallery"].junk) == (1, 1)
    assert by_name["gallery"].identities == 2 and by_name["train"].cameras == (1, 2)
    assert sum(s.attribute_counts["train"]["age"]) == 3  # per identity, not per image
    assert set(s.attribute_counts) == {"train", "test"}


def test_check_lists_every_broken_image(tmp_path):
    root = make_market(tmp_path)
    assert check_dataset(root) == ([], [])
    victims = sorted((root / "bounding_box_train").iterdir())[:2]
    victims[0].write_bytes(b"")
    victims[1].write_bytes(victims[1].read_bytes()[:50])
    problems, _ = check_dataset(root)
    assert len(problems) == 2
    assert all(v.name in p for v, p in zip(victims, problems))


def test_check_reports_reader_problems_and_warnings(tmp_path):
    root = make_course(tmp_path)
    write_jpeg(root / "train" / "0999_c1_000000001.jpg")
    problems, notes = check_dataset(root)
    assert len(problems) == 1 and "identity 999 has no row" in problems[0]
    assert any("duplicate" in n for n in notes)
