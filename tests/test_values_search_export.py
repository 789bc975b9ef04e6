"""Values of the search, index, export and compare commands through the CLI (issue 21, item 10
part B), each against a reference computed here: brute-force rankings of embeddings this test
computes with a plain Predictor, the dense k-reciprocal re-ranking, the documented IVF rule by
hand, flip averages of mirrored tensors, the ONNX file's own opset field, and deltas against
study numbers typed in by hand.

Already covered elsewhere (not repeated here): the Python API of ``by_id`` and of re-ranking
against brute force / ``rerank_dense`` (tests/test_search.py), the library's delta cells in
``table_rows`` / ``markdown`` / JSON (tests/test_compare.py), the Predictor's flip average
(tests/test_predictor.py), ONNX parity at the default opset (tests/test_export.py). What none
of them asserts is the value the *command line* gives for ``search --id`` / ``--rerank``,
``index build --ivf -1 / --overwrite / --flip``, ``index add --checkpoint``, ``export
--opset`` and ``compare --delta``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require
from helpers import assert_nearest_within
from typer.testing import CliRunner

require("faiss", "gallery search needs faiss (pip install 'attreid[search]')")

from attreid.cli import app
from attreid.inference.predictor import Predictor
from attreid.metrics import pairwise_distance
from attreid.metrics.reranking import rerank_dense
from attreid.search import GalleryIndex

runner = CliRunner()

FAISS_TOL = 1e-4
"""FAISS and torch compute float32 Euclidean distances differently (and per CPU): entries closer
than this may swap, a wrong entry or order beyond it fails (as in tests/test_search.py).
Measured here: at most 2.5e-8 apart on this AMD EPYC, also with ONEDNN_MAX_CPU_ISA=AVX2 or
AVX512_CORE; the top 11 of each --id query here are 6.7e-4 or more apart."""

VECTOR_TOL = 1e-5
"""Stored vectors vs embeddings recomputed here with the same float32 model in other batches:
bit-identical on this AMD EPYC (AVX2 and AVX512_CORE too); 1e-5, as tests/test_predictor.py's
flip check, for kernels another CPU may pick per batch size. Dropping the flip moves every
vector by 1.9e-2 or more (some component), 0.13 at most."""

RERANK_TOL = 1e-5
"""Re-ranked distances of the stored vectors vs of embeddings recomputed here: identical on this
AMD EPYC (AVX2, AVX512_CORE too); 1e-5 for other CPUs' rounding. Any other parameter (k1 19,
k2 5, lambda 0 or 0.5) or no re-ranking moves distances by 1.8e-2 or more."""


def _cli(*args: str, code: int = 0) -> str:
    """Run ``attreid ARGS`` with typer's runner; fail unless it exits ``code``; its stdout."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (args, result.output)
    return result.stdout


def _error_line(text: str) -> str:
    """The one line a refused command prints (an ``error:`` line; nothing else)."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


def _copy(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    return folder


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file of a folder by name -> sha256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def plain(tiny_checkpoint) -> Predictor:
    """The reference: the checkpoint without flip, on the CPU."""
    return Predictor(tiny_checkpoint, device="cpu")


def _flip_mean(predictor: Predictor, paths: list[Path]) -> np.ndarray:
    """(N, D): mean of each image's embedding and its mirror's, the mirror made here."""
    x = predictor.preprocess(paths)  # (N, 3, H, W)
    mirrored = torch.flip(x, dims=[3])
    return (predictor.predict(x).embeddings + predictor.predict(mirrored).embeddings) / 2


def _brute(query: np.ndarray, gallery: np.ndarray, metric: str) -> np.ndarray:
    """(G,) distances of one query (D,) to the gallery (G, D), float64."""
    return pairwise_distance(torch.from_numpy(query[None]).double(),
                             torch.from_numpy(gallery).double(), metric)[0].numpy()


@pytest.fixture(scope="module")
def gallery(search_index, plain) -> dict:
    """The session index's entries and their embeddings recomputed here (in id order)."""
    index = GalleryIndex.open(search_index)
    entries = index.entries(range(len(index)))
    metric = index.metric
    index.close()
    embeddings = plain.predict([Path(e.path) for e in entries]).embeddings  # (G, D)
    return {"entries": entries, "embeddings": embeddings, "metric": metric}


# ---- attreid search --id / --rerank ----------------------------------------------------------


@pytest.mark.parametrize("image_id", [7, 60])
def test_cli_search_by_id_equals_brute_force(search_index, gallery, image_id):
    """``attreid search --id N``: the crop's nearest others (itself left out), as brute force
    over embeddings computed here. Mutations caught: ``by_id`` querying with the first indexed
    crop's vector instead of crop N's; ``by_id`` not leaving crop N out."""
    hits = json.loads(_cli("search", search_index, "--id", image_id, "-k", 10, "--json"))
    emb = gallery["embeddings"]
    dist = _brute(emb[image_id], emb, gallery["metric"])
    dist[image_id] = np.inf  # left out
    ids = [h["id"] for h in hits]
    assert len(ids) == 10 and image_id not in ids
    assert_nearest_within(ids, dist, tol=FAISS_TOL)
    np.testing.assert_allclose([h["distance"] for h in hits], dist[ids], rtol=0, atol=FAISS_TOL)
    names = {e.id: Path(e.path).name for e in gallery["entries"]}
    assert [h["name"] for h in hits] == [names[i] for i in ids]


def test_cli_search_rerank_equals_dense_reranking(search_index, gallery, plain, synth_market):
    """``attreid search --image Q --rerank`` with k = the whole gallery (so every crop is a
    candidate, whatever FAISS's order at the depth boundary): the order and distances of the
    dense k-reciprocal re-ranking computed here on embeddings computed here, with the documented
    parameters k1 = min(20, n - 1), k2 = min(6, k1), lambda = 0.3. Mutations caught: the CLI not
    passing --rerank on to ``by_image``; k2 = min(5, k1) in ``GallerySearch._rerank``."""
    query = sorted((synth_market / "query").glob("*.jpg"))[1]
    n = len(gallery["entries"])
    hits = json.loads(_cli("search", search_index, "--image", query, "-k", n, "--rerank",
                           "--json"))
    emb = gallery["embeddings"]
    q = plain.predict([query]).embeddings[0]  # (D,)
    k1 = min(20, n - 1)
    dense = rerank_dense(q[None], emb, k1=k1, k2=min(6, k1), lambda_value=0.3)[0]  # (G,)
    ids = [h["id"] for h in hits]
    assert sorted(ids) == list(range(n))
    # stored vs recomputed embeddings: see RERANK_TOL
    assert_nearest_within(ids, dense, tol=RERANK_TOL)
    np.testing.assert_allclose([h["distance"] for h in hits], dense[ids], rtol=0,
                               atol=RERANK_TOL)
    plain_order = np.argsort(_brute(q, emb, gallery["metric"]), kind="stable")[:10]
    assert ids[:10] != plain_order.tolist()  # re-ranking reorders this query's top 10


# ---- attreid index build --ivf -1 / --overwrite / --flip --------------------------------------


def test_cli_ivf_minus_one_chooses_four_sqrt_n_lists(tiny_checkpoint, synth_market, plain,
                                                    tmp_path):
    """``index build --ivf -1``: an IVF index of int(4 sqrt(N)) lists (the --ivf help: "about 4
    sqrt(N)"; N = 30 crops: 4 sqrt(30) = 21.9 -> 21, where rounding would give 22), whose
    search with every list probed equals brute force. Mutations caught: the CLI taking -1 as
    the exact (flat) index (``ivf > 0``); nlist rounded instead of truncated."""
    faiss = require("faiss")
    crops = _copy(sorted((synth_market / "bounding_box_test").glob("*.jpg"))[::4][:30],
                  tmp_path / "crops")
    n = len(list(crops.iterdir()))
    expected_nlist = int(4 * math.sqrt(n))
    assert (n, expected_nlist) == (30, 21)  # by hand
    out = tmp_path / "idx"
    _cli("index", "build", tiny_checkpoint, "--images", crops, "--out", out, "--ivf", -1,
         "--nprobe", expected_nlist, "--device", "cpu")
    index = GalleryIndex.open(out)
    assert (index.info["kind"], index.info["nlist"]) == ("ivf", 21)
    assert faiss.extract_index_ivf(index.vectors).nlist == 21
    entries = index.entries(range(len(index)))
    index.close()
    emb = plain.predict([Path(e.path) for e in entries]).embeddings
    query = sorted((synth_market / "query").glob("*.jpg"))[5]
    hits = json.loads(_cli("search", out, "--image", query, "-k", 10, "--json"))
    dist = _brute(plain.predict([query]).embeddings[0], emb, "euclidean")
    ids = [h["id"] for h in hits]
    assert_nearest_within(ids, dist, tol=FAISS_TOL)
    np.testing.assert_allclose([h["distance"] for h in hits], dist[ids], rtol=0, atol=FAISS_TOL)


def _stored(index_dir: Path) -> dict[str, np.ndarray]:
    """Resolved crop path -> its stored vector, for every entry of an index."""
    index = GalleryIndex.open(index_dir)
    try:
        return {e.path: index.vector(e.id) for e in index.entries(range(len(index)))}
    finally:
        index.close()


def test_cli_overwrite_replaces_and_refusal_leaves_the_index_byte_identical(
        tiny_checkpoint, synth_market, plain, tmp_path):
    """``index build`` over an existing index: without --overwrite exit 1 with one ``error:``
    line and the old folder byte for byte; with it, the new gallery's crops only (their
    embeddings computed here), none of the old. Mutation caught: ``build_index`` with
    overwrite appending the new crops to the existing index instead of replacing it."""
    first = _copy(sorted((synth_market / "bounding_box_test").glob("*.jpg"))[:10],
                  tmp_path / "first")
    second = _copy(sorted((synth_market / "query").glob("*.jpg"))[:8], tmp_path / "second")
    out = tmp_path / "idx"
    _cli("index", "build", tiny_checkpoint, "--images", first, "--out", out, "--device", "cpu")
    before = _snapshot(out)
    text = _cli("index", "build", tiny_checkpoint, "--images", second, "--out", out,
                "--device", "cpu", code=1)
    assert _error_line(text).startswith(f"error: {out}: already exists")
    assert _snapshot(out) == before
    # refused before the model is loaded: a checkpoint that is not there is not even looked at
    text = _cli("index", "build", tmp_path / "no_such.pt", "--images", second, "--out", out,
                code=1)
    assert _error_line(text).startswith(f"error: {out}: already exists; pass --overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "idx", "second"]  # no temp
    _cli("index", "build", tiny_checkpoint, "--images", second, "--out", out, "--device", "cpu",
         "--overwrite")
    stored = _stored(out)
    new = sorted(str(p.resolve()) for p in second.iterdir())
    assert sorted(stored) == new  # the 8 new crops, none of the 10 old
    expected = plain.predict([Path(p) for p in new]).embeddings
    np.testing.assert_allclose(np.stack([stored[p] for p in new]), expected, rtol=0,
                               atol=VECTOR_TOL)
    index = GalleryIndex.open(out)
    assert index.info["images_root"] == str(second.resolve())
    index.close()


def test_cli_flip_stores_the_mean_of_image_and_mirror(tiny_checkpoint, synth_market, plain,
                                                     tmp_path):
    """``index build --flip``: each stored vector is the mean of the crop's embedding and its
    mirror's, both computed here with the plain predictor. Mutation caught: ``index build``
    loading its predictor with flip=False whatever --flip says."""
    crops = _copy(sorted((synth_market / "bounding_box_test").glob("*.jpg"))[:12],
                  tmp_path / "crops")
    out = tmp_path / "idx"
    _cli("index", "build", tiny_checkpoint, "--images", crops, "--out", out, "--flip",
         "--device", "cpu")
    stored = _stored(out)
    paths = sorted(stored)
    expected = _flip_mean(plain, [Path(p) for p in paths])
    np.testing.assert_allclose(np.stack([stored[p] for p in paths]), expected, rtol=0,
                               atol=VECTOR_TOL)


# ---- attreid index add --checkpoint ---------------------------------------------------------


def test_cli_add_with_the_moved_checkpoint_and_not_another(tiny_checkpoint, synth_market,
                                                           plain, tmp_path):
    """``index add --checkpoint``: the index's checkpoint, moved, adds the new crops with the
    vectors computed here (flip-averaged, as the index was built with --flip); a different
    checkpoint is refused with one ``error:`` line naming it, the index byte for byte as it
    was. Mutations caught: ``GallerySearch.open`` loading the predictor without the index's
    flip; the checkpoint checks (in ``GallerySearch.open`` and ``add_images``) both removed;
    ``index build`` dropping --flip."""
    model = tmp_path / "a" / "model.pt"
    model.parent.mkdir()
    shutil.copy(tiny_checkpoint, model)
    old = _copy(sorted((synth_market / "bounding_box_test").glob("*.jpg"))[:6],
                tmp_path / "old")
    new = _copy(sorted((synth_market / "query").glob("*.jpg"))[:5], tmp_path / "new")
    out = tmp_path / "idx"
    _cli("index", "build", model, "--images", old, "--out", out, "--flip", "--device", "cpu")
    moved = tmp_path / "b" / "moved.pt"
    moved.parent.mkdir()
    model.rename(moved)
    before = _snapshot(out)

    other = tmp_path / "other.pt"
    state = torch.load(moved, map_location="cpu", weights_only=False)
    first = next(iter(state["model"]))
    state["model"][first] = state["model"][first] + 1
    torch.save(state, other)
    text = _cli("index", "add", out, "--images", new, "--checkpoint", other, "--device", "cpu",
                code=1)
    line = _error_line(text)
    assert line.startswith(f"error: {other}: this checkpoint did not make the index {out} ")
    assert _snapshot(out) == before

    text = _cli("index", "add", out, "--images", new, "--checkpoint", moved, "--device", "cpu")
    assert "added 5 crops (0 already indexed" in text
    stored = _stored(out)
    old_paths = sorted(str(p.resolve()) for p in old.iterdir())
    new_paths = sorted(str(p.resolve()) for p in new.iterdir())
    assert sorted(stored) == sorted(old_paths + new_paths)
    for paths in (old_paths, new_paths):
        np.testing.assert_allclose(np.stack([stored[p] for p in paths]),
                                   _flip_mean(plain, [Path(p) for p in paths]), rtol=0,
                                   atol=VECTOR_TOL)


# ---- attreid export --opset ----------------------------------------------------------------


EXPORT_TOL = 1e-4
"""tests/test_export.py's ONNX Runtime vs PyTorch parity (fp32); measured at opsets 13 and 16:
at most 4.0e-7 (embeddings) and 1.2e-7 (probabilities) on this AMD EPYC, AVX2 and
AVX512_CORE."""


@pytest.mark.parametrize("opset", [13, 16])
def test_cli_export_writes_the_requested_opset(tiny_checkpoint, synth_market, plain, tmp_path,
                                               opset):
    """``export --opset N``: the file's default-domain opset_import is N, and ONNX Runtime's
    outputs equal PyTorch's within the parity tolerance. Mutation caught: ``export_onnx``
    exporting at the fixed default opset 17 whatever --opset says."""
    onnx = require("onnx", "ONNX export needs onnx + onnxruntime (pip install 'attreid[onnx]')")
    require("onnxruntime", "ONNX export needs onnx + onnxruntime (pip install 'attreid[onnx]')")
    from attreid.inference.onnx import OnnxPredictor

    out = tmp_path / "model.onnx"
    _cli("export", tiny_checkpoint, "--out", out, "--opset", opset)
    model = onnx.load(str(out))
    versions = {o.domain: o.version for o in model.opset_import}
    assert versions.get("", versions.get("ai.onnx")) == opset, versions
    files = sorted((synth_market / "query").glob("*.jpg"))[:8]
    a, b = OnnxPredictor(out).predict(files), plain.predict(files)
    np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=0, atol=EXPORT_TOL)
    for task, probs in a.probabilities.items():
        np.testing.assert_allclose(probs, b.probabilities[task], rtol=0, atol=EXPORT_TOL,
                                   err_msg=task)


# ---- attreid compare --delta ---------------------------------------------------------------

# The study's published numbers (percent) for the rows checked below, typed from its table:
STUDY = {"resnet": {"age": 78.63, "gender": 87.80, "downcolor": 66.14, "mean": 83.49,
                    "mAP": 67.86},
         "convhead": {"age": 83.09, "gender": 89.37, "downcolor": 64.30, "mean": 83.53,
                      "mAP": 69.93}}


def _write_run(folder: Path, variant: str, accuracy: dict[str, float], mean: float,
               mAP: float, rank1: float) -> Path:
    """A one-epoch training run written by hand: config.yaml and metrics.jsonl."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        "data: {split: study, height: 128, width: 64}\n"
        f"model: {{name: {variant}, backbone: resnet18, weights: imagenet}}\n"
        "optim: {epochs: 50}\n")
    val = {"mAP": mAP, "rank1": rank1, "rank5": 0.95, "mINP": 0.2, "mean_accuracy": mean,
           "accuracy": accuracy, "mA": mean, "majority": {t: 0.5 for t in accuracy}}
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "lr": 1e-3, "val": val}) + "\n")
    return folder


def test_cli_compare_delta_prints_run_minus_study(tmp_path, monkeypatch):
    """``compare --delta`` on two hand-written runs: each Δ cell printed in the terminal table
    is the run's number minus the study's, computed here by hand (percentage points, signed).
    Mutation caught: ``compare.difference`` returning study - value."""
    from attreid.cli import base as cli_base
    from attreid.schema import TASK_NAMES

    base = {t: 0.75 for t in TASK_NAMES}
    a = _write_run(tmp_path / "a", "resnet",
                   {**base, "age": 0.8537, "gender": 0.9012, "downcolor": 0.6001},
                   mean=0.8123, mAP=0.6543, rank1=0.7)
    b = _write_run(tmp_path / "b", "convhead",
                   {**base, "age": 0.80, "gender": 0.95, "downcolor": 0.70},
                   mean=0.85, mAP=0.70, rank1=0.8)
    monkeypatch.setattr(cli_base.console, "width", 250)  # one line per table row
    text = _cli("compare", a, b, "--delta")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]
        if cells and cells[0]:
            rows[cells[0]] = cells[1:]
    assert rows["task"][:6] == ["a (resnet)", "study", "Δ", "b (convhead)", "study", "Δ"]
    # by hand: a (resnet) and b (convhead) minus the study's numbers
    expected = {"age": ("85.37", "78.63", "+6.74", "80.00", "83.09", "-3.09"),
                "gender": ("90.12", "87.80", "+2.32", "95.00", "89.37", "+5.63"),
                "downcolor": ("60.01", "66.14", "-6.13", "70.00", "64.30", "+5.70"),
                "mean": ("81.23", "83.49", "-2.26", "85.00", "83.53", "+1.47"),
                "mAP": ("65.43", "67.86", "-2.43", "70.00", "69.93", "+0.07"),
                "rank-1": ("70.00", "-", "-", "80.00", "-", "-")}
    for name, cells in expected.items():
        assert tuple(rows[name][:6]) == cells, (name, rows[name])
    for name in ("age", "gender", "downcolor", "mean", "mAP"):  # the same rule, computed
        for run, values in (("resnet", rows[name][0:3]), ("convhead", rows[name][3:6])):
            assert float(values[2]) == pytest.approx(float(values[0]) - STUDY[run][name],
                                                     abs=1e-9)
