"""Search by description with the person check (issue 20, "Junk"): the fixed query set of
``attreid evaluate --attribute-queries`` ranked over an index of a labelled gallery, by the
product of the probabilities alone, with the crops that fail the person check hidden, and
times P(person) (the search's ranking when its calibration has a person check). The person
check is cross-fitted here: fitted on half of the identities (and distractors), it scores the
other half, so no crop is scored by a check that saw it. Writes the subsection "With the person
check" of docs/RESULTS.md, part 5, with ``--write``.

    python benchmarks/description_search.py /tmp/market_index --data ../shared/data/market1501 \\
        --write
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

import _common
import numpy as np

from attreid.data.load import load_dataset
from attreid.data.records import attribute_matrix
from attreid.evaluation.description import query_set, ranking_metrics, relevant, scores
from attreid.inference.fits import fit_person, score_person
from attreid.schema import MISSING, NUM_TASKS, TASKS
from attreid.search import GallerySearch

DOCS = Path(__file__).resolve().parents[1] / "docs" / "RESULTS.md"
HEAD = "### With the person check (issue 20)"


def cross_fitted_person(vectors: np.ndarray, pids: np.ndarray, metric: str, seed: int = 0
                        ) -> np.ndarray:
    """P(person) of each crop from a check fitted on the other half of the identities (junk
    crops, id -1, scored by the first half's check)."""
    rng = np.random.default_rng(seed)
    people = np.unique(pids[pids > 0])
    half = set(rng.permutation(people)[: len(people) // 2].tolist())
    distractors = np.flatnonzero(pids == 0)
    first_d = set(rng.permutation(distractors)[: len(distractors) // 2].tolist())
    first = np.array([(p in half) if p > 0 else (i in first_d) if p == 0 else False
                      for i, p in enumerate(pids)])
    second = (pids >= 0) & ~first
    out = np.zeros(len(pids))
    for fit, apply in ((first, ~first), (second, first)):
        check = fit_person(vectors[fit], pids[fit] > 0, metric)
        out[apply] = score_person(check, vectors[apply], metric)
        cut = check["threshold"]
    return out, cut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    search = GallerySearch.open(args.index, model=False)
    n = len(search.index)
    entries = search.index.entries(list(range(n)))
    probabilities = {t.name: np.array([e.probabilities[t.name] for e in entries])
                     for t in TASKS}
    vectors = np.stack([search.index.vector(i) for i in range(n)])
    by_name = {os.path.basename(str(r.path)): r for r in load_dataset(args.data).gallery}
    records = [by_name.get(os.path.basename(e.path)) for e in entries]
    labels = np.stack([attribute_matrix([r])[0] if r is not None else
                       np.full(NUM_TASKS, MISSING) for r in records])
    pids = np.array([r.pid if r is not None and r.pid is not None else -1 for r in records])
    person, cut = cross_fitted_person(vectors, pids, search.index.metric)
    rules = {"product": lambda s: s,
             "product, crops failing the person check hidden":
                 lambda s: np.where(person >= cut, s, -np.inf),
             "**product x P(person)** (the search's ranking with a person check)":
                 lambda s: s * person}
    queries = query_set(labels, search.index.trained_tasks)
    lines = ["| rule | " + " | ".join(f"{f} ({sum(q.family == f for q in queries)})"
                                      for f in ("single", "pair", "triple")) + " |",
             "|---|---:|---:|---:|"]
    for name, rule in rules.items():
        rows: dict[str, list] = {}
        for q in queries:
            r = ranking_metrics(rule(scores(probabilities, q, "product")), relevant(labels, q))
            rows.setdefault(q.family, []).append((r["AP"], r["P@10"], r["P@50"]))
        cells = [" / ".join(f"{100 * v:.1f}" if i == 0 else f"{100 * v:.0f}"
                            for i, v in enumerate(np.mean(rows[f], axis=0)))
                 for f in ("single", "pair", "triple")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    body = "\n".join([
        f"{HEAD}\n", f"Measured {datetime.date.today().isoformat()} on {_common.machine()}: "
        f"`python benchmarks/description_search.py {args.index} --data {args.data} --write` "
        f"(an index of the {n:,}-crop test gallery made with the `cpu` checkpoint, `--flip`). "
        "The person check is cross-fitted over halves of the identities; its threshold refuses "
        f"1 % of the people it was fitted on; it hides {np.mean(person < cut):.1%} of the "
        f"gallery and {np.mean(person[pids > 0] < cut):.1%} of its labelled people. mAP / P@10 "
        "/ P@50 in %:", "", *lines, ""])
    print(body)
    if args.write:
        text = DOCS.read_text()
        head, found, rest = text.partition(HEAD)
        after = rest[rest.find("\n## "):] if found and "\n## " in rest else ""
        DOCS.write_text(head.rstrip() + "\n\n" + body + (after if after else ""))


if __name__ == "__main__":
    main()
