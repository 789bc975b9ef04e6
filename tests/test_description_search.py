"""Search by description, measured: the query set, relevance, the ranking rules and AP / P@k
against brute-force counts on a hand-made gallery, the index's own ranking against the rule it
documents, and `attreid evaluate --attribute-queries` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attreid import cli
from attreid.evaluation.description import (
    RULES,
    Query,
    evaluate_descriptions,
    query_set,
    ranking_metrics,
    relevant,
    scores,
)
from attreid.schema import MISSING, TASKS

GENDER, BACKPACK = [t.name for t in TASKS].index("gender"), [t.name for t in TASKS].index(
    "backpack")


def _gallery(n: int = 40, seed: int = 0):
    """Random labels (some MISSING, some crops unlabelled) and probabilities that lean to the
    truth."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, t.num_classes, n) for t in TASKS], axis=1)
    labels[rng.random(labels.shape) < 0.1] = MISSING
    labels[:3] = MISSING  # three crops without any label (distractors)
    probabilities = {}
    for i, t in enumerate(TASKS):
        logits = rng.normal(size=(n, t.num_classes))
        known = labels[:, i] != MISSING
        logits[known, labels[known, i]] += 1.5
        p = np.exp(logits)
        probabilities[t.name] = p / p.sum(axis=1, keepdims=True)
    identities = np.r_[-1, 0, 0, rng.integers(1, 12, n - 3)]
    return probabilities, labels, identities


def _brute_ap(score, truth):
    order = sorted(range(len(score)), key=lambda i: (-score[i], i))
    order = [i for i in order if np.isfinite(score[i])]
    found, total, precisions = 0, int(sum(truth)), []
    for rank, i in enumerate(order, start=1):
        if truth[i]:
            found += 1
            precisions.append(found / rank)
    return sum(precisions) / total


def test_relevance_needs_every_value_and_a_label():
    labels = np.full((3, 12), MISSING)
    labels[0, [GENDER, BACKPACK]] = [1, 1]
    labels[1, GENDER] = 1
    query = Query((("gender", TASKS[GENDER].classes[1]), ("backpack", "yes")), "pair")
    assert relevant(labels, query).tolist() == [True, False, False]


@pytest.mark.parametrize("rule", RULES[:4])
def test_ranking_metrics_equal_brute_force(rule):
    probabilities, labels, _ = _gallery()
    for query in query_set(labels, min_share=0.05, per_family=5):
        score = scores(probabilities, query, rule)
        truth = relevant(labels, query)
        got = ranking_metrics(score, truth)
        assert got["AP"] == pytest.approx(_brute_ap(score, truth), abs=1e-12)
        order = sorted(range(len(score)), key=lambda i: (-score[i], i))
        top = [i for i in order if np.isfinite(score[i])]
        assert got["P@10"] == sum(truth[i] for i in top[:10]) / 10
        assert got["chance"] == truth.mean()


def test_rules_by_hand():
    p = {t.name: np.full((2, t.num_classes), 1.0 / t.num_classes) for t in TASKS}
    p["gender"] = np.array([[0.2, 0.8], [0.6, 0.4]])
    p["backpack"] = np.array([[0.3, 0.7], [0.1, 0.9]])
    female = TASKS[GENDER].classes[1]
    q = Query((("gender", female), ("backpack", "yes")), "pair")
    assert scores(p, q, "product").tolist() == pytest.approx([0.56, 0.36])
    assert scores(p, q, "min").tolist() == pytest.approx([0.7, 0.4])
    assert scores(p, q, "mean").tolist() == pytest.approx([0.75, 0.65])
    assert scores(p, q, "product>=0.5").tolist() == [pytest.approx(0.56), -np.inf]


def test_query_set_is_fixed_and_follows_its_rules():
    _, labels, _ = _gallery(n=400, seed=1)
    queries = query_set(labels, min_share=0.05, per_family=4, seed=3)
    assert queries == query_set(labels, min_share=0.05, per_family=4, seed=3)
    families = [q.family for q in queries]
    assert families.count("pair") == 4 and families.count("triple") == 4
    for q in queries:
        assert relevant(labels, q).sum() >= 0.05 * len(labels)
        assert len({t for t, _ in q.constraints}) == len(q.constraints)
    only = query_set(labels, trained=("gender",), min_share=0.05)
    assert {t for q in only for t, _ in q.constraints} == {"gender"}


def test_evaluation_summarises_every_family_and_rule():
    probabilities, labels, identities = _gallery(n=200, seed=2)
    queries = query_set(labels, min_share=0.05, per_family=3)
    result = evaluate_descriptions(probabilities, labels, identities, queries)
    singles = [r for r in result["queries"] if r["family"] == "single"]
    assert result["families"]["single"]["product"]["AP"] == pytest.approx(
        np.mean([r["product"]["AP"] for r in singles]))
    for family in result["families"].values():
        for rule in RULES:
            assert 0 <= family[rule]["AP"] <= 1
        assert family["product"]["AP"] > family["chance"]  # probabilities lean to the truth


def test_the_index_ranks_description_queries_by_the_product(search_index):
    """The search's own order is the ``product`` rule's on the index's probabilities."""
    from attreid.search import GallerySearch

    search = GallerySearch.open(search_index, backend="torch-fp32")
    entries = search.index.entries(list(range(len(search.index))))
    probabilities = {t.name: np.array([e.probabilities[t.name] for e in entries]) for t in TASKS}
    query = Query((("gender", TASKS[GENDER].classes[1]), ("backpack", "yes")), "pair")
    score = scores(probabilities, query, "product")
    expected = sorted(range(len(score)), key=lambda i: (-np.float32(score[i]), i))[:10]
    hits = search.by_attributes(dict(query.constraints), k=10, min_prob=0)
    assert [h.entry.id for h in hits] == [entries[i].id for i in expected]


def test_evaluate_with_attribute_queries_from_the_command_line(tiny_checkpoint, synth_market,
                                                               tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli.run(["evaluate", str(tiny_checkpoint), "--data", str(synth_market),
                 "--attribute-queries", "--out", str(tmp_path), "--backend", "torch-fp32"])
    assert exit_.value.code in (0, None)
    block = json.loads((tmp_path / "metrics.json").read_text())["attribute_queries"]
    assert block["rules"] == list(RULES) and "single" in block["families"]
    assert all(0 <= r["product"]["chance"] <= 1 for r in block["queries"])
