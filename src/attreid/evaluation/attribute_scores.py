"""The attribute part of ``attreid evaluate``'s metrics: per-task accuracy, mA, instance
metrics, the majority-class baseline and whether each head beats it
(:func:`attreid.metrics.majority_gaps`: a head no better than its majority class is flagged;
a dataset without train labels is compared with the evaluated labels' own majority)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from attreid.data.evalset import EvaluationSet, identity_targets
from attreid.data.records import attribute_matrix
from attreid.metrics import (
    attribute_metrics,
    majority_baseline,
    majority_classes,
    majority_gaps,
    predict_labels,
)


def attribute_block(predictions: Any, data: EvaluationSet) -> dict[str, Any]:
    """Accuracy per task, mA, instance metrics and the train-majority baseline of the
    predictions for the gallery images ``data.attribute_index``: task -> (A, ...) logits, or
    (A, 12) predicted labels."""
    if len(data.attribute_index) == 0:
        return {}
    records = [data.gallery[i] for i in data.attribute_index]
    targets = attribute_matrix(records)  # (A, 12)
    result = attribute_metrics(predictions, targets)
    train = identity_targets(data.train)
    majority = majority_baseline(train, targets)
    labels = (predict_labels(predictions).numpy() if isinstance(predictions, dict)
              else np.asarray(predictions))
    gaps = majority_gaps(labels, targets, majority_classes(train) if len(train) else None,
                         None if any(r.pid is None for r in records)
                         else [r.pid for r in records])
    own = [t for t, v in majority.items() if math.isnan(v) and t in gaps]
    majority.update({t: gaps[t].majority for t in own})  # no train labels: the test's own
    known = [v for v in majority.values() if not math.isnan(v)]
    if result.one_sided:
        warnings.warn(f"mA: {len(result.one_sided)} of 26 attribute(s) have no positive or no "
                      f"negative among the {result.num_complete_rows} scored images (e.g. "
                      f"{', '.join(result.one_sided[:3])}): each is scored by its one defined "
                      "rate (TNR or TPR) alone; setup.mA_one_sided in metrics.json lists them",
                      stacklevel=3)
    return {
        "mean_accuracy": result.mean_accuracy, "accuracy": result.accuracy,
        "majority": majority, "mean_majority": float(np.mean(known)) if known else math.nan,
        "mA": result.mA, "per_attribute_mA": result.per_attribute_mA,
        "instance": {"accuracy": result.instance_accuracy,
                     "precision": result.instance_precision,
                     "recall": result.instance_recall, "f1": result.instance_f1},
        "num_attribute_images": result.num_samples,
        "majority_gap": {t: {"accuracy": g.accuracy, "majority": g.majority, "low": g.low,
                             "high": g.high, "better": g.better} for t, g in gaps.items()},
        "majority_of": "train" if not own else "evaluated" if len(own) == len(gaps) else
        f"train; evaluated for {', '.join(own)}",
        "mA_one_sided": list(result.one_sided),  # moved to metrics["setup"]
    }
