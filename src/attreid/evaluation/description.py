"""How good is search by description? Attribute queries ("female + backpack") ranked over a
labelled gallery, scored like retrieval: a crop is relevant when its identity truly has every
queried value (Market-1501's attributes are per identity); crops without labels (distractors,
junk, identities without annotation) are never relevant, as they are never what was asked for.

The queries are fixed by the gallery's labels and a seed (:func:`query_set`):

* ``single``: every value of every task held by at least ``min_share`` of the gallery's crops;
* ``pair`` / ``triple``: values of two / three different tasks held together by at least
  ``min_share`` of the crops, ``per_family`` of them drawn with ``seed`` (all when fewer).

Ranking rules, from each crop's predicted probability p_i of each queried value:

* ``product``: prod p_i (the search's ranking; the sum of log p_i ranks the same);
* ``product>=0.5``: the same, crops with some p_i < 0.5 left out (the search's ``min_prob``);
* ``min``: min p_i;  ``mean``: mean p_i;
* ``calibrated``: prod of each p_i mapped to the observed frequency of that value by isotonic
  regression, fitted on the other half of the identities (two folds, so no crop's own label is
  used for its score); ties within the steps of the mapping broken by ``product``.

Per query: average precision (AP) over the whole gallery (crops left out by a filter count as
never retrieved), precision at 10 and 50, and the chance level (the share of relevant crops).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from attreid.schema import MISSING, TASKS

RULES: tuple[str, ...] = ("product", "product>=0.5", "min", "mean", "calibrated")
_TASK = {t.name: t for t in TASKS}
_INDEX = {t.name: i for i, t in enumerate(TASKS)}


@dataclass(frozen=True)
class Query:
    """``constraints``: (task, value) pairs of different tasks; ``family``: single / pair /
    triple."""

    constraints: tuple[tuple[str, str], ...]
    family: str

    @property
    def text(self) -> str:
        return " + ".join(f"{t}={v}" for t, v in self.constraints)


def relevant(labels: np.ndarray, query: Query) -> np.ndarray:
    """(N,) bool: the crops whose labels (N, 12) hold every value of ``query``
    (``MISSING`` never does)."""
    ok = np.ones(len(labels), dtype=bool)
    for task, value in query.constraints:
        ok &= labels[:, _INDEX[task]] == _TASK[task].classes.index(value)
    return ok


def query_set(labels: np.ndarray, trained: Sequence[str] | None = None, min_share: float = 0.01,
              per_family: int = 30, seed: int = 0) -> list[Query]:
    """The fixed queries of a gallery with labels (N, 12) (see the module docstring); only
    tasks in ``trained`` (default: all)."""
    tasks = [t for t in TASKS if trained is None or t.name in trained]
    values = [(t.name, v) for t in tasks for v in t.classes]
    least = min_share * len(labels)
    singles = [Query(((t, v),), "single") for t, v in values
               if relevant(labels, Query(((t, v),), "single")).sum() >= least]
    common = [q.constraints[0] for q in singles]
    queries = list(singles)
    rng = np.random.default_rng(seed)
    for size, family in ((2, "pair"), (3, "triple")):
        found = [Query(combo, family) for combo in itertools.combinations(common, size)
                 if len({t for t, _ in combo}) == size
                 and relevant(labels, Query(combo, family)).sum() >= least]
        if len(found) > per_family:
            found = [found[i] for i in sorted(rng.choice(len(found), per_family, replace=False))]
        queries += found
    return queries


def value_probabilities(probabilities: Mapping[str, np.ndarray], query: Query) -> np.ndarray:
    """(N, q) predicted probability of each queried value, from task -> (N, C)."""
    return np.stack([probabilities[t][:, _TASK[t].classes.index(v)]
                     for t, v in query.constraints], axis=1)


def scores(probabilities: Mapping[str, np.ndarray], query: Query, rule: str,
           calibrated: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """(N,) scores of ``rule`` (higher first); ``-inf`` for crops a filter leaves out.

    Raises:
        ValueError: an unknown rule, or ``calibrated`` probabilities missing for it.
    """
    if rule == "calibrated":
        if calibrated is None:
            raise ValueError("rule 'calibrated' needs the calibrated probabilities")
        raw = value_probabilities(probabilities, query).prod(axis=1)
        # isotonic maps are steps: ties within a step are broken by the raw product
        return value_probabilities(calibrated, query).prod(axis=1) + 1e-6 * raw
    p = value_probabilities(probabilities, query)
    if rule == "product":
        return p.prod(axis=1)
    if rule == "product>=0.5":
        return np.where((p >= 0.5).all(axis=1), p.prod(axis=1), -np.inf)
    if rule == "min":
        return p.min(axis=1)
    if rule == "mean":
        return p.mean(axis=1)
    raise ValueError(f"rule {rule!r}: expected one of {RULES}")


def ranking_metrics(score: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    """AP, P@10 and P@50 of ranking by ``score`` (N,) descending (ties: lower index first;
    ``-inf``: not retrieved) against ``relevant`` (N,) bool, and the chance level."""
    order = np.lexsort((np.arange(len(score)), -score))
    retrieved = order[np.isfinite(score[order])]
    hits = relevant[retrieved]
    total = int(relevant.sum())
    ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the relevant retrieved crops
    ap = float(np.sum(np.arange(1, len(ranks) + 1) / ranks) / total) if total else float("nan")
    return {"AP": ap, "P@10": float(hits[:10].sum() / 10), "P@50": float(hits[:50].sum() / 50),
            "chance": total / len(score)}


def cross_fitted(probabilities: Mapping[str, np.ndarray], labels: np.ndarray,
                 identities: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Each task's probabilities mapped per value to the observed frequency of that value
    (isotonic regression of "crop has the value" on p), fitted on one half of the labelled
    identities and applied to the other, and the other way round; crops without an identity
    label (distractors, junk) get the mapping fitted on the second half."""
    from sklearn.isotonic import IsotonicRegression

    people = np.unique(identities[identities > 0])
    half = set(np.random.default_rng(seed).permutation(people)[: len(people) // 2].tolist())
    first = np.array([i in half for i in identities.tolist()])
    folds = [(first, ~first), (~first & (identities > 0), first | (identities <= 0))]
    out = {name: np.zeros_like(p, dtype=np.float64) for name, p in probabilities.items()}
    for fit, apply in folds:
        for name, p in probabilities.items():
            known = fit & (labels[:, _INDEX[name]] != MISSING)
            for c in range(p.shape[1]):
                target = labels[known, _INDEX[name]] == c
                model = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")
                out[name][apply, c] = model.fit(p[known, c], target).predict(p[apply, c])
    return out


def evaluate_descriptions(probabilities: Mapping[str, np.ndarray], labels: np.ndarray,
                          identities: np.ndarray, queries: Sequence[Query],
                          rules: Sequence[str] = RULES, seed: int = 0) -> dict[str, Any]:
    """Every query under every rule: per family and rule the mean AP, P@10, P@50 and the mean
    chance level, and each query's numbers.

    Args:
        probabilities: task -> (N, C) predicted class probabilities of the gallery's crops.
        labels: (N, 12) true task labels (``MISSING`` where unknown or unlabelled).
        identities: (N,) identity of each crop (<= 0: none); for the ``calibrated`` rule.
    """
    calibrated = cross_fitted(probabilities, labels, identities, seed) \
        if "calibrated" in rules else None
    per_query = []
    for query in queries:
        truth = relevant(labels, query)
        row = {"query": query.text, "family": query.family, "relevant": int(truth.sum())}
        for rule in rules:
            row[rule] = ranking_metrics(scores(probabilities, query, rule, calibrated), truth)
        per_query.append(row)
    summary: dict[str, Any] = {}
    for family in dict.fromkeys(q.family for q in queries):
        rows = [r for r in per_query if r["family"] == family]
        summary[family] = {"queries": len(rows), "chance": float(np.mean(
            [r[rules[0]]["chance"] for r in rows]))}
        for rule in rules:
            summary[family][rule] = {m: float(np.mean([r[rule][m] for r in rows]))
                                     for m in ("AP", "P@10", "P@50")}
    return {"families": summary, "queries": per_query, "rules": list(rules)}
