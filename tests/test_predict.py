"""attreid predict: features.npz for any layout, the study's submission files for the course one."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest

from attreid.data.synth import generate
from attreid.inference.predict import predict_dataset
from attreid.schema import CSV_COLUMNS, DOWN_COLOR_COLUMNS, UP_COLOR_COLUMNS


@pytest.fixture(scope="module")
def course_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("course") / "data"
    generate(root, ids=12, seed=2, layout="course")
    return root


def test_course_submission_files(course_root, tiny_checkpoint, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = predict_dataset(tiny_checkpoint, course_root, tmp_path, top_k=5, device="cpu")
    rows = list(csv.DictReader(files.classification.open()))
    test_files = sorted(p.name for p in (course_root / "test").iterdir())
    assert [r["id"] for r in rows] == test_files  # one row per file, duplicates included
    assert list(rows[0]) == list(CSV_COLUMNS)
    by_id = {r["id"]: r for r in rows}
    for name in test_files:
        if "(1)" in name:
            original = by_id[name.replace("(1)", "")]
            assert {k: v for k, v in by_id[name].items() if k != "id"} == \
                {k: v for k, v in original.items() if k != "id"}
    for row in rows:
        assert row["age"] in {"1", "2", "3", "4"}
        for group in (UP_COLOR_COLUMNS, DOWN_COLOR_COLUMNS):
            assert sum(row[c] == "2" for c in group) <= 1  # one-hot or multicolour (none)
    # the values: each row is features.npz's predicted labels in the dataset's raw coding,
    # written out here by hand (task order age, backpack, bag, handbag, clothes, down, up,
    # hair, hat, gender, upcolor, downcolor; binary codes 1/2 = class 0/1; age 1-4; a colour
    # index sets that colour's column to 2, the multicolour class leaves every column 1)
    saved = np.load(files.features)
    labels = {p.split("/")[-1]: lab for p, s, lab in zip(saved["paths"], saved["split"],
                                                           saved["labels"]) if s == "gallery"}
    binary = ["backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender"]
    up = ["upblack", "upwhite", "upred", "uppurple", "upyellow", "upgray", "upblue", "upgreen"]
    down = ["downblack", "downwhite", "downpink", "downpurple", "downyellow", "downgray",
            "downblue", "downgreen", "downbrown"]
    for row in rows:
        lab = labels[row["id"].replace("(1)", "")]
        want = {"age": str(lab[0] + 1)}
        want.update({name: str(lab[1 + i] + 1) for i, name in enumerate(binary)})
        want.update({c: "2" if j == lab[10] else "1" for j, c in enumerate(up)})
        want.update({c: "2" if j == lab[11] else "1" for j, c in enumerate(down)})
        assert {k: row[k] for k in want} == want, row["id"]
    lines = files.ranking.read_text().splitlines()
    queries = sorted(p.name for p in (course_root / "queries").iterdir())
    assert [ln.split(":")[0] for ln in lines] == queries
    features = np.load(files.features)
    gallery_names = [p.split("/")[-1] for p, s in zip(features["paths"], features["split"])
                     if s == "gallery"]
    emb = features["embeddings"]
    q_emb, g_emb = emb[features["split"] == "query"], emb[features["split"] == "gallery"]
    for line, q in zip(lines, q_emb):
        ranked = line.split(": ")[1].split(", ")
        assert len(ranked) == 5 and len(set(ranked)) == 5
        assert not any("(1)" in name for name in ranked)
        nearest = gallery_names[int(np.linalg.norm(g_emb - q, axis=1).argmin())]
        assert ranked[0] == nearest


def test_market_layout_writes_features_only(synth_market, tiny_checkpoint, tmp_path):
    files = predict_dataset(tiny_checkpoint, synth_market, tmp_path, device="cpu")
    assert files.classification is None and files.ranking is None
    data = np.load(files.features)
    n = len(data["paths"])
    assert data["embeddings"].shape[0] == n and data["labels"].shape == (n, 12)
    np.testing.assert_allclose(data["prob_upcolor"].sum(axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="top_k=0"):
        predict_dataset(tiny_checkpoint, synth_market, tmp_path, top_k=0)
