"""Verdicts an investigator can trust (issue 30): a search marks hits at a stated number of
strangers per query for its gallery's size, its P(same) and its mark never disagree, one pair
keeps the one-to-one meaning with the rule that links probability and decision, and a
calibration says when the data it meets is unlike what it was fitted on. Checked against brute
force, scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attreid.inference.calibration import DEFAULT_FPIR, Calibration, fit_calibration
from attreid.inference.fits import fit_person, fit_search
from attreid.inference.verdicts import (
    DRIFT_KS,
    gallery_drift,
    percents,
    search_verdict,
    unlike_people,
    verdict,
)
from attreid.metrics.verification import (
    SUPPORT_PAIRS,
    TAIL_FAR,
    distribution_shift,
    far_curve,
    pair_distances,
    threshold_at_far,
)


def _clusters(people: int, per: int, dim: int = 8, spread: float = 0.35, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings of ``people`` identities (``per`` crops each around a random centre), their
    identities and alternating cameras."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    ids = np.repeat(np.arange(people), per)
    x = centres[ids] + spread * rng.normal(size=(len(ids), dim))
    return x.astype(np.float32), ids, np.arange(len(ids)) % 3


@pytest.fixture(scope="module")
def fitted() -> tuple[Calibration, np.ndarray, np.ndarray]:
    x, ids, cams = _clusters(60, 6)
    rng = np.random.default_rng(1)
    junk = rng.normal(scale=0.2, size=(40, 8)).astype(np.float32)  # distractors, alike
    x = np.concatenate([x, junk])
    ids = np.concatenate([ids, -2 - np.arange(40)])
    cams = np.concatenate([cams, np.zeros(40, int)])
    people = ids >= 0
    pairs = pair_distances(x, ids, cams, "euclidean")
    search_pairs = pair_distances(x, ids, cams, "euclidean", people=people)
    queries = np.zeros(len(ids), bool)
    queries[np.flatnonzero(people)[::6]] = True  # one crop of each person queries
    c = fit_calibration(pairs, "platt", "euclidean", False, "0" * 64, person=fit_person(
        x, people, "euclidean"), search=fit_search(x, ids, "euclidean", queries),
        search_pairs=search_pairs)
    return c, x, ids


def test_pairs_of_two_distractors_are_left_out_when_people_are_given():
    x, ids, cams = _clusters(5, 4, seed=3)
    ids = ids.copy()
    ids[-3:] = [-2, -3, -4]  # three distractors
    people = ids >= 0
    got = pair_distances(x, ids, cams, "euclidean", people=people)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    i, j = np.triu_indices(len(ids), 1)
    impostor = (ids[i] != ids[j]) & (people[i] | people[j])
    assert got.num_impostor == int(impostor.sum())
    assert np.allclose(np.sort(got.impostor_sample), np.sort(d[i, j][impostor]), atol=1e-4)


def test_far_curve_runs_from_the_tail_to_the_smallest_supported_far():
    x, ids, cams = _clusters(40, 5, seed=2)
    pairs = pair_distances(x, ids, cams, "euclidean")
    fars, thresholds = far_curve(pairs)
    assert fars[0] == pytest.approx(TAIL_FAR)
    assert fars[-1] == pytest.approx(SUPPORT_PAIRS / pairs.num_impostor)
    assert np.all(np.diff(fars) < 0) and np.all(np.diff(thresholds) <= 0)
    for f, t in zip(fars[::5], thresholds[::5]):
        assert t <= threshold_at_far(pairs, float(f)) + 1e-12


def test_distribution_shift_is_the_kolmogorov_smirnov_distance():
    from scipy import stats
    rng = np.random.default_rng(0)
    reference = rng.normal(size=200_000)
    q = np.quantile(reference, np.linspace(0, 1, 101))
    for shift in (0.0, 0.3, 1.0):
        sample = rng.normal(loc=shift, size=3000)
        expected = stats.ks_2samp(reference, sample).statistic
        # the reference is known at 101 quantiles: off by at most 1 / 100 between them
        assert distribution_shift(q, sample) == pytest.approx(expected, abs=0.012)
    assert distribution_shift(q, rng.normal(size=3000)) < 0.05 < DRIFT_KS
    assert distribution_shift(q, rng.normal(loc=1.0, size=3000)) > DRIFT_KS


def test_a_search_threshold_is_the_pair_far_of_strangers_per_query(fitted):
    c, _, _ = fitted
    for size in (500, 5000):
        point = c.search_point(size, fpir=1.0)
        assert point.far == pytest.approx(1.0 / size)
        fars = np.asarray(c.far_curve["far"])
        dist = np.asarray(c.far_curve["distance"])
        expected = np.interp(math.log10(point.far), np.log10(fars[::-1]), dist[::-1])
        assert point.threshold == pytest.approx(expected)
        assert point.unsupported == ""
    tiny = c.search_point(10**9, DEFAULT_FPIR)
    assert "below" in tiny.unsupported and tiny.threshold == pytest.approx(
        c.far_curve["distance"][-1])
    with pytest.raises(Exception, match="fpir > 0"):
        c.search_point(100, fpir=0)


def test_a_search_marks_exactly_the_hits_whose_p_same_reaches_the_cut(fitted):
    """The ✓ and P(same) are one rule: for any distance, marked <=> P(same) >= p_cut."""
    c, _, _ = fitted
    assert c.search is not None and c.search["a"] < 0  # nearer is likelier
    point = c.search_point(400, fpir=0.5)
    for d in np.linspace(0.0, 2 * point.threshold, 101):
        v = search_verdict(float(d), c, point)
        assert v.same == (v.probability >= point.p_cut - 1e-12)
        assert v.p_threshold == pytest.approx(point.p_cut)
    assert point.rule().startswith(f"✓ = P(same) >= {point.p_cut:.2%}")


def test_search_p_same_is_calibrated_on_its_own_hits(fitted):
    """Fitted by maximum likelihood with an intercept, the mean P(same) of the fitted hits
    equals the share of them that are the person (a property of logistic regression)."""
    c, x, ids = fitted
    people = np.flatnonzero(ids >= 0)
    queries = people[::6]
    gallery = np.setdiff1d(np.arange(len(ids)), queries)
    d = np.linalg.norm(x[queries][:, None] - x[gallery][None], axis=2)
    top = np.argsort(d, axis=1)[:, :10]
    hits = np.take_along_axis(d, top, 1)
    same = ids[gallery][top] == ids[queries][:, None]
    p = 1 / (1 + np.exp(-(c.search["a"] * hits + c.search["b"])))
    assert p.mean() == pytest.approx(same.mean(), abs=1e-3)
    assert c.search["gallery"] == len(gallery) and c.search["matches"] == pytest.approx(5.0)


def test_one_pair_keeps_the_one_to_one_rule_and_never_disagrees(fitted):
    c, _, _ = fitted
    t = c.threshold(1e-2)
    for d in np.linspace(0.0, 2 * t, 81):
        v = verdict(float(d), c, 1e-2)
        assert v.prior == 0.5 and v.p_threshold == pytest.approx(float(c.probability(t)))
        assert v.same == (v.probability >= v.p_threshold - 1e-12)
        assert v.rule().startswith("the same person" if v.same else "not the same person")
    far = verdict(2 * t, c, 1e-2)
    assert f"{far.probability:.1%} < {far.p_threshold:.1%}" in far.rule()
    refused = verdict(0.0, c, 1e-2, person=(0.99, 0.0))
    assert refused.same is False and "does not look like a person" in refused.rule()
    # the veto keeps the probability's side of the rule in the same line (it read "P(same)
    # 100 %" above "not the same person" with nothing linking the two)
    shown, cut = percents(refused.probability, refused.p_threshold)
    assert f"not the same person: P(same) {shown} >= {cut} would pass at FAR 0.01, but " \
        "the second crop does not look like a person" in refused.rule()


def test_crops_unlike_the_calibrations_people_are_flagged(fitted):
    c, _, _ = fitted
    q = c.fitted["person_quantiles"]
    low = float(np.interp(0.05, np.linspace(0, 1, len(q)), q))
    assert unlike_people(c, [q[50], q[90]]) == []
    lines = unlike_people(c, [q[50], low * 0.5])
    assert len(lines) == 1 and lines[0].startswith("drift:") and "attreid calibrate" in lines[0]
    assert verdict(0.1, c, 1e-2, person=(q[50], low * 0.5)).drift == tuple(lines)


def test_an_old_calibration_file_still_works_without_the_new_records(fitted, tmp_path):
    c, _, _ = fitted
    path = c.save(tmp_path / "c.json")
    import json

    record = json.loads(path.read_text())
    for key in ("far_curve", "fitted", "search"):
        record.pop(key)
    path.write_text(json.dumps(record))
    old = Calibration.load(path)
    point = old.search_point(1000, fpir=1.0)
    assert point.kind == "prior" and point.prior == pytest.approx(10 / 1000)
    assert gallery_drift(old, np.ones(10), np.ones(10)) == []
    assert search_verdict(point.threshold, old, point).same is True


def test_a_gallery_of_another_look_is_flagged_as_drift(calibrated, synth_market, tmp_path):
    """The synthetic gallery as its calibration saw it: no drift; the same people through
    another camera (colours inverted, darker): the distances and P(person) move and the
    search says so, with the fix."""
    from PIL import Image, ImageOps

    from attreid.inference.predictor import Predictor
    from attreid.search import GallerySearch, build_index

    index, checkpoint = calibrated
    same = GallerySearch.open(index, backend="torch-fp32")
    assert same.calibration_status()["drift"] == []
    other = tmp_path / "night"
    other.mkdir()
    for path in sorted((synth_market / "bounding_box_test").glob("*.jpg")):
        image = ImageOps.invert(Image.open(path).convert("RGB")).point(lambda v: v // 2)
        image.save(other / path.name)
    night = tmp_path / "night-index"
    build_index(Predictor(checkpoint, device="cpu"), other, night)
    status = GallerySearch.open(night, backend="torch-fp32").calibration_status()
    assert status["drift"] and all(line.startswith("drift:") for line in status["drift"])
    assert "attreid calibrate" in status["drift"][0]


@pytest.fixture(scope="module")
def calibrated(calibrated_index):
    return calibrated_index


def test_cli_search_states_its_operating_point_and_verify_links_both(calibrated, synth_market,
                                                                    capsys):
    from attreid import cli

    index, checkpoint = calibrated
    query = sorted((synth_market / "query").glob("*.jpg"))[0]
    with pytest.raises(SystemExit) as exit_:
        cli.run(["search", str(index), "--image", str(query), "-k", "5", "--fpir", "0.1",
                 "--backend", "torch-fp32"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr()
    assert "stranger(s) marked per query" in out.out and "✓ = P(same) >=" in out.out
    other = sorted((synth_market / "bounding_box_test").glob("*.jpg"))[3]
    with pytest.raises(SystemExit) as exit_:
        cli.run(["verify", str(checkpoint), str(query), str(other), "--backend",
                 "torch-fp32"])
    shown = capsys.readouterr().out
    assert "P(same person)" in shown
    assert ("the same person: P(same)" in shown) or ("not the same person" in shown)


def test_the_rule_tells_near_probabilities_apart():
    """From the replay: 99.959 % and 99.972 % both printed as 100.0 % read as a contradiction."""
    from attreid.inference.verdicts import percents

    assert percents(0.99959, 0.99972) == ("99.96%", "99.97%")
    assert percents(0.5, 0.7) == ("50.0%", "70.0%")
    assert percents(0.9, 0.9) == ("90.0%", "90.0%")


def test_an_unsupported_search_point_states_the_strangers_it_really_lets_through(fitted):
    c, _, _ = fitted
    size = 10**7  # fpir / size lies far below what the pairs support
    point = c.search_point(size, DEFAULT_FPIR)
    assert point.unsupported and point.far == pytest.approx(c.lowest_far())
    strangers = point.far * size
    assert strangers > DEFAULT_FPIR
    assert f"about {strangers:.2g} stranger(s)" in point.rule()
    assert "its pairs support no fewer" in point.rule()
    fine = c.search_point(400, 0.5)
    assert "support no fewer" not in fine.rule() and "about 0.5 stranger(s)" in fine.rule()
