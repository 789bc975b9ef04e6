"""``attreid predict``: predictions for a dataset's query and gallery images as files.

* any layout: ``features.npz`` with the image paths, embeddings (N, D), predicted task labels
  (N, 12), ``trained_tasks`` (the tasks the model was trained on) and the class probabilities
  ``prob_<task>`` of each trained task, for downstream use;
* course layout: the study's submission files, ``classification_test.csv`` (one row per test/
  image, the 28 columns of ``annotations_train.csv`` with the file name in ``id``, 1/2 coding,
  age 1..4, the predicted colour one-hot, multicolour = every colour column 1; the byte-identical
  ``NNNNNN(1).jpg`` copies get their original's row) and ``reid_test.txt`` (one line per query,
  ``query.jpg: t1.jpg, t2.jpg, ...``, the ``top_k`` nearest test images, nearest first).

A model trained on data that labels only some attribute tasks, or none (re-ID only), predicts
nothing for the others (their heads never saw a label, see
:attr:`attreid.Predictor.trained_tasks`): their labels in ``features.npz`` are -1 (unknown),
their ``prob_<task>`` arrays are not written, and their columns of ``classification_test.csv``
(age; the binary attribute; all 8 or 9 colour columns of a colour group) are left empty; a
warning names them.

``features.npz`` keeps every path exactly, whatever bytes the file name holds. The two text
files are UTF-8: a file name byte that is not UTF-8 (or a control character such as a line
break) is written escaped, ``\\xNN`` (:func:`attreid.utils.files.printable_name`), with a
warning naming those files.
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from attreid.data.load import load_dataset
from attreid.data.records import Dataset
from attreid.inference.backends import Choice, load_predictor
from attreid.inference.files import extract_files
from attreid.inference.predictor import Prediction, make_prediction
from attreid.metrics import pairwise_distance
from attreid.schema import (
    CSV_COLUMNS,
    DOWN_COLOR_COLUMNS,
    MISSING,
    TASK_NAMES,
    UP_COLOR_COLUMNS,
    tasks_to_raw,
)
from attreid.utils.files import (
    atomic_write_bytes,
    atomic_write_text,
    output_folder,
    printable_name,
)


@dataclass(frozen=True)
class PredictFiles:
    """The files :func:`predict_dataset` wrote."""

    features: Path
    classification: Path | None = None
    ranking: Path | None = None
    distance: str = "euclidean"  # what reid_test.txt is ranked by
    trained_tasks: tuple[str, ...] = TASK_NAMES  # the others are unknown in the files


def _predict(predictor: Any, paths: Sequence[Path], chunk: int,
             progress: Callable[[int, int], None] | None) -> Prediction:
    """Every image at ``paths`` embedded in batches of ``chunk``, the decoding of the next batch
    overlapped with the model (:func:`attreid.inference.files.extract_files`)."""
    feats = extract_files(predictor, paths, chunk,
                          progress=(lambda done: progress(done, len(paths))) if progress
                          else None)
    return make_prediction(feats.embeddings.numpy(), feats.logits, predictor.trained_tasks)


def _write_features(path: Path, paths: Sequence[Path], split: Sequence[str],
                    pred: Prediction) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, paths=np.array([str(p) for p in paths]),
                        split=np.array(split), embeddings=pred.embeddings, labels=pred.labels,
                        task_names=np.array(TASK_NAMES),
                        trained_tasks=np.array(list(pred.trained_tasks), dtype=str),
                        **{f"prob_{k}": v for k, v in pred.trained_probabilities().items()})
    atomic_write_bytes(path, buffer.getvalue())


def _column_task(column: str) -> str:
    """The task a raw column of ``annotations_train.csv`` belongs to."""
    if column in UP_COLOR_COLUMNS:
        return "upcolor"
    if column in DOWN_COLOR_COLUMNS:
        return "downcolor"
    return column


def classification_rows(names: Sequence[str], labels: np.ndarray) -> str:
    """The CSV text of ``classification_test.csv``: header + one row per image name (shown by
    :func:`~attreid.utils.files.printable_name`). A label -1 (a task the model was trained
    without) leaves that task's columns empty."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    tasks = [TASK_NAMES.index(_column_task(c)) for c in CSV_COLUMNS[1:]]
    for name, row in zip(names, np.asarray(labels)):
        known = row != MISSING
        raw = tasks_to_raw(np.where(known, row, 0))  # the unknown ones blanked below
        writer.writerow([printable_name(name),
                         *(raw[c] if known[t] else "" for c, t in zip(CSV_COLUMNS[1:], tasks))])
    return text.getvalue()


def ranking_lines(query_names: Sequence[str], gallery_names: Sequence[str],
                  query_emb: np.ndarray, gallery_emb: np.ndarray, top_k: int,
                  metric: str = "euclidean") -> str:
    """The text of ``reid_test.txt``: ``query: g1, g2, ...`` nearest first by ``metric``
    (``euclidean``, ``squared`` or ``cosine``: the checkpoint's, see :func:`predict_dataset`);
    names shown by :func:`~attreid.utils.files.printable_name`."""
    k = min(top_k, len(gallery_names))
    shown = [printable_name(name) for name in gallery_names]
    lines = []
    for start in range(0, len(query_names), 256):
        dist = pairwise_distance(torch.from_numpy(query_emb[start:start + 256]),
                                 torch.from_numpy(gallery_emb), metric)  # (q, G)
        order = torch.sort(dist, dim=1, stable=True).indices[:, :k].numpy()
        for name, row in zip(query_names[start:start + 256], order):
            lines.append(f"{printable_name(name)}: " + ", ".join(shown[j] for j in row))
    return "\n".join(lines) + "\n"


def _course_files(dataset: Dataset, out: Path, pred: Prediction, top_k: int, metric: str
                  ) -> tuple[Path, Path]:
    nq = len(dataset.query)  # pred holds the queries first, then the gallery
    names = [r.path.name for r in dataset.gallery]
    by_name = dict(zip(names, pred.labels[nq:]))
    extra = [(copy.name, by_name[orig.name]) for copy, orig in dataset.duplicates.items()
             if orig.name in by_name]
    rows = sorted([*zip(names, pred.labels[nq:]), *extra])
    _warn_escaped([n for n, _ in rows] + [r.path.name for r in dataset.query])
    classification = out / "classification_test.csv"
    atomic_write_text(classification, classification_rows([n for n, _ in rows],
                                                          np.array([r for _, r in rows])))
    ranking = out / "reid_test.txt"
    atomic_write_text(ranking, ranking_lines([r.path.name for r in dataset.query], names,
                                             pred.embeddings[:nq], pred.embeddings[nq:],
                                             top_k, metric))
    return classification, ranking


def _warn_escaped(names: Sequence[str]) -> None:
    """Warn, naming them, about file names that the text files show escaped."""
    escaped = [shown for name in names if (shown := printable_name(name)) != name]
    if escaped:
        more = f" and {len(escaped) - 5} more" if len(escaped) > 5 else ""
        warnings.warn(f"{len(escaped)} file name(s) hold bytes that are not UTF-8 or control "
                      "characters; classification_test.csv and reid_test.txt show them "
                      f"escaped: {', '.join(escaped[:5])}{more} (features.npz keeps the exact "
                      "paths)", stacklevel=3)


def _warn_untrained(trained: Sequence[str], course: bool) -> None:
    """Warn, naming them, about the tasks the model was trained without."""
    untrained = [name for name in TASK_NAMES if name not in trained]
    if not untrained:
        return
    csv_note = "their columns of classification_test.csv are empty, " if course else ""
    what = ("no attribute labels (re-ID only)" if not trained else
            f"labels for {', '.join(trained)} only")
    warnings.warn(f"the model was trained with {what}: no prediction for "
                  f"{', '.join(untrained)}; {csv_note}their labels in features.npz are -1 "
                  "and their probabilities are not written", stacklevel=3)


def _dataset_or_folder(data_root: Path | str, layout: str) -> Any:
    """The dataset at ``data_root``; with ``layout="auto"`` and none of the layouts' markers,
    a plain folder of crops: every image under it (any depth) as the gallery, no labels.

    Raises:
        DataError: no such folder, or neither a dataset nor a folder with images."""
    from attreid.data.io import find_images
    from attreid.data.records import DataError

    try:
        return load_dataset(data_root, layout)
    except DataError as exc:
        root = Path(data_root)
        if layout != "auto" or not root.is_dir() or "cannot tell the layout" not in str(exc):
            raise
        paths = find_images(root).paths
        if not paths:
            raise DataError(f"{root}: no images, and none of the dataset layouts' markers "
                            "(bounding_box_train, annotations_train.csv, labels.csv)") from None
        return _Folder(root, "folder", [], [_Crop(p) for p in paths])


@dataclass(frozen=True)
class _Crop:
    path: Path


@dataclass(frozen=True)
class _Folder:
    """A folder of crops without labels, read as a gallery (see :func:`_dataset_or_folder`)."""

    root: Path
    layout: str
    query: list
    gallery: list


def predict_dataset(checkpoint: Path | str, data_root: Path | str, out: Path | str,
                    layout: str = "auto", top_k: int = 300, flip: bool = False,
                    device: str | None = None, batch_size: int = 128,
                    progress: Callable[[int, int], None] | None = None,
                    backend: str = "auto", distance: str | None = None,
                    on_backend: Callable[[Choice], None] | None = None) -> PredictFiles:
    """Predict every query and gallery image of a dataset and write the files (module doc).

    ``backend``: ``auto`` (the fastest verified on this machine), ``onnx``, ``torch-bf16`` or
    ``torch-fp32`` (:mod:`attreid.inference.backends`; ``on_backend`` gets the choice);
    ``checkpoint`` may also be an ONNX export (``attreid export``), run with ONNX Runtime.
    ``distance`` ranks ``reid_test.txt``: default the distance the model was trained with
    (``PredictFiles.distance`` says which)."""
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: expected >= 1")
    with output_folder(out) as out:  # removed again if nothing could be written
        dataset = _dataset_or_folder(data_root, layout)
        if not dataset.query and not dataset.gallery:
            raise ValueError(f"{dataset.root}: no query or gallery images to predict")
        records = dataset.query + dataset.gallery
        predictor, choice = load_predictor(checkpoint, backend, device=device,
                                           batch_size=batch_size, flip=flip,
                                           probe_images=[r.path for r in records])
        if on_backend:
            on_backend(choice)
        pred = _predict(predictor, [r.path for r in records], batch_size, progress)
        _warn_untrained(pred.trained_tasks, dataset.layout == "course")
        split = ["query"] * len(dataset.query) + ["gallery"] * len(dataset.gallery)
        features = out / "features.npz"
        _write_features(features, [r.path for r in records], split, pred)
        metric = distance or predictor.distance
        if dataset.layout != "course":
            return PredictFiles(features, distance=metric, trained_tasks=pred.trained_tasks)
        classification, ranking = _course_files(dataset, out, pred, top_k, metric)
        return PredictFiles(features, classification, ranking, metric, pred.trained_tasks)
