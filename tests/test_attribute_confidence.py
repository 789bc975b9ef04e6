"""Attributes with their confidence (issue 30): the sure threshold against brute force, the
majority-class check against direct counts, the fit on labelled crops, and what search, its
CSV, its JSON, the service and ``evaluate`` show (uncertain values end in "?", heads no better
than their majority class are flagged)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_custom_copy, run_cli_ok

from attreid import cli
from attreid.inference.attribute_confidence import (
    attribute_summary,
    fit_attribute_confidence,
    judge_attributes,
    shown_value,
    sure_threshold,
)
from attreid.inference.calibration import Calibration, calibration_path
from attreid.metrics import majority_gaps
from attreid.schema import MISSING, TASKS


def _brute_threshold(conf, right, precision, min_count):
    """The isotonic regression by its min-max formula over the distinct probabilities,
    f(i) = max over a <= i of min over b >= i of the right share of values a..b; the first
    value where f reaches ``precision`` (0.0 at the lowest; None with too few at or above)."""
    xs = np.unique(conf)
    hits = np.array([right[conf == x].sum() for x in xs], dtype=np.float64)
    count = np.array([(conf == x).sum() for x in xs], dtype=np.float64)
    for i in range(len(xs)):
        f = max(min(hits[a:b + 1].sum() / count[a:b + 1].sum() for b in range(i, len(xs)))
                for a in range(i + 1))
        if f >= precision - 1e-12:
            if (conf >= xs[i]).sum() < min_count:
                return None
            return 0.0 if i == 0 else float(xs[i])
    return None


@pytest.mark.parametrize("seed", range(6))
def test_sure_threshold_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 120
    conf = np.round(rng.uniform(0.3, 1.0, n), 2)  # rounded: ties on purpose
    right = rng.uniform(size=n) < conf ** (1 + seed)
    for precision in (0.5, 0.8, 0.9, 0.97):
        for min_count in (1, 20, 100):
            assert sure_threshold(conf, right, precision, min_count) == \
                _brute_threshold(conf, right, precision, min_count)


def test_sure_threshold_edges():
    assert sure_threshold(np.array([0.9, 0.8]), np.array([True, True]), 0.9, 1) == 0.0
    assert sure_threshold(np.array([0.9, 0.8]), np.array([False, False]), 0.9, 1) is None
    # a head right 92 % of the time overall but at chance where it is unsure: the unsure
    # values stay uncertain (a cumulative rule would call every value sure)
    conf = np.r_[np.full(80, 0.99), np.full(20, 0.55)]
    right = np.r_[np.ones(80, bool), np.arange(20) < 12]
    assert (right.mean() >= 0.9) and sure_threshold(conf, right, 0.9, 1) == 0.99


def _targets(rng, n):
    return np.stack([rng.integers(0, t.num_classes, n) for t in TASKS], 1)


def test_majority_gaps_count_and_flag():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(60), 5)
    truth = _targets(rng, 60)[ids]  # identity-level labels, like Market-1501's
    majority_only = np.zeros_like(truth)  # always class 0
    gaps = majority_gaps(majority_only, truth, {t.name: 0 for t in TASKS}, ids)
    for j, task in enumerate(TASKS):
        g = gaps[task.name]
        assert g.accuracy == pytest.approx((truth[:, j] == 0).mean())
        assert g.accuracy == g.majority and g.low <= 0 <= g.high and not g.better
        assert g.images == 300 and g.groups == 60
    perfect = majority_gaps(truth, truth, None, ids)
    assert all(g.accuracy == 1.0 for g in perfect.values())
    assert perfect["gender"].better  # 1.0 against at most ~0.6
    # resampling identities, not images: a head wrong on whole identities (five crops each)
    # has a wider interval than the same answers taken as 300 independent images
    wrong = np.repeat(rng.uniform(size=60) < 0.3, 5)
    head = np.where(wrong[:, None], 1 - np.minimum(truth, 1), truth)
    by_image = majority_gaps(head, truth, None, None)["gender"]
    by_id = majority_gaps(head, truth, None, ids)["gender"]
    assert by_id.high - by_id.low > by_image.high - by_image.low


def test_majority_gaps_skip_unknown_and_untrained():
    rng = np.random.default_rng(1)
    truth = _targets(rng, 50)
    truth[:, 0] = MISSING  # age unknown everywhere
    pred = truth.copy()
    pred[:, 1] = MISSING  # backpack: a head the model was not trained on
    gaps = majority_gaps(pred, truth)
    assert "age" not in gaps and "backpack" not in gaps and "gender" in gaps
    with pytest.raises(ValueError, match="groups: 3 values for 50"):
        majority_gaps(pred, truth, groups=[1, 2, 3])


def _probabilities(rng, truth, informative):
    """task -> (N, C): a head right with its probability (informative) or random."""
    out = {}
    for j, task in enumerate(TASKS):
        c = task.num_classes
        p = rng.uniform(0.0, 1.0, (len(truth), c))
        if task.name in informative:
            p[np.arange(len(truth)), truth[:, j]] += rng.uniform(0.0, 4.0, len(truth))
        out[task.name] = p / p.sum(1, keepdims=True)
    return out


def test_fit_marks_sure_values_right_often_enough_and_flags_a_random_head():
    rng = np.random.default_rng(2)
    ids = np.repeat(np.arange(400), 3)
    truth = _targets(rng, 400)[ids]
    probs = _probabilities(rng, truth, {t.name for t in TASKS} - {"hat"})
    fit = fit_attribute_confidence(probs, truth, ids)
    assert set(fit) == {t.name for t in TASKS}
    hat = fit["hat"]
    assert not hat["better_than_majority"] and hat["threshold"] is None and hat["sure"] == 0
    for j, task in enumerate(TASKS):
        f = fit[task.name]
        if f["threshold"] is None:
            continue
        pred = probs[task.name].argmax(1)
        sure = probs[task.name].max(1) >= f["threshold"]
        assert (pred[sure] == truth[sure, j]).mean() >= 0.9  # the stated precision holds
        assert f["precision"] == pytest.approx((pred[sure] == truth[sure, j]).mean())
        assert f["sure"] == pytest.approx(sure.mean())
    assert fit["gender"]["better_than_majority"] and fit["gender"]["threshold"] is not None


def test_judge_and_show():
    fit = {"gender": {"threshold": 0.8, "better_than_majority": True},
           "hat": {"threshold": None, "better_than_majority": False}}
    attrs = {"gender": {"value": "female", "probability": 0.7},
             "hat": {"value": "no", "probability": 0.99},
             "age": {"value": "adult", "probability": 0.6}}
    judged = judge_attributes(attrs, fit)
    assert judged["gender"]["sure"] is False and judged["gender"]["reliable"] is True
    assert judged["hat"]["sure"] is False and judged["hat"]["reliable"] is False
    assert judged["age"]["sure"] is None  # no fit for it: only the probability speaks
    assert judge_attributes({"gender": {"value": "female", "probability": 0.8}},
                            fit)["gender"]["sure"] is True
    assert shown_value("female", judged["gender"]) == "female?"
    assert shown_value("adult", judged["age"]) == "adult"
    assert judge_attributes(attrs, None)["gender"]["sure"] is None
    assert attribute_summary(fit) == {"precision": 0.9, "unreliable": ["hat"]}
    assert attribute_summary(None) is None


def test_calibrate_fits_the_attributes_and_search_shows_them(calibrated_index, synth_market,
                                                             tmp_path, capsys):
    index, checkpoint = calibrated_index
    calibration = Calibration.load(calibration_path(checkpoint))
    assert calibration.attributes and set(calibration.attributes) <= {t.name for t in TASKS}
    for fit in calibration.attributes.values():
        assert fit["images"] > 0 and 0 <= fit["accuracy"] <= 1
        assert fit["gap"][0] <= fit["accuracy"] - fit["majority"] <= fit["gap"][1] + 1e-12
    weak = [t for t, f in calibration.attributes.items() if not f["better_than_majority"]]
    query = sorted((synth_market / "query").glob("*.jpg"))[0]
    out = tmp_path / "hits.csv"
    args = ["search", str(index), "--image", str(query), "-k", "8", "--backend", "torch-fp32"]
    shown = _run(capsys, args + ["--csv", str(out)])
    if weak:  # a tiny model's heads: the legend names them and their values end in "?"
        assert "no better than their majority class" in shown
        assert weak[0] in shown.split("always uncertain:")[1]
        cells = out.read_text().splitlines()[1].split(",")[-1].split()
        assert any(c.startswith(f"{weak[0]}=") and c.endswith("?") for c in cells)
    rows = json.loads(_run(capsys, args + ["--json"]))
    for row in rows:
        for task, a in row["attributes"].items():
            fit = calibration.attributes[task]
            expect = (fit["better_than_majority"] and fit["threshold"] is not None
                      and a["probability"] >= fit["threshold"])
            assert a["sure"] is expect and a["reliable"] is fit["better_than_majority"]


def _run(capsys, args) -> str:
    """``attreid ARGS`` in this process; its stdout (it must exit 0)."""
    with pytest.raises(SystemExit) as exit_:
        cli.run(args)
    out = capsys.readouterr().out
    assert exit_.value.code in (0, None), out
    return out


def test_evaluate_flags_heads_and_custom_data_gets_a_majority(tiny_checkpoint, synth_market,
                                                             tmp_path):
    from attreid.evaluation.evaluate import evaluate_checkpoint
    from attreid.evaluation.report import flag_caption, table_rows

    m = evaluate_checkpoint(tiny_checkpoint, synth_market, device="cpu").metrics
    gaps = m["majority_gap"]
    assert set(gaps) == set(m["accuracy"]) and m["majority_of"] == "train"
    for task, g in gaps.items():
        assert g["accuracy"] == pytest.approx(m["accuracy"][task])
        assert g["majority"] == pytest.approx(m["majority"][task])
        assert g["better"] is (g["low"] > 0)
    header, rows = table_rows({"tiny": m})
    assert header[-1] == "vs majority (95 % CI)"
    weak = [t for t, g in gaps.items() if not g["better"]]
    flagged = [r[0] for r in rows if r[-1].endswith("✗")]
    assert flagged == [t for t in (r[0] for r in rows) if t in weak]
    if weak:
        assert weak[0] in flag_caption({"tiny": m})
    # a custom dataset whose train rows carry no attribute: the test's own majority
    data = make_custom_copy(synth_market, tmp_path / "custom", ["gender"])
    lines = (data / "labels.csv").read_text().splitlines()
    header_cells = lines[0].split(",")
    cut = [",".join(r.split(",")[:-1] + [""]) if ",train," in r else r for r in lines[1:]]
    (data / "labels.csv").write_text("\n".join([",".join(header_cells)] + cut) + "\n")
    custom = evaluate_checkpoint(tiny_checkpoint, data, device="cpu").metrics
    assert custom["majority_of"] == "evaluated"
    assert custom["majority"]["gender"] == pytest.approx(custom["majority_gap"]["gender"][
        "majority"])
    assert custom["majority"]["gender"] >= 0.5  # the larger class of a binary label
    assert "of the evaluated labels" in flag_caption({"custom": custom})


def test_cli_evaluate_prints_the_flag_column(tiny_checkpoint, synth_market, tmp_path):
    run_cli_ok(["evaluate", str(tiny_checkpoint), "--data", str(synth_market), "--out",
                str(tmp_path / "ev"), "--device", "cpu"])
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "majority_gap" in metrics
