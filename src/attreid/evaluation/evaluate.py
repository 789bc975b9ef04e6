"""Evaluate a checkpoint on a dataset: re-ID ranking metrics (plain and optionally k-reciprocal
re-ranked) and attribute metrics, with ``metrics.json`` and three figures.

Which images are scored (``split``):

* ``test``: the dataset's queries ranked against its gallery (Market-1501 layout, or a custom
  layout with a ``split`` column), protocol ``market`` by default (same identity *and* same
  camera removed per query, junk id -1 removed, distractors id 0 kept as wrong matches).
  Attributes are scored on the **gallery** images that have attributes (identities > 0), the
  convention of the Market-1501 attribute papers and of training's validation (query images
  are views of the same identities, so adding them would count identities twice).
  The course layout's test/ and queries/ images are unlabelled: use ``study`` or ``random``.
* ``study`` / ``random``: the held-out training identities of the training run's validation
  split (the course layout's first 225 CSV rows, or ``val_ids`` identities drawn with
  ``split_seed``); every image ranked against all others (protocol ``seed``, itself excluded).

With every split and protocol, a gallery file byte-identical to the query is the query itself
and is left out of its ranking (:func:`attreid.data.evalset.query_copies`; without cameras the
market protocol has nothing else to remove it by, and it would always rank first as a match);
``metrics["setup"]["query_copies_excluded"]`` counts them and a warning says so.

mA (:func:`attreid.metrics.attribute_metrics`): an attribute with no positive (or no negative)
among the scored images is scored by its one defined rate; ``metrics["setup"]["mA_one_sided"]``
names those attributes and a warning says so.

The majority baseline predicts, for each task, the most frequent class among the identities of
the training records (the dataset's train set for ``test``, the remaining train identities for
``study`` / ``random``). Embeddings are exactly those of
:class:`attreid.inference.predictor.Predictor` (its model and preprocessing, run through
:func:`attreid.inference.extraction.extract`).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from attreid.data.evalset import (
    SPLITS,
    EvaluationSet,
    build_evaluation_set,
    labels_and_cameras,
    query_copies,
)
from attreid.data.load import load_dataset
from attreid.data.records import JUNK_ID, attribute_matrix
from attreid.evaluation.attribute_scores import attribute_block
from attreid.inference.backends import Choice, load_predictor
from attreid.inference.extraction import Features
from attreid.inference.features import (
    PROBABILITIES,
    ImageBatch,
    extract_to_store,
    reid_metrics_on_store,
    split_probabilities,
)
from attreid.inference.files import extract_files
from attreid.metrics import (
    DISTANCE_METRICS,
    PROTOCOLS,
    ReidResult,
    pairwise_distance,
    reid_metrics,
)
from attreid.utils.checkpoint import require_checkpoint
from attreid.utils.files import atomic_write_text

RERANK_PARAMS: dict[str, float] = {"k1": 20, "k2": 6, "lambda_value": 0.3}
"""k-reciprocal re-ranking parameters (Zhong et al., CVPR 2017, the usual Market-1501 values)."""

TOP_K = 10
"""Gallery images shown per query in ``ranked.png``."""

CMC_RANKS = 50
"""Length of the CMC curves kept and plotted."""


@dataclass(frozen=True)
class RankedQueries:
    """The top-k gallery of a few queries (protocol-removed entries skipped), for the figure.

    Attributes:
        query_index: (V,) indices into the query records.
        gallery_index: (V, k) indices into the gallery records, best first.
        distances: (V, k) float distances of those entries (re-ranked ones when re-ranking).
        correct: (V, k) bool, gallery identity == query identity.
        query_paths: V image files; gallery_paths: V rows of k image files.
    """

    query_index: np.ndarray
    gallery_index: np.ndarray
    distances: np.ndarray
    correct: np.ndarray
    query_paths: list[Path]
    gallery_paths: list[list[Path]]


@dataclass
class EvaluationResult:
    """What :func:`evaluate_checkpoint` returns.

    Attributes:
        metrics: JSON-ready dict, fractions in [0, 1] (None where undefined). Top-level keys
            as :func:`attreid.training.validation.validate` (``mAP``, ``rank1``, ``rank5``,
            ``rank10``, ``rank20``, ``mINP``, ``mean_accuracy``, ``accuracy``, ``majority``,
            ``mA``), so :mod:`attreid.evaluation.report` can tabulate it; plus ``reranked`` (with
            ``rerank``), ``instance``, ``per_attribute_mA``, ``mean_majority``, counts and
            ``setup``; ``majority_gap`` (task -> accuracy, majority, the 95 % interval
            ``low``/``high`` of their difference over identities, ``better``: whether the head
            beats its majority class) and ``majority_of`` (``train``, or ``evaluated`` where
            the train set has no labels). The attribute keys are absent when no scored image
            has attributes.
        cmc: ``"plain"`` (and ``"re-ranked"``) -> (L,) CMC, L = min(50, G).
        ranked: the top-k gallery of the visualised queries.
        files: files written under ``out`` (empty without ``out``).
    """

    metrics: dict[str, Any]
    cmc: dict[str, np.ndarray]
    ranked: RankedQueries
    files: list[Path] = field(default_factory=list)


def _reid(dist: np.ndarray, data: EvaluationSet, protocol: str, copies: np.ndarray
          ) -> ReidResult:
    qids, gids, qcams, gcams = labels_and_cameras(data)
    return reid_metrics(dist, qids, gids, qcams, gcams, protocol=protocol, max_rank=CMC_RANKS,
                        exclude_self=data.all_vs_all, exclude=copies)


def _copies(data: EvaluationSet) -> np.ndarray:
    """:func:`query_copies`, with a warning naming how many were found."""
    copies = query_copies(data)
    found = int((copies >= 0).sum())
    if found:
        warnings.warn(f"{found} gallery file(s) byte-identical to a query (the query itself, "
                      f"{int((copies >= 0).any(1).sum())} queries) left out of their query's "
                      "ranking", stacklevel=3)
    return copies


def _reranked(query: torch.Tensor, gallery: torch.Tensor, distance: str) -> np.ndarray:
    """k-reciprocal re-ranked (Q, G) distances; cosine distance re-ranks unit-length features.

    All-vs-all, the one set enters as queries and as gallery (as common evaluation code does),
    so every neighbour appears twice in the k1 / k2 neighbourhoods: about half as many
    distinct neighbours as with separate query and gallery sets.
    """
    from attreid.metrics.reranking import rerank

    if distance == "cosine":
        query = torch.nn.functional.normalize(query, dim=1)
        gallery = torch.nn.functional.normalize(gallery, dim=1)
    return rerank(query, gallery, k1=int(RERANK_PARAMS["k1"]), k2=int(RERANK_PARAMS["k2"]),
                  lambda_value=RERANK_PARAMS["lambda_value"])


def _clean(value: Any) -> Any:
    """JSON-ready copy: NaN -> None, numpy scalars -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _keep_mask(qi: int, data: EvaluationSet, labels: tuple[np.ndarray, ...], protocol: str,
               copies: np.ndarray | None = None) -> np.ndarray:
    """(G,) bool: the gallery entries query ``qi`` is ranked against (as ``reid_metrics``);
    ``copies``: (Q, C) gallery files identical to each query (-1: none), left out."""
    qids, gids, qcams, gcams = labels
    keep = np.ones(len(gids), dtype=bool)
    if protocol == "market":
        keep &= gids != JUNK_ID
        if qcams is not None and gcams is not None:
            keep &= ~((gids == qids[qi]) & (gcams == qcams[qi]))
    if data.all_vs_all:
        keep[qi] = False
    if copies is not None:
        keep[copies[qi][copies[qi] >= 0]] = False
    return keep


def rank_queries(dist: np.ndarray, data: EvaluationSet, protocol: str, num_queries: int = 8,
                 top_k: int = TOP_K, copies: np.ndarray | None = None) -> RankedQueries:
    """Top-k gallery of ``num_queries`` queries spread evenly over those with a match.

    Args:
        dist: (Q, G) distances. Entries the protocol removes (junk, same identity and camera,
            the query itself) are skipped, like :func:`attreid.metrics.reid_metrics`; ties
            go to the lower gallery index, as there.
        top_k: gallery images per query (fewer when a ranking is shorter).
        copies: (Q, C) gallery files identical to each query (:func:`query_copies`), skipped.

    Raises:
        ValueError: no query has a match.
    """
    labels = labels_and_cameras(data)
    qids, gids = labels[0], labels[1]
    valid = [i for i in range(len(qids))
             if (_keep_mask(i, data, labels, protocol, copies) & (gids == qids[i])).any()]
    if not valid:
        raise ValueError(f"no query has a match in the gallery under protocol {protocol!r}")
    chosen = sorted({valid[int(round(x))] for x in
                     np.linspace(0, len(valid) - 1, min(num_queries, len(valid)))})
    rankings = []
    for i in chosen:
        order = np.argsort(dist[i], kind="stable")  # (G,), ties -> lower index
        rankings.append(order[_keep_mask(i, data, labels, protocol, copies)[order]])
    k = min([top_k] + [len(r) for r in rankings])
    top = np.stack([r[:k] for r in rankings])  # (V, k)
    rows = np.array(chosen, dtype=np.int64)
    return RankedQueries(
        query_index=rows, gallery_index=top,
        distances=np.take_along_axis(dist[rows], top, axis=1),
        correct=gids[top] == qids[rows][:, None],
        query_paths=[data.query[i].path for i in chosen],
        gallery_paths=[[data.gallery[j].path for j in row] for row in top])


def _features(predictor: Any, data: EvaluationSet, batch_size: int,
              progress: Callable[[int, int], None] | None) -> tuple[Features, Features]:
    """Query and gallery features (one extraction of the shared set when all-vs-all)."""
    records = data.gallery if data.all_vs_all else data.query + data.gallery
    total = len(records)
    feats = extract_files(predictor, [r.path for r in records], batch_size,
                          progress=(lambda done: progress(done, total)) if progress else None)
    if data.all_vs_all:
        return feats, feats
    q = len(data.query)
    gallery = Features(feats.embeddings[q:], {k: v[q:] for k, v in feats.logits.items()})
    return Features(feats.embeddings[:q], {}), gallery


def _check_args(split: str, protocol: str, distance: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: expected one of {PROTOCOLS}")
    if distance not in DISTANCE_METRICS:
        raise ValueError(f"distance={distance!r}: expected one of {DISTANCE_METRICS}")


def evaluate_checkpoint(
    checkpoint: Path | str,
    data_root: Path | str,
    layout: str = "auto",
    protocol: str | None = None,
    rerank: bool = False,
    distance: str | None = None,
    flip: bool = False,
    device: str | None = None,
    batch_size: int = 128,
    split: str = "test",
    out: Path | str | None = None,
    num_visual_queries: int = 8,
    progress: Callable[[int, int], None] | None = None,
    val_ids: int | None = None,
    split_seed: int | None = None,
    store: Path | str | None = None,
    backend: str = "auto",
    on_backend: Callable[[Choice], None] | None = None,
    attribute_queries: bool = False,
) -> EvaluationResult:
    """Score ``checkpoint`` on the dataset at ``data_root`` (see the module docstring).

    Args:
        layout: ``auto``, ``market``, ``course`` or ``custom``.
        protocol: ``market`` or ``seed``; default ``market`` for split ``test``, ``seed`` for
            ``study`` / ``random``.
        rerank: also report k-reciprocal re-ranked metrics (:data:`RERANK_PARAMS`) under
            ``metrics["reranked"]``; the ranked-gallery figure then shows re-ranked results.
        distance: ``euclidean``, ``squared`` or ``cosine`` between embeddings; default: the
            distance the checkpoint was trained with (``loss.distance``, as validation used),
            recorded in ``metrics["setup"]["distance"]``.
        flip: average the outputs of each image and its mirror.
        device: ``cpu``, ``cuda``, ...; default: CUDA when available.
        split: ``test``, ``study`` or ``random``.
        out: folder for ``metrics.json``, ``cmc.png``, ``attributes.png`` (when attributes
            are scored) and ``ranked.png``, all written atomically.
        num_visual_queries: rows of ``ranked.png``.
        progress: called with (images embedded, images to embed) after each batch.
        val_ids, split_seed: the ``random`` split's size and seed; default: the checkpoint's
            training config, so the held-out identities are those training validated on.
        store: for galleries beyond memory: embed the gallery into a feature store at this
            folder (:mod:`attreid.inference.features`, replaced if present) and score it block by
            block; memory then stays bounded whatever the gallery size. Same numbers as the
            in-memory path; not with ``rerank`` or an all-vs-all split, and without ``ranked.png``.
        backend: ``auto`` (the fastest verified on this machine), ``onnx``, ``torch-bf16`` or
            ``torch-fp32`` (:mod:`attreid.inference.backends`); recorded in
            ``metrics["setup"]["backend"]``.
        on_backend: called with the backend :class:`~attreid.inference.backends.Choice` once
            it is made (the CLI prints it).
        attribute_queries: also measure search by description on the gallery
            (:mod:`attreid.evaluation.description`) under ``metrics["attribute_queries"]``.

    Raises:
        ValueError: bad arguments, or a split the dataset cannot provide (e.g. split ``test``
            on the course layout, whose test images are unlabelled).
    """
    protocol = protocol or ("market" if split == "test" else "seed")
    _check_args(split, protocol, distance or "euclidean")
    require_checkpoint(checkpoint)  # a wrong path is named before the dataset is read
    dataset = load_dataset(data_root, layout)
    crops = [r.path for r in dataset.query + dataset.gallery + dataset.train]
    predictor, choice = load_predictor(checkpoint, backend, device, batch_size, flip,
                                       probe_images=crops)
    if on_backend:
        on_backend(choice)
    distance = distance or predictor.distance
    cfg = predictor.config.data
    data = build_evaluation_set(dataset, split, cfg.val_ids if val_ids is None else val_ids,
                                cfg.split_seed if split_seed is None else split_seed)
    if store is not None and attribute_queries:
        raise ValueError("attribute queries are measured on a gallery in memory, not with "
                         "--store")
    copies = _copies(data)
    setup = _setup(checkpoint, data_root, dataset.layout, split, protocol, data, distance, flip,
                   rerank, choice.backend, copies)
    if store is not None:
        return _evaluate_streamed(predictor, data, protocol, distance, Path(store), out,
                                  progress, setup, copies)
    query, gallery = _features(predictor, data, batch_size, progress)
    dist = pairwise_distance(query.embeddings, gallery.embeddings, distance).numpy()  # (Q, G)
    plain = _reid(dist, data, protocol, copies)
    metrics: dict[str, Any] = dict(plain.as_dict())
    cmc = {"plain": np.array(plain.cmc)}
    if rerank:
        dist = _reranked(query.embeddings, gallery.embeddings, distance)  # (Q, G)
        reranked = _reid(dist, data, protocol, copies)
        metrics["reranked"] = reranked.as_dict()
        cmc["re-ranked"] = np.array(reranked.cmc)
    index = torch.from_numpy(data.attribute_index)
    metrics.update(attribute_block({k: v[index] for k, v in gallery.logits.items()}, data))
    if attribute_queries:
        metrics["attribute_queries"] = _description_block(gallery.logits, data,
                                                          predictor.trained_tasks)
    metrics["setup"] = {**setup, "mA_one_sided": metrics.pop("mA_one_sided", [])}
    result = EvaluationResult(_clean(metrics), cmc,
                              rank_queries(dist, data, protocol, num_visual_queries,
                                           copies=copies))
    if out is not None:
        result.files = write_outputs(result, Path(out))
    return result


def _description_block(logits: dict[str, torch.Tensor], data: EvaluationSet,
                       trained: Sequence[str]) -> dict[str, Any]:
    """Search by description measured on the gallery (every crop, junk and distractors
    included: they are never relevant, and a search meets them)."""
    from attreid.evaluation.description import evaluate_descriptions, query_set
    from attreid.models.output import probabilities

    labels = attribute_matrix(data.gallery)  # (G, 12)
    identities = np.array([r.pid if r.pid is not None else -1 for r in data.gallery])
    queries = query_set(labels, trained)
    if not queries:
        raise ValueError("attribute queries: the gallery has no labelled attribute value held "
                         "by 1 % of its crops")
    return evaluate_descriptions(probabilities(logits), labels, identities, queries)


def _setup(checkpoint: Path | str, data_root: Path | str, layout: str, split: str,
           protocol: str, data: EvaluationSet, distance: str, flip: bool, rerank: bool,
           backend: str, copies: np.ndarray) -> dict[str, Any]:
    return {"checkpoint": str(checkpoint), "data": str(data_root), "layout": layout,
            "split": split, "protocol": protocol, "all_vs_all": data.all_vs_all,
            "distance": distance, "flip": flip, "backend": backend,
            "rerank": dict(RERANK_PARAMS) if rerank else None,
            "num_query": len(data.query), "num_gallery": len(data.gallery),
            "query_copies_excluded": int((copies >= 0).sum())}


def _gallery_batches(data: EvaluationSet, batch_size: int) -> Iterator[ImageBatch]:
    """The gallery in batches of files, with identities and cameras (-1 when unknown)."""
    for start in range(0, len(data.gallery), batch_size):
        records = data.gallery[start:start + batch_size]
        fields = {"ids": np.array([JUNK_ID if r.pid is None else r.pid for r in records]),
                  "cams": np.array([-1 if r.camid is None else r.camid for r in records])}
        yield ImageBatch([r.path for r in records], [str(r.path) for r in records], fields)


def _evaluate_streamed(predictor: Any, data: EvaluationSet, protocol: str, distance: str,
                       store_dir: Path, out: Path | str | None,
                       progress: Callable[[int, int], None] | None,
                       setup: dict[str, Any], copies: np.ndarray) -> EvaluationResult:
    """The re-ID and attribute metrics of :func:`evaluate_checkpoint` with the gallery streamed
    to a feature store and ranked block by block (see its ``store`` argument)."""
    if data.all_vs_all or setup["rerank"]:
        raise ValueError("a feature store (--store) scores query against gallery splits "
                         "(split test) without re-ranking; re-ranking needs the whole "
                         "distance matrix in memory")
    total = len(data.query) + len(data.gallery)
    query = extract_files(predictor, [r.path for r in data.query],
                          progress=(lambda done: progress(done, total)) if progress else None)
    done = len(data.query)
    gallery = extract_to_store(
        predictor, _gallery_batches(data, predictor.batch_size), store_dir, overwrite=True,
        progress=(lambda n: progress(done + n, total)) if progress else None)
    qids, _, qcams, _ = labels_and_cameras(data)
    use_cams = protocol == "market" and qcams is not None
    reid = reid_metrics_on_store(query.embeddings.numpy(), qids, gallery,
                                 qcams if use_cams else None, protocol=protocol,
                                 metric=distance, max_rank=CMC_RANKS, exclude=copies)
    metrics: dict[str, Any] = dict(reid.as_dict())
    if len(data.attribute_index):
        probabilities = gallery.take(PROBABILITIES, data.attribute_index)  # (A, 40)
        metrics.update(attribute_block(_labels_of(probabilities), data))
    metrics["setup"] = {**setup, "store": str(store_dir),
                        "mA_one_sided": metrics.pop("mA_one_sided", [])}
    none = RankedQueries(np.empty(0, np.int64), np.empty((0, 0), np.int64), np.empty((0, 0)),
                         np.empty((0, 0), bool), [], [])
    result = EvaluationResult(_clean(metrics), {"plain": np.array(reid.cmc)}, none)
    if out is not None:
        result.files = write_outputs(result, Path(out))
    return result


def _labels_of(probabilities: np.ndarray) -> np.ndarray:
    """(A, 40) class probabilities -> (A, 12) predicted labels (argmax within each task; the
    same labels as thresholding the binary logits at 0)."""
    return np.stack([block.argmax(axis=1) for block in split_probabilities(probabilities)
                     .values()], axis=1)


def write_outputs(result: EvaluationResult, out: Path) -> list[Path]:
    """Write ``metrics.json`` and the figures of ``result`` to ``out``; returns the paths."""
    from attreid.evaluation import plots

    out.mkdir(parents=True, exist_ok=True)
    m = result.metrics
    atomic_write_text(out / "metrics.json", json.dumps(m, indent=2) + "\n")
    files = [out / "metrics.json"]
    curves = {_curve_label("plain", m): result.cmc["plain"]}
    if "reranked" in m:
        curves[_curve_label("re-ranked", m["reranked"])] = result.cmc["re-ranked"]
    setup = m["setup"]
    where = f"split {setup['split']}, protocol {setup['protocol']}"
    files.append(plots.plot_cmc(curves, out / "cmc.png", title=f"CMC ({where})"))
    if "accuracy" in m:
        accuracy = {**m["accuracy"], "mean": m["mean_accuracy"]}
        majority = {**m["majority"], "mean": m["mean_majority"]}
        files.append(plots.plot_attribute_accuracy(
            accuracy, majority, out / "attributes.png",
            title=f"Attribute accuracy ({m['num_attribute_images']} images, {where})"))
    r = result.ranked
    if not r.query_paths:  # none ranked (a gallery scored from a feature store)
        return files
    kind = "re-ranked" if setup["rerank"] else setup["distance"]
    files.append(plots.plot_ranked_gallery(
        r.query_paths, r.gallery_paths, r.correct, out / "ranked.png", r.distances,
        title=f"Top-{r.correct.shape[1]} gallery ({kind} distance, {where})"))
    return files


def _curve_label(name: str, reid: dict[str, Any]) -> str:
    """``plain (rank-1 63.2%, mAP 52.2%)``."""
    return f"{name} (rank-1 {_pct(reid.get('rank1'))}, mAP {_pct(reid.get('mAP'))})"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
